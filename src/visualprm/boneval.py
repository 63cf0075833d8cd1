"""`visualprm bon-eval`: the paper's Table 2 (REFERENCE.md §9) in one command. Best-of-N on benchmarks read by
`evalsets.py`, each scored with its own metric, in three resumable stages under OUT:

1. sample (`candidates.jsonl`): N candidates per item from the policy, candidate 0 greedy (temperature 0), the
   others at temperature 0.7, top-p 0.95 (the paper's protocol), in the policy prompt's chain-of-thought format
   (`policy.policy_prompt`, "Final answer: .." by default) around the benchmark's own question text. One line per
   item, appended with one write when all its candidates are in, so a kill loses at most the items in flight and
   a re-run never samples a finished item again (torn last line repaired; options checked against the file).
   Seeds are derived from the run seed, the benchmark and the item id, so batching does not change results.
2. score (`scores.jsonl`): every candidate's steps scored by the PRM (same prompt and images as the policy), one
   line per item, resumable the same way; with `--orm prm` also the whole solution as one step (the ORM row).
3. select + metrics (`results.json`, `table.md`, `bon_curve.png`, `report.html`, `samples.jsonl`): per benchmark,
   every candidate checked by the benchmark's rules, then `bon.evaluate_bon`'s selections (PRM mean/min/max/last/
   prod, PRM-weighted vote, majority vote, ORM, random, pass@1 = candidate 0, oracle) scored with the benchmark's
   metric; overall = unweighted mean over benchmarks (as the paper). The curve over N uses the first k candidates
   (k = 1, 2, 4, .., N: what sampling k would have given), not random subsets. A random pick (its expectation)
   is left out where the metric is not an average over items (DynaMath worst case, WeMath).

This module does not implement checks or metrics (evalsets.py), scoring (scoring.py) or generation (policy.py).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import evalsets, schema
from .schema import InputError

SAMPLE_KEYS = ("policy", "n", "temperature", "top_p", "max_tokens", "seed", "prompt")
GREEDY = {"temperature": 0.0, "top_k": None, "top_p": None}


def parse_benchmarks(specs: list[str]) -> list[tuple[str, str]]:
    """`NAME=PATH` pairs; NAME one of evalsets.BENCHMARKS."""
    out = []
    for s in specs or []:
        name, sep, path = s.partition("=")
        name = name.strip().lower()
        if not sep or not path or name not in evalsets.BENCHMARKS:
            raise InputError(
                f"--benchmark {s!r}: expected NAME=PATH with NAME one of {', '.join(evalsets.BENCHMARKS)}",
                field="benchmark",
            )
        if name in dict(out):
            raise InputError(f"--benchmark {name} given twice", field="benchmark")
        out.append((name, path))
    if not out:
        raise InputError("give at least one --benchmark NAME=PATH", field="benchmark")
    return out


def _key(it: dict) -> str:
    return f"{it['benchmark']}/{it['id']}"


def _read_done(path: Path, run: dict, keys: tuple[str, ...], what: str) -> dict[str, dict]:
    """Finished lines of a stage file by item key; a torn last line is repaired; other options are an error."""
    if not path.exists():
        return {}
    schema.repair_torn_tail(path)
    done = {}
    for loc, rec in schema.read_jsonl(path):
        old = rec.get("run") or {}
        diff = [k for k in keys if old.get(k) != run.get(k)]
        if diff:
            what_ = ", ".join(f"{k}={old.get(k)!r} (now {run.get(k)!r})" for k in diff)
            raise loc.error(
                f"{what} written with other options: {what_}; use the same options or another --out", "run"
            )
        done[f"{rec['benchmark']}/{rec['id']}"] = rec
    return done


def _policy_problem(it: dict) -> dict:
    return {"id": it["id"], "question": it["question"], "images": it["images"], "options": []}


def sample_stage(items, policy, path: Path, run: dict, concurrency: int = 8, progress: bool = True) -> dict:
    """Stage 1: N candidates per item, appended exactly once per item. Returns the finished lines by key."""
    from tqdm import tqdm

    from .montecarlo import _lock, _unlock, derive_seed
    from .policy import GenRequest

    lock = _lock(path)
    try:
        spec_run = {**run, "policy": run["policy"].split("@", 1)[0]}  # a server may move between runs
        done = _read_done(path, spec_run, SAMPLE_KEYS, "candidates")
        todo = [it for it in items if _key(it) not in done]
        n = run["n"]
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="sample", unit="item", file=sys.stderr,
                   disable=not progress or None)  # fmt: skip
        for i in range(0, len(todo), max(1, concurrency)):
            chunk = todo[i : i + max(1, concurrency)]
            reqs = []
            for it in chunk:
                p = _policy_problem(it)
                s0 = derive_seed(run["seed"], it["benchmark"], it["id"], "greedy")
                reqs.append(GenRequest(p, n=1, seed=s0, max_tokens=run["max_tokens"], **GREEDY))
                if n > 1:
                    s1 = derive_seed(run["seed"], it["benchmark"], it["id"], "sampled")
                    reqs.append(
                        GenRequest(p, n=n - 1, seed=s1, temperature=run["temperature"], top_k=None,
                                   top_p=run["top_p"], max_tokens=run["max_tokens"])
                    )  # fmt: skip
            texts = policy.generate(reqs)
            k = 0
            lines = []
            for it in chunk:
                resp = list(texts[k][:1])
                k += 1
                if n > 1:
                    resp += list(texts[k][: n - 1])
                    k += 1
                if len(resp) != n:
                    raise InputError(f"the policy returned {len(resp)} of {n} candidates for {_key(it)}")
                lines.append({"benchmark": it["benchmark"], "id": it["id"], "responses": resp, "run": spec_run})
            for line in lines:  # one write per item: a kill never leaves half an item
                schema.append_jsonl(path, [line])
                done[f"{line['benchmark']}/{line['id']}"] = line
            bar.update(len(chunk))
        bar.close()
    finally:
        _unlock(lock, path)
    return done


def _steps(response: str, split, max_steps: int) -> list[str]:
    return split(response, max_steps) or [response.strip() or "(empty)"]


def score_stage(items, cands, engine, path: Path, run: dict, split, max_steps, orm: bool, prompt: str,
                chunk: int = 8, progress: bool = True) -> dict:  # fmt: skip
    """Stage 2: step scores for every candidate (and ORM scores), appended once per item."""
    from tqdm import tqdm

    from .montecarlo import _lock, _unlock
    from .policy import policy_prompt
    from .steps import join_steps

    lock = _lock(path)
    try:
        done = _read_done(path, run, ("prm", "max_steps", "splitter", "orm"), "scores")
        todo = [it for it in items if _key(it) not in done]
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="score", unit="item", file=sys.stderr,
                   disable=not progress or None)  # fmt: skip
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            groups, one = [], []
            for it in part:
                images = [schema.load_image(p, schema.Loc(p)) for p in it["images"]]
                q = policy_prompt(_policy_problem(it), prompt)
                sols = [_steps(r, split, max_steps) for r in cands[_key(it)]["responses"]]
                groups.append({"question": q, "images": images, "solutions": sols})
                one.append({"question": q, "images": images, "solutions": [[join_steps(s)] for s in sols]})
            scores = engine.score_groups(groups)
            orm_scores = engine.score_groups(one) if orm else None
            for j, it in enumerate(part):
                line = {"benchmark": it["benchmark"], "id": it["id"], "step_scores": scores[j], "run": run}
                if orm_scores is not None:
                    line["orm_scores"] = [s[0] for s in orm_scores[j]]
                schema.append_jsonl(path, [line])
                done[_key(it)] = line
            bar.update(len(part))
        bar.close()
    finally:
        _unlock(lock, path)
    return done


# ---------------------------------------------------------------------------------------------------------------
# Stage 3


def _methods_metrics(name: str, items: list[dict], records: list[dict], seed: int) -> tuple[dict, list[dict]]:
    from .bon import evaluate_bon

    ev = evaluate_bon(records, seed=seed, n_subsets=1)
    per = ev["per_problem"]
    out = {}
    for m in ev["methods"]:
        if m == "random" and not evalsets.linear(name):
            continue
        out[m] = evalsets.metric(name, items, [pp[m] for pp in per])
    return out, per


def _truncate(rec: dict, k: int) -> dict:
    return {
        **rec,
        "correct": rec["correct"][:k],
        "step_scores": rec["step_scores"][:k],
        "answers": rec["answers"][:k],
        "orm_scores": rec["orm_scores"][:k] if rec.get("orm_scores") is not None else None,
    }


def evaluate(items_by: dict, cands: dict, scores: dict, seed: int = 0) -> dict:
    """Stage 3 (pure): per benchmark x method the official metric, overall means, curves over N, samples."""
    from .bon import curve_sizes

    benches, samples, curves = {}, [], {}
    n_all = None
    for name, items in items_by.items():
        records = []
        for it in items:
            c, s = cands[_key(it)], scores[_key(it)]
            verdicts = [evalsets.check(name, r, it) for r in c["responses"]]
            records.append(
                {
                    "id": it["id"],
                    "source": name,
                    "correct": [v["correct"] for v in verdicts],
                    "answers": [v["extracted"] for v in verdicts],
                    "step_scores": s["step_scores"],
                    "orm_scores": s.get("orm_scores"),
                }
            )
        n = min(len(r["correct"]) for r in records)
        n_all = n if n_all is None else min(n_all, n)
        metrics, per = _methods_metrics(name, items, records, seed)
        benches[name] = {
            "items": len(items),
            "headline": evalsets.HEADLINE[name],
            "tested_against_authors": name in evalsets.TESTED_AGAINST_AUTHORS,
            "metrics": metrics,
        }
        for it, rec, pp in zip(items, records, per):
            samples.append({"benchmark": name, "id": it["id"], "answer": it["answer"], "correct": rec["correct"],
                            "extracted": rec["answers"], "methods": pp})  # fmt: skip
        curves[name] = {}
        for k in curve_sizes(n):
            mk, _ = _methods_metrics(name, items, [_truncate(r, k) for r in records], seed)
            for m, v in mk.items():
                curves[name].setdefault(m, []).append(v["score"])
        curves[name]["n"] = curve_sizes(n)
    methods = [m for m in next(iter(benches.values()))["metrics"] if all(m in b["metrics"] for b in benches.values())]
    overall = {m: sum(b["metrics"][m]["score"] for b in benches.values()) / len(benches) for m in methods}
    sizes = curve_sizes(n_all)
    curve = {"n": sizes, "subsets": "first k"}
    for m in methods:
        if m == "pass@1":
            continue
        curve[m] = [sum(curves[b][m][curves[b]["n"].index(k)] for b in benches) / len(benches) for k in sizes]
    return {"benchmarks": benches, "methods": methods, "overall": overall, "curve": curve, "curves": curves,
            "samples": samples}  # fmt: skip


def _pct(x) -> str:
    return "—" if x is None or x != x else f"{100 * x:.1f}"


def format_tables(res: dict, main: str = "prm_mean") -> str:
    """Markdown: Table 2 layout (pass@1, Best-of-N, delta) and Table 6 layout (methods side by side)."""
    names = list(res["benchmarks"])
    head = "| | " + " | ".join(names) + " | Overall |"
    sep = "|---" * (len(names) + 2) + "|"

    def row(label, m):
        vals = [res["benchmarks"][b]["metrics"][m]["score"] for b in names] + [res["overall"][m]]
        return f"| {label} | " + " | ".join(_pct(v) for v in vals) + " |"

    n = res["config"]["n"]
    lines = ["## Best-of-N (Table 2 layout)", "", head, sep, row("policy (pass@1)", "pass@1"),
             row(f"+ PRM ({main[4:]}, BoN-{n})", main)]  # fmt: skip
    d = [res["benchmarks"][b]["metrics"][main]["score"] - res["benchmarks"][b]["metrics"]["pass@1"]["score"]
         for b in names] + [res["overall"][main] - res["overall"]["pass@1"]]  # fmt: skip
    lines.append("| delta | " + " | ".join(("+" if x >= 0 else "") + _pct(x) for x in d) + " |")
    lines += ["", "Metrics: " + "; ".join(f"{b}: {res['benchmarks'][b]['headline']}" for b in names)]
    lines += ["", f"## Selection methods at N = {n} (Table 6 layout)", "", "| method | " + " | ".join(names)
              + " | Overall |", sep]  # fmt: skip
    for m in res["methods"]:
        lines.append(row(m, m))
    extra = []
    for b in names:
        mm = res["benchmarks"][b]["metrics"]
        if b == "dynamath":
            extra.append(f"dynamath average accuracy ({main} / pass@1): {_pct(mm[main]['average'])} / "
                         f"{_pct(mm['pass@1']['average'])}")  # fmt: skip
        if b == "wemath":
            extra.append(f"wemath loose score ({main} / pass@1): {_pct(mm[main]['score_loose'])} / "
                         f"{_pct(mm['pass@1']['score_loose'])}")  # fmt: skip
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def _report(res: dict, items_by, cands, scores, out: Path, png: bytes, main: str) -> None:
    import base64
    import html

    from .bon import _prepare, _vote, select_best
    from .report import _atomic, img, page, solution_html
    from .scoring import aggregate

    body = [
        "<h2>Best-of-N over N</h2>" + img(png, "curve"),
        "<pre>" + html.escape(format_tables(res, main)) + "</pre>",
    ]
    by_id = {(s["benchmark"], s["id"]): s for s in res["samples"]}
    for name, items in items_by.items():
        body.append(f"<h2>{html.escape(name)}: examples</h2>")
        for it in items[:2]:
            c, s, smp = cands[_key(it)], scores[_key(it)], by_id[(name, it["id"])]
            agg = [aggregate(x, main[4:]) for x in s["step_scores"]]
            picks = {"pass@1": 0, main: select_best(agg)}
            rec = {"correct": smp["correct"], "step_scores": s["step_scores"], "answers": smp["extracted"],
                   "orm_scores": None}  # fmt: skip
            p = _prepare(rec, main[4:], True, False)
            import numpy as np

            sub = np.arange(len(agg))[None, :]
            picks["majority_vote"] = int(_vote(p["_keys"], np.ones(len(agg)), sub)[0])
            for im in it["images"][:1]:
                data = base64.b64encode(Path(im).read_bytes()).decode()
                body.append(f'<img alt="item image" style="max-width:320px" src="data:image/png;base64,{data}">')
            body.append(f"<p>gold: <b>{html.escape(str(it['answer']))}</b>; picks: "
                        + ", ".join(f"{k} → {v}" for k, v in picks.items()) + "</p>")  # fmt: skip
            from .schema import load_splitter

            split = load_splitter(res["config"]["splitter"])
            for j, r in enumerate(c["responses"]):
                note = f"· extracted {smp['extracted'][j]!r} · {'correct' if smp['correct'][j] else 'wrong'}"
                title = f"{it['id']} candidate {j}" + (" (greedy)" if j == 0 else "")
                body.append(solution_html(title, it["question"] if j == 0 else "", _steps(r, split,
                            res["config"]["max_steps"]), s["step_scores"][j], None, note))  # fmt: skip
    _atomic(out / "report.html", page("Best-of-N evaluation", body))


def bon_eval(
    benchmarks: list[str],
    policy,
    prm,
    out: str,
    n: int = 8,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_tokens: int = 4096,
    prompt: str = "final-answer",
    concurrency: int = 8,
    max_steps: int = 12,
    splitter: str | None = None,
    orm: bool = False,
    aggregate: str = "mean",
    stages: str = "all",
    policy_options: dict | None = None,
    prm_options: dict | None = None,
    report: bool = True,
    progress: bool = True,
) -> dict:
    """Run the stages (`stages`: all, sample, score, evaluate — each also runs the ones before it when their
    output is incomplete); returns the results. `policy`/`prm`: specs or ready objects (tests)."""
    from .policy import ANSWER_FORMATS, load_policy
    from .schema import load_splitter
    from .scoring import AGGREGATES

    if n < 1:
        raise InputError("--n must be >= 1", field="n")
    if prompt not in ANSWER_FORMATS:
        raise InputError(f"unknown prompt {prompt!r}; choose from {', '.join(ANSWER_FORMATS)}", field="prompt")
    if aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}", field="aggregate")
    if stages not in ("all", "sample", "score", "evaluate"):
        raise InputError("--stages: one of all, sample, score, evaluate", field="stages")
    t0 = time.time()
    split = load_splitter(splitter)
    items_by = {}
    for name, path in parse_benchmarks(benchmarks):
        items_by[name] = evalsets.read_benchmark(name, path, limit=limit, sample=sample, seed=seed)
    items = [it for its in items_by.values() for it in its]
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    pspec = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    run = {"policy": pspec, "n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
           "seed": seed, "prompt": prompt}  # fmt: skip
    cpath = outp / "candidates.jsonl"
    done = _read_done(cpath, {**run, "policy": pspec.split("@", 1)[0]}, SAMPLE_KEYS, "candidates")
    if any(_key(it) not in done for it in items):
        pol = load_policy(policy, prompt, concurrency, **(policy_options or {})) if isinstance(policy, str) else policy
        try:
            done = sample_stage(items, pol, cpath, run, concurrency, progress)
        finally:
            if isinstance(policy, str):
                pol.close()
    if stages == "sample":
        return {"candidates": len(done)}
    sspec = prm if isinstance(prm, str) else getattr(prm, "name", type(prm).__name__)
    srun = {"prm": sspec, "max_steps": max_steps, "splitter": splitter, "orm": orm}
    spath = outp / "scores.jsonl"
    sdone = _read_done(spath, srun, tuple(srun), "scores")
    if any(_key(it) not in sdone for it in items):
        if prm is None:
            raise InputError("--prm is needed to score the candidates", field="prm")
        if isinstance(prm, str):
            from .scoring import load_prm

            engine = load_prm(prm, **(prm_options or {}))
        else:
            engine = prm
        sdone = score_stage(items, done, engine, spath, srun, split, max_steps, orm, prompt, progress=progress)
    if stages == "score":
        return {"scores": len(sdone)}

    res = evaluate(items_by, done, sdone, seed=seed)
    from . import __version__

    res["config"] = {**run, "prm": sspec, "orm": orm, "aggregate": aggregate, "limit": limit, "sample": sample,
                     "max_steps": max_steps, "splitter": splitter,
                     "benchmarks": dict(parse_benchmarks(benchmarks))}  # fmt: skip
    res["version"] = __version__
    main = f"prm_{aggregate}"
    samples = res.pop("samples")
    schema.write_jsonl(outp / "samples.jsonl", samples)
    from .report import bon_curve_png

    png = bon_curve_png(res["curve"], outp / "bon_curve.png", main, res["overall"]["pass@1"])
    table = format_tables(res, main)
    tmp = outp / "table.md.tmp"
    tmp.write_text(table, encoding="utf-8")
    os.replace(tmp, outp / "table.md")
    res["seconds"] = round(time.time() - t0, 2)
    schema.write_json(outp / "results.json", res)
    if report:
        res["samples"] = samples
        _report(res, items_by, done, sdone, outp, png, main)
        res.pop("samples")
    print(table)
    print(f"wrote {outp / 'results.json'}, table.md, bon_curve.png" + (", report.html" if report else ""))
    return res


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_bon_eval_command(sub) -> None:
    """`visualprm bon-eval`."""
    from .cli_common import POLICY_HELP
    from .cli_common import positive_int as _positive_int

    p = sub.add_parser("bon-eval", help="Best-of-N on the paper's reasoning benchmarks, each with its own metric")
    p.description = (
        "Sample N candidates per item from a policy (candidate 0 greedy, the others at --temperature/--top-p), "
        "score their steps with the PRM, select (PRM mean/min/max/last/prod, votes, ORM, pass@1, oracle) and "
        "compute each benchmark's official metric; overall = unweighted mean over benchmarks. Every stage "
        "resumes: re-run the same command after an interruption. Writes OUT/candidates.jsonl, scores.jsonl, "
        "results.json, table.md (Table 2 and Table 6 layouts), bon_curve.png, samples.jsonl, report.html."
    )
    p.add_argument("--benchmark", action="append", required=True, metavar="NAME=PATH",
                   help=f"a benchmark file (repeatable); NAME one of {', '.join(evalsets.BENCHMARKS)}")  # fmt: skip
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument(
        "--prm", help="PRM folder, openai:MODEL@URL[,URL2..] (a served PRM), or http(s):// URL of `visualprm serve`"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=_positive_int, default=8, help="candidates per item")
    p.add_argument("--limit", type=_positive_int, help="first K items (seed questions / composite problems)")
    p.add_argument("--sample", type=_positive_int, help="K items drawn at random (seeded) per benchmark")
    p.add_argument("--seed", type=int, default=0, help="run seed; sampling and --sample derive from it")
    p.add_argument("--temperature", type=float, default=0.7, help="candidates 1..N-1")
    p.add_argument("--top-p", type=float, default=0.95, help="candidates 1..N-1")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, help="new tokens per candidate")
    p.add_argument(
        "--prompt", choices=("final-answer", "boxed"), default="final-answer", help="answer format asked for"
    )
    p.add_argument("--concurrency", type=_positive_int, default=8, help="items per policy call")
    p.add_argument("--max-steps", type=_positive_int, default=12, help="at most this many steps per candidate")
    p.add_argument("--splitter", help="step splitter spec (default: blank lines)")
    p.add_argument("--orm", action="store_true", help="also the PRM on the whole solution as one step (ORM row)")
    p.add_argument("--aggregate", default="mean", help="the Best-of-N row's aggregate")
    p.add_argument("--stages", default="all", help="stop after: sample, score, evaluate/all")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    bon_eval(
        args.benchmark, args.policy, args.prm, args.out, n=args.n, limit=args.limit, sample=args.sample,
        seed=args.seed, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        prompt=args.prompt, concurrency=args.concurrency, max_steps=args.max_steps, splitter=args.splitter,
        orm=args.orm, aggregate=args.aggregate, stages=args.stages, report=not args.no_report,
    )  # fmt: skip
    return 0
