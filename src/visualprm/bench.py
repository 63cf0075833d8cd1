"""The `bench` job: read a critic benchmark (VisualProcessBench: every wrong step; ProcessBench: the first wrong
step), score its steps with a PRM, an MLLM judge or a file of precomputed step scores, and write OUT/results.json,
OUT/samples.jsonl, OUT/report.html and the printed table.

Records are read from .json / .jsonl files or folders of them; the format is detected per file or given with
`--format`. `--limit N` keeps the first N records of each file (it may hold erroneous samples only); `--sample N`
draws a seeded sample that holds both classes of every subset and source (sampling.py). Steps are scored exactly
as the benchmark gives them, never re-split. `--threshold auto` picks the threshold that maximises the headline
metric on a seeded held-out part of the records and reports the metrics on the rest only.

The metrics, the threshold search and the bootstrap intervals are in benchmetrics.py (their names stay importable
from here). This module does not load models itself (scoring.Scorer and judge.Judge do) and needs no torch for
`--scores`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from . import schema
from .benchmetrics import (  # noqa: F401  (re-exported: bench.vpb_metrics, bench.tune_pb, ... stay importable)
    bootstrap_pb,
    bootstrap_vpb,
    f1,
    first_error,
    heldout_split,
    pb_from_matches,
    pb_metrics,
    step_counts,
    tune_pb,
    tune_vpb,
    vpb_from_counts,
    vpb_metrics,
)
from .schema import InputError, Loc

VPB, PB = "visualprocessbench", "processbench"
FORMATS = (VPB, PB)
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def bench_files(paths: list[str]) -> list[Path]:
    """Expand folders into their *.json / *.jsonl files (sorted by name); keep files in the order given."""
    out: list[Path] = []
    for p in paths:
        q = Path(p)
        if q.is_dir():
            found = sorted(x for x in q.iterdir() if x.is_file() and x.suffix in (".json", ".jsonl"))
            if not found:
                raise InputError("folder holds no .json or .jsonl files", q)
            out += found
        elif q.is_file():
            out.append(q)
        else:
            raise InputError("file not found", q)
    return out


def detect_format(rec: dict, loc: Loc) -> str:
    if isinstance(rec.get("response"), dict) and "process_correctness" in rec["response"]:
        return VPB
    if "label" in rec and "steps" in rec:
        return PB
    raise loc.error(
        "cannot tell the benchmark format (VisualProcessBench needs response.process_correctness, ProcessBench "
        "needs steps and label); pass --format",
        "response",
    )


def _vpb_item(rec: dict, loc: Loc) -> dict:
    question = schema.as_str(schema.require(rec, loc, "question"), loc, "question")
    resp = rec.get("response")
    if not isinstance(resp, dict):
        raise loc.error("expected an object with steps and process_correctness", "response")
    steps = schema.step_list(resp.get("steps"), loc, "response.steps")
    labels = resp.get("process_correctness")
    if not isinstance(labels, list):
        raise loc.error("missing or not a list", "response.process_correctness")
    if len(labels) != len(steps):
        raise loc.error(f"{len(labels)} labels for {len(steps)} steps", "response.process_correctness")
    for i, v in enumerate(labels):
        if isinstance(v, bool) or v not in (1, 0, -1):
            raise loc.error(f"label {i} is {v!r}, expected 1, 0 or -1", "response.process_correctness")
    return {
        "question": question,
        "images": schema.image_list(rec, loc),
        "steps": steps,
        "step_labels": [int(v) for v in labels],
        "source": str(rec.get("data_source") or UNKNOWN),
        "policy": str(rec.get("policy_model") or UNKNOWN),
    }


def _pb_item(rec: dict, loc: Loc) -> dict:
    question = schema.as_str(schema.require(rec, loc, "problem", "question"), loc, "problem")
    steps = schema.step_list(schema.require(rec, loc, "steps"), loc, "steps")
    label = schema.require(rec, loc, "label")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise loc.error(f"expected -1 or a step index below {len(steps)}, got {label!r}", "label")
    return {
        "question": question,
        "images": schema.image_list(rec, loc),
        "steps": steps,
        "label": label,
        "source": str(rec.get("generator") or UNKNOWN),
        "policy": str(rec.get("generator") or UNKNOWN),
    }


def load_bench(
    paths: list[str],
    fmt: str | None = None,
    subset: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
):
    """Read benchmark files into items `{file, index, gpos, id, kind, question, images, steps, step_labels | label,
    source, policy, subset, base_dir}`. `limit`: the first N records of each file; `sample`: a seeded sample of N
    records in all, stratified by subset, source and class (`record_class`), so every one of them is in it;
    `gpos` is the record's position in the concatenation of the full files (to match a scores file written for
    all records)."""
    files = bench_files(paths)
    if subset and len(files) > 1:
        raise InputError("--subset names one file's subset; give one --bench file with it")
    if limit is not None and sample is not None:
        raise InputError("give --limit (the first N records of each file) or --sample (N records in all), not both")
    for name, v in (("--limit", limit), ("--sample", sample)):
        if v is not None and v < 1:
            raise InputError(f"{name} must be >= 1, got {v}")
    items: list[dict] = []
    kinds = set()
    gpos = 0
    for f in files:
        kind = fmt
        for n, (loc, rec) in enumerate(schema.read_json_or_jsonl(f)):
            if kind is None:
                kind = detect_format(rec, loc)
            if limit is None or n < limit:
                item = _vpb_item(rec, loc) if kind == VPB else _pb_item(rec, loc)
                item.update(
                    file=str(f),
                    index=n,
                    gpos=gpos,
                    id=None if rec.get("id") is None else str(rec["id"]),
                    kind=kind,
                    subset=subset or f.stem,
                    base_dir=str(f.parent),
                    loc=loc,
                )
                items.append(item)
            gpos += 1
        if kind is not None:
            kinds.add(kind)
    if not items:
        raise InputError("no benchmark records", files[0] if files else None)
    if len(kinds) > 1:
        raise InputError("the --bench files mix VisualProcessBench and ProcessBench records; run them separately")
    if sample is not None:
        from .sampling import stratified_sample

        keep = stratified_sample([(it["subset"], it["source"], record_class(it)) for it in items], sample, seed)
        items = [items[i] for i in keep]
    return items, gpos


def record_class(item: dict) -> str:
    """`erroneous` (VisualProcessBench: a step labelled -1; ProcessBench: label != -1) or `correct`."""
    wrong = -1 in item["step_labels"] if item["kind"] == VPB else item["label"] != -1
    return "erroneous" if wrong else "correct"


def scores_from_file(path: str, items: list[dict], n_full: int) -> list[list[float]]:
    """Step scores from a JSONL file with one `{"step_scores": [..]}` line per benchmark record, in order.

    The file may cover all records of the files given (then `--limit` picks the matching lines) or exactly the
    records read. An `id` on a line must equal the record's id where the record has one."""
    lines = list(schema.read_jsonl(path))
    if len(lines) == n_full:
        rows = [lines[it["gpos"]] for it in items]
    elif len(lines) == len(items):
        rows = lines
    else:
        raise InputError(f"{len(lines)} lines, but the benchmark has {n_full} records ({len(items)} used)", path)
    out = []
    for (loc, rec), it in zip(rows, items):
        v = rec.get("step_scores")
        if not isinstance(v, list):
            raise loc.error("missing or not a list", "step_scores")
        if len(v) != len(it["steps"]):
            raise loc.error(
                f"{len(v)} scores for {len(it['steps'])} steps ({it['file']} record {it['index']})", "step_scores"
            )
        for i, s in enumerate(v):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s):
                raise loc.error(f"score {i} is {s!r}, expected a number", "step_scores")
        if rec.get("id") is not None and it["id"] is not None and str(rec["id"]) != it["id"]:
            raise loc.error(f"id {rec['id']!r} does not match the benchmark record's id {it['id']!r}", "id")
        out.append([float(s) for s in v])
    return out


def score_items(engine, items: list[dict], image_root=None, no_image: bool = False, chunk: int = 32):
    """Step scores from an engine with `score_steps(items)` (a Scorer or a Judge), a chunk of records at a time
    so that only a chunk's images are in memory."""
    from .jobs import bar as progress_bar

    out: list[list[float]] = []
    with progress_bar(len(items), "scoring", "rec") as bar:
        for i in range(0, len(items), chunk):
            batch = []
            for it in items[i : i + chunk]:
                images = []
                if not no_image and it["images"]:
                    paths = schema.resolve_images(it["images"], it["loc"], it["base_dir"], image_root)
                    images = [schema.load_image(p, it["loc"]) for p in paths]
                batch.append({"question": it["question"], "images": images, "steps": it["steps"]})
            scores = engine.score_steps(batch)
            for it, s in zip(items[i : i + chunk], scores):
                if len(s) != len(it["steps"]):
                    raise RuntimeError(f"engine returned {len(s)} scores for {len(it['steps'])} steps")
                out.append([float(x) for x in s])
            bar.update(len(batch))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The job


def _pct(x) -> str:
    return "   n/a" if x is None else f"{100 * x:6.1f}"


def _undefined_notes(results: dict) -> list[str]:
    """One line per group whose metric is undefined (n/a in the table), saying why."""
    if results["format"] == VPB:
        groups = [("overall", results["overall"])]
        groups += [(f"source {k}", v) for k, v in results["by_source"].items()]
        groups += [(f"policy {k}", v) for k, v in results["by_policy"].items()]
    else:
        pb = results["processbench"]
        groups = [(k, m) for k, m in pb.items() if isinstance(m, dict)]
        if pb.get("average_f1_undefined"):
            groups.append(("average F1", {"undefined": pb["average_f1_undefined"]}))
        elif pb.get("average_f1_over"):
            groups.append(("average F1", {"undefined": "the mean over " + ", ".join(pb["average_f1_over"])}))
    return [f"n/a  {name}: {m['undefined']}" for name, m in groups if m.get("undefined")]


def format_table(results: dict) -> str:
    """The printed table (percentages); n/a where a metric is undefined, with the reason below the table."""
    lines = []
    c = results.get("counts", {})
    if c.get("by_class"):
        classes = ", ".join(f"{v} {k}" for k, v in c["by_class"].items())
        if results["config"].get("sample"):
            lines.append(f"{c['records']} records, a seeded stratified sample of {c['available_records']} ({classes})")
        elif results["config"].get("limit"):
            lines.append(f"{c['records']} records, the first {results['config']['limit']} of each file ({classes})")
        else:
            lines.append(f"{c['records']} records ({classes})")
    if results["format"] == VPB:
        lines.append(f"{'':28s} {'macroF1':>7s} {'F1+':>6s} {'F1-':>6s} {'steps':>7s}")
        rows = [("overall", results["overall"])]
        rows += [(f"source {k}", v) for k, v in results["by_source"].items()]
        rows += [(f"policy {k}", v) for k, v in results["by_policy"].items()]
        for name, m in rows:
            lines.append(
                f"{name[:28]:28s} {_pct(m['macro_f1']):>7s} {_pct(m['f1_correct'])} {_pct(m['f1_incorrect'])} "
                f"{m['n_steps']:7d}"
            )
        o = results["overall"]
        lines.append(f"{'overall, per-source weighted':28s} {_pct(o['macro_f1_weighted']):>7s}")
        if o.get("ci95", {}).get("macro_f1"):
            lo, hi = o["ci95"]["macro_f1"]
            lines.append(
                f"macro-F1 95% CI: [{100 * lo:.1f}, {100 * hi:.1f}] ({results['config']['bootstrap']} "
                "bootstrap resamples)"
            )
    else:
        pb = results["processbench"]
        lines.append(f"{'subset':16s} {'err acc':>7s} {'cor acc':>7s} {'F1':>6s} {'n':>5s}")
        for k, m in pb.items():
            if isinstance(m, dict):
                lines.append(
                    f"{k[:16]:16s} {_pct(m['acc_error']):>7s} {_pct(m['acc_correct']):>7s} {_pct(m['f1'])} {m['n']:5d}"
                )
        lines.append(f"{'average F1':16s} {'':7s} {'':7s} {_pct(pb['average_f1'])}")
    lines.append(f"threshold {results['threshold']:.4g}" + (" (auto)" if results.get("threshold_auto") else ""))
    lines += _undefined_notes(results)
    return "\n".join(lines)


def run_bench(
    benches: list[str],
    out_dir: str,
    prm: str | None = None,
    scores: str | None = None,
    judge: str | None = None,
    threshold: str | float = 0.5,
    fmt: str | None = None,
    subset: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    bootstrap: int = 1000,
    image_root: str | None = None,
    no_image: bool = False,
    seed: int = 0,
    heldout: float = 0.5,
    device: str | None = None,
    dtype: str | None = None,
    system_prompt: bool = True,
    batch_size: int = 8,
    max_length: int | None = None,
    label_mode: str = "auto",
    concurrency: int = 8,
    report: bool = True,
    engine=None,
    api_key: str | None = None,
    engine_options: dict | None = None,
) -> int:
    """Score a critic benchmark and write OUT/results.json, OUT/samples.jsonl and OUT/report.html.

    Exactly one of `prm`, `scores`, `judge` (or a ready `engine` with `score_steps`) gives the step scores. `prm`:
    a folder or any spec `scoring.load_prm` takes (`openai:MODEL@URL` with `engine_options`). `system_prompt`:
    True (the PRM's default), False or the text."""
    from . import __version__

    given = [x for x in (prm, scores, judge, engine) if x is not None]
    if len(given) != 1:
        raise InputError("give exactly one of --prm, --scores, --judge")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r} (expected one of {', '.join(FORMATS)})")
    auto = str(threshold) == "auto"
    if not auto:
        try:
            threshold = float(threshold)
        except ValueError:
            raise InputError(f"--threshold must be a number or 'auto', got {threshold!r}") from None
        if not -1.0 <= threshold <= 1.0:  # scores are P(+) in [0, 1], or P(+) - P(-) in [-1, 1] (advantage)
            raise InputError(f"--threshold must be in [-1, 1] or 'auto', got {threshold:g}")
    if auto and not 0 < heldout < 1:
        raise InputError(f"--heldout must be between 0 and 1, got {heldout}")
    t0 = time.time()
    items, n_full = load_bench(benches, fmt, subset, limit, sample, seed)
    kind = items[0]["kind"]

    if scores is not None:
        step_scores = scores_from_file(scores, items, n_full)
        source = {"scores": str(scores)}
    else:
        if engine is None and prm is not None:
            from .scoring import load_prm

            engine = load_prm(
                prm,
                api_key=api_key,
                **(engine_options or {}),
                device=device,
                dtype=dtype,
                system_prompt=None if system_prompt is True else system_prompt,
                batch_size=batch_size,
                max_length=max_length,
                label_mode=label_mode,
            )
        elif engine is None:
            from .judge import Judge

            engine = Judge.from_spec(judge, concurrency=concurrency, seed=seed)
        step_scores = score_items(engine, items, image_root, no_image)
        source = {"prm": prm} if prm else {"judge": judge} if judge else {"engine": type(engine).__name__}

    held = [False] * len(items)
    tuned = None
    if auto:
        held = heldout_split(items, heldout, seed)
        tune_idx = [i for i, h in enumerate(held) if h]
        if not tune_idx or len(tune_idx) == len(items):
            raise InputError(f"too few records ({len(items)}) to hold out a part for --threshold auto")
        tune = tune_vpb if kind == VPB else tune_pb
        threshold, value = tune([items[i] for i in tune_idx], [step_scores[i] for i in tune_idx])
        tuned = {
            "held_out_records": len(tune_idx),
            "held_out_fraction": heldout,
            "metric_on_held_out": value,
            "metric": "macro_f1" if kind == VPB else "average_f1",
        }
    ev = [i for i, h in enumerate(held) if not h]
    ev_items, ev_scores = [items[i] for i in ev], [step_scores[i] for i in ev]

    results: dict = {
        "format": kind,
        "version": __version__,
        "config": {
            "bench": [str(b) for b in benches],
            **source,
            "threshold": "auto" if auto else threshold,
            "limit": limit,
            "sample": sample,
            "bootstrap": bootstrap,
            "seed": seed,
            "no_image": no_image,
            "subset": subset,
        },
        "threshold": threshold,
        "threshold_auto": tuned,
        "counts": {
            "records": len(items),
            "available_records": n_full,
            "by_class": {k: sum(record_class(it) == k for it in items) for k in ("erroneous", "correct")},
            "evaluated_records": len(ev),
            "steps": sum(len(it["steps"]) for it in items),
        },
    }
    if kind == VPB:
        results.update(vpb_metrics(ev_items, ev_scores, threshold))
        if bootstrap:
            results["overall"]["ci95"] = bootstrap_vpb(ev_items, ev_scores, threshold, bootstrap, seed)
    else:
        results["processbench"] = pb_metrics(ev_items, ev_scores, threshold)
        if bootstrap:
            ci = bootstrap_pb(ev_items, ev_scores, threshold, bootstrap, seed)
            for k, v in ci.items():
                if k == "average_f1":
                    results["processbench"]["average_f1_ci95"] = v
                else:
                    results["processbench"][k]["ci95"] = {"f1": v}
    details = getattr(engine, "details", None)
    if hasattr(engine, "summary"):
        results["judge_parse"] = engine.summary()
    if hasattr(engine, "engine_counts"):  # a PRM behind a server: requests, tokens, bounded steps
        results["prm_engine"] = engine.engine_counts()
    results["seconds"] = round(time.time() - t0, 2)

    samples = []
    for i, (it, sc) in enumerate(zip(items, step_scores)):
        rec = {
            "file": it["file"],
            "index": it["index"],
            "id": it["id"],
            "source": it["source"],
            "policy": it["policy"],
            "subset": it["subset"],
            "held_out": held[i],
            "step_scores": sc,
        }
        if kind == VPB:
            rec["step_labels"] = it["step_labels"]
            rec["pred"] = [1 if s >= threshold else -1 for s in sc]
        else:
            rec["label"] = it["label"]
            rec["pred"] = first_error(sc, threshold)
        if details is not None and len(details) == len(items):
            d = details[i]
            rec["judge"] = {"format": d["format"], "missing": d["missing"], "extra": d["extra"], "reply": d["reply"]}
        samples.append(rec)
    out = Path(out_dir)
    schema.write_jsonl(out / "samples.jsonl", samples)
    schema.write_json(out / "results.json", results)
    if report:
        from .report import bench_report, report_images

        texts = [
            (it["question"], it["steps"], report_images(it["images"], it["base_dir"], image_root)) for it in items
        ]
        bench_report(results, samples, texts, out / "report.html")
    print(format_table(results))
    if "prm_engine" in results:
        from .remote_prm import counts_line

        print(f"PRM engine: {counts_line(results['prm_engine'])}")
    print(f"wrote {out / 'results.json'}, {out / 'samples.jsonl'}" + (f", {out / 'report.html'}" if report else ""))
    return 0
