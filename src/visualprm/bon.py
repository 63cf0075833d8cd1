"""Best-of-N: pick the best of N candidate responses per problem with a PRM, and evaluate the picks against gold
answers (REFERENCE.md §9).

Selection (`select_best`): the argmax of the aggregated step scores; ties go to the lower index (candidate 0 is
the greedy answer in the paper's protocol). `bon_file` is the `bon` job: score every candidate (one group per
problem, so a scorer can share the prompt), write OUT/picks.jsonl and, when gold answers are present, the
evaluation.

Evaluation (`evaluate_bon`, pure, no model): accuracy at the full N of the PRM with each aggregation (mean, min,
max, last, prod), the PRM-weighted majority vote (sum of aggregated scores per distinct answer), the plain
majority vote (self-consistency), an ORM when its scores are given (a PRM run with the whole solution as one
step, or a separate model), a random pick (its exact expectation: the fraction of correct candidates), the first
candidate (pass@1) and the oracle (pass@N). Votes go to the extracted final answers (numbers compared by value,
text case- and space-insensitively); a candidate without an answer does not vote; vote ties go to the answer
whose first candidate comes first. Curves over N = 1, 2, 4, ... up to the smallest N among the problems average
each method over `n_subsets` seeded random subsets of the candidates (the full set at the largest N); pass@1 is
not a curve (it is one fixed candidate) and is drawn as a flat line. With unequal N across problems the last
curve point (at the smallest N) can differ from the full-N table. Per-source
tables and the unweighted mean over sources (the paper's "overall") sit beside the pooled accuracy.

Correctness comes from a candidate record's own `correct: [bool ..]` when present, else from
`answers.check(response, record)`. This module does not generate candidates (see `search.py` / policies).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from . import schema
from .jobs import input_stamp
from .schema import InputError
from .scoring import AGGREGATES, aggregate


def select_best(scores: list[float]) -> int:
    """Index of the highest score; ties (and NaN, which never wins) go to the lower index."""
    best, best_v = 0, -math.inf
    for i, v in enumerate(scores):
        if v is not None and not math.isnan(v) and v > best_v:
            best, best_v = i, v
    return best


def vote_key(answer) -> str | None:
    """The key under which an extracted answer votes: numbers by value, text case- and space-insensitively."""
    if answer is None:
        return None
    from . import answers

    s = str(answer).strip()
    if not s:
        return None
    num = answers.to_number(s)
    if num is not None:
        return f"#{num:.6g}"
    return " ".join(answers.clean(s).lower().split()) or None


# ---------------------------------------------------------------------------------------------------------------
# Evaluation (pure)


def _vote(keys: np.ndarray, weights: np.ndarray, sub: np.ndarray) -> np.ndarray:
    """Per row of `sub` (S, n): the position (0..n-1) of the first candidate of the winning answer.

    keys: (N,) int answer ids, -1 = no answer (no vote). weights: (N,) vote weights."""
    s, n = sub.shape
    k = sub_keys = keys[sub]
    n_ans = int(keys.max()) + 1 if keys.size and keys.max() >= 0 else 0
    if n_ans == 0:
        return np.zeros(s, dtype=int)
    rows = np.repeat(np.arange(s), n)
    valid = (k >= 0).ravel()
    total = np.full((s, n_ans), -np.inf)
    seen = np.zeros((s, n_ans), dtype=bool)
    seen[rows[valid], sub_keys.ravel()[valid]] = True
    total[seen] = 0.0
    np.add.at(total, (rows[valid], sub_keys.ravel()[valid]), weights[sub].ravel()[valid])
    first = np.full((s, n_ans), n)
    for j in range(n - 1, -1, -1):
        ok = k[:, j] >= 0
        first[np.flatnonzero(ok), k[ok, j]] = j
    best = total.max(axis=1, keepdims=True)
    cand = seen & (total >= best)
    pos = np.where(cand, first, n).min(axis=1)
    return np.where(np.isfinite(best[:, 0]), pos, 0)  # nobody voted: the first candidate


def _methods_on(sub: np.ndarray, rec: dict) -> dict[str, np.ndarray]:
    """Correctness (S,) of every method on the candidate subsets `sub` (S, n) of one problem."""
    correct = rec["_correct"]
    c = correct[sub]
    rows = np.arange(sub.shape[0])
    out = {}
    for how, agg in rec["_agg"].items():
        out[f"prm_{how}"] = c[rows, np.argmax(agg[sub], axis=1)]
    if rec["_orm"] is not None:
        out["orm"] = c[rows, np.argmax(rec["_orm"][sub], axis=1)]
    if rec["_keys"] is not None:
        main = rec["_agg"][rec["_main"]]
        out["prm_weighted_vote"] = c[rows, _vote(rec["_keys"], np.nan_to_num(main, neginf=0.0), sub)]
        out["majority_vote"] = c[rows, _vote(rec["_keys"], np.ones(len(correct)), sub)]
    out["random"] = c.mean(axis=1)
    out["pass@1"] = c[:, 0].astype(float)
    out["oracle"] = c.any(axis=1)
    return out


def _prepare(rec: dict, main: str, with_votes: bool, with_orm: bool) -> dict:
    correct = np.asarray(rec["correct"], dtype=bool)
    agg = {}
    for how in AGGREGATES:
        a = np.array([aggregate(s, how) for s in rec["step_scores"]], dtype=float)
        agg[how] = np.nan_to_num(a, nan=-np.inf)
    keys = None
    if with_votes:
        ids: dict[str, int] = {}
        keys = np.array([-1 if k is None else ids.setdefault(k, len(ids)) for k in map(vote_key, rec["answers"])])
    orm = np.nan_to_num(np.asarray(rec["orm_scores"], dtype=float), nan=-np.inf) if with_orm else None
    return {"_correct": correct, "_agg": agg, "_keys": keys, "_orm": orm, "_main": main}


def curve_sizes(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n."""
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n]


def evaluate_bon(records: list[dict], seed: int = 0, aggregate_by: str = "mean", n_subsets: int = 32) -> dict:
    """Best-of-N accuracies, per-source tables and curves.

    records: `{"id", "source"?, "correct": [bool]*N, "step_scores": [[float ..]]*N, "answers"?: [str|None]*N
    (extracted final answers, for the votes), "orm_scores"?: [float]*N}`. Methods that need a missing field are
    left out. Returns `{"accuracy", "by_source", "source_mean", "curves", "per_problem", "counts"}`."""
    if not records:
        raise InputError("no problems with gold answers to evaluate")
    if aggregate_by not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate_by!r}; choose from {', '.join(AGGREGATES)}")
    for r in records:
        if len(r["correct"]) != len(r["step_scores"]) or not r["correct"]:
            raise InputError(
                f"problem {r.get('id')}: {len(r['correct'])} verdicts for {len(r['step_scores'])} candidates"
            )
    with_votes = all(r.get("answers") is not None for r in records)
    with_orm = all(r.get("orm_scores") is not None for r in records)
    prepared = [_prepare(r, aggregate_by, with_votes, with_orm) for r in records]
    rng = np.random.default_rng(seed)

    per_problem = []
    for r, p in zip(records, prepared):
        n = len(r["correct"])
        full = _methods_on(np.arange(n)[None, :], p)
        per_problem.append({k: float(v[0]) for k, v in full.items()})
    methods = list(per_problem[0])
    accuracy = {m: float(np.mean([pp[m] for pp in per_problem])) for m in methods}

    rows_by_source: dict[str, list[dict]] = {}
    for r, pp in zip(records, per_problem):
        rows_by_source.setdefault(str(r.get("source") or "unknown"), []).append(pp)
    by_source = {
        src: {"n": len(rows), **{m: float(np.mean([pp[m] for pp in rows])) for m in methods}}
        for src, rows in rows_by_source.items()
    }
    by_source = dict(sorted(by_source.items()))
    source_mean = {m: float(np.mean([d[m] for d in by_source.values()])) for m in methods}

    n_min = min(len(r["correct"]) for r in records)
    sizes = curve_sizes(n_min)
    curves: dict = {"n": sizes, "subsets": n_subsets}
    # pass@1 is a fixed candidate, not a function of N: it is a flat reference line, not a curve
    curve_methods = [m for m in methods if m != "pass@1"]
    sums = {m: np.zeros(len(sizes)) for m in curve_methods}
    for r, p in zip(records, prepared):
        n = len(r["correct"])
        for si, size in enumerate(sizes):
            if size == n:
                sub = np.arange(n)[None, :]
            else:
                sub = np.sort(np.argsort(rng.random((n_subsets, n)), axis=1)[:, :size], axis=1)
            for m, v in _methods_on(sub, p).items():
                if m in sums:
                    sums[m][si] += float(np.mean(v))
    for m in curve_methods:
        curves[m] = (sums[m] / len(records)).tolist()
    counts = {
        "problems": len(records),
        "candidates_min": n_min,
        "candidates_max": max(len(r["correct"]) for r in records),
        "candidates_correct": int(sum(sum(map(bool, r["correct"])) for r in records)),
    }
    return {
        "aggregate": aggregate_by,
        "methods": methods,
        "accuracy": accuracy,
        "by_source": by_source,
        "source_mean": source_mean,
        "curves": curves,
        "counts": counts,
        "per_problem": per_problem,
    }


def format_table(ev: dict) -> str:
    """Methods as rows; pooled, mean over sources and each source as columns (percentages)."""
    srcs = list(ev["by_source"])
    cols = ["all", "src-mean"] + srcs if len(srcs) > 1 else ["all"]
    head = f"{'method':20s}" + "".join(f"{c[:10]:>11s}" for c in cols)
    lines = [head]
    for m in ev["methods"]:
        vals = [ev["accuracy"][m]] + (
            [ev["source_mean"][m]] + [ev["by_source"][s][m] for s in srcs] if cols[1:] else []
        )
        lines.append(f"{m:20s}" + "".join(f"{100 * v:11.1f}" for v in vals))
    lines.append(
        f"{'problems':20s}"
        + "".join(
            f"{x:11d}"
            for x in [ev["counts"]["problems"]]
            + ([len(srcs)] + [ev["by_source"][s]["n"] for s in srcs] if cols[1:] else [])
        )
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The job


def _load_problems(input_path, limit, max_steps, splitter):
    from .schema import load_splitter

    split = load_splitter(splitter) if splitter is None or isinstance(splitter, str) else splitter
    problems = []
    for loc, rec in schema.read_jsonl(input_path):
        if limit is not None and len(problems) >= limit:
            break
        p = schema.candidates(rec, loc)
        sols = []
        for i, r in enumerate(p["responses"]):
            if isinstance(r, list):
                sols.append(schema.step_list(r, loc, f"responses[{i}]"))
            else:
                s = split(r, max_steps)
                if not s:
                    raise loc.error(f"response {i} has no steps", "responses")
                sols.append(s)
        p["_steps"], p["_loc"] = sols, loc
        pre = rec.get("correct")
        if pre is not None and not (isinstance(pre, list) and len(pre) == len(sols)):
            raise loc.error(f"expected a list of {len(sols)} booleans (one per response)", "correct")
        problems.append(p)
    if not problems:
        raise InputError("no problems", input_path)
    return problems


def _score_all(
    engine, problems, image_root, no_image, one_step: bool, chunk: int = 16, desc: str = "scoring", partial=None
):
    """Step scores of every candidate of every problem, chunk by chunk. `partial` = (path, header): finished
    chunks are appended there and those a killed run with the same header left are kept (`jobs.resume_rows`)."""
    from .jobs import append_rows, resume_rows
    from .jobs import bar as progress_bar
    from .steps import join_steps

    out = []
    if partial is not None:
        out = [r["scores"] for r in resume_rows(*partial)]
        if len(out) > len(problems) or (len(out) % chunk and len(out) != len(problems)):
            out = resume_rows(*partial, fresh=True)
        elif out:
            print(f"resume: kept the {desc} of {len(out)} problems from {partial[0]}", file=sys.stderr)
    base = Path(problems[0]["_loc"].path).parent
    with progress_bar(len(problems), desc, "problem", initial=len(out)) as bar:
        for i in range(len(out), len(problems), chunk):
            groups = []
            for p in problems[i : i + chunk]:
                images = []
                if not no_image and p["images"]:
                    paths = schema.resolve_images(p["images"], p["_loc"], base, image_root)
                    images = [schema.load_image(x, p["_loc"]) for x in paths]
                sols = [[join_steps(s)] for s in p["_steps"]] if one_step else p["_steps"]
                groups.append({"question": p["question"], "images": images, "solutions": sols})
            scored = engine.score_groups(groups)
            if partial is not None:
                append_rows(partial[0], [{"scores": g} for g in scored])
            out += scored
            bar.update(len(groups))
    return out


def _gold(p: dict, check=None) -> tuple[list[bool], list] | None:
    """(correct flags, extracted answers or None) from the record's `correct` or from the checker
    (`answers.check` unless the user gave `--checker`)."""
    rec_correct = p.get("correct")
    extracted = p.get("extracted") if isinstance(p.get("extracted"), list) else None
    if isinstance(rec_correct, list):
        return [bool(c) for c in rec_correct], extracted
    if p.get("answer") in (None, "", []):
        return None
    from . import answers
    from .steps import join_steps

    flags, ex = [], []
    for r in p["responses"]:
        try:
            v = (check or answers.check)(r if isinstance(r, str) else join_steps(r), p)
        except InputError as e:  # a bad gold answer or mode in the record: name the record
            loc = p["_loc"]
            raise InputError(e.message, loc.path, loc.line, e.field) from None
        flags.append(bool(v["correct"]))
        ex.append(v.get("extracted"))
    return flags, ex


aggregate_value = aggregate  # bon_file's `aggregate` argument shadows the function


def bon_file(
    prm: str | None,
    input_path: str,
    out_dir: str,
    aggregate: str = "mean",
    batch_size: int = 8,
    image_root: str | None = None,
    system_prompt: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    max_steps: int = 12,
    max_length: int | None = None,
    label_mode: str = "auto",
    seed: int = 0,
    limit: int | None = None,
    splitter=None,
    orm: str | None = None,
    judge: str | None = None,
    concurrency: int = 8,
    n_subsets: int = 32,
    no_image: bool = False,
    checker: str | None = None,
    share_prefix: bool = True,
    max_batch_tokens: int | None = None,
    report: bool = True,
    engine=None,
    orm_engine=None,
    api_key: str | None = None,
    engine_options: dict | None = None,
) -> int:
    """Score all candidates, write OUT/picks.jsonl; with gold answers also results.json, samples.jsonl,
    bon_curve.png and report.html. `prm` (and `orm`): a folder or any spec `scoring.load_prm` takes
    (`openai:MODEL@URL` with `engine_options`); `orm="prm"` runs the PRM itself with the whole solution as one
    step. `system_prompt`: True (the PRM's default), False or the text. `engine` / `orm_engine`: ready scorers."""
    from . import __version__

    if aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}", field="aggregate")
    t0 = time.time()
    engine_given, orm_given = engine, orm_engine
    if engine is None and (prm is None) == (judge is None):
        raise InputError("give exactly one of --prm and --judge")
    problems = _load_problems(input_path, limit, max_steps, splitter)
    check = None
    if checker:
        from .answers import load_checker

        check = load_checker(checker)

    def load(path):
        from .scoring import load_prm

        return load_prm(
            path,
            api_key=api_key,
            **(engine_options or {}),
            device=device,
            dtype=dtype,
            system_prompt=None if system_prompt is True else system_prompt,
            batch_size=batch_size,
            max_length=max_length,
            label_mode=label_mode,
            share_prefix=share_prefix,
            max_batch_tokens=max_batch_tokens,
        )

    if engine is None:
        if judge is not None:
            from .judge import Judge

            engine = Judge.from_spec(judge, concurrency=concurrency, seed=seed)
        else:
            engine = load(prm)
    # Resume: the scores of finished chunks of a killed run with the same command are kept in OUT/*.partial.
    out = Path(out_dir)
    resumable = engine_given is None  # an engine passed in has no name to check a resume against
    header = {"input": input_stamp(input_path), "prm": prm, "judge": judge, "limit": limit, "max_steps": max_steps}
    header |= {"splitter": splitter if isinstance(splitter, (str, type(None))) else repr(splitter)}
    header |= {"image_root": image_root, "no_image": no_image, "batch_size": batch_size, "dtype": dtype}
    header |= {"system_prompt": system_prompt, "max_length": max_length, "label_mode": label_mode, "seed": seed}
    header |= {"share_prefix": share_prefix, "max_batch_tokens": max_batch_tokens, "device": device}
    header |= {"engine_options": engine_options}
    cache = out / "scores.partial"
    step_scores = _score_all(
        engine, problems, image_root, no_image, one_step=False, partial=(cache, header) if resumable else None
    )
    orm_scores = None
    if orm_engine is None and orm is not None:
        orm_engine = engine if orm == "prm" else load(orm)
    orm_cache = out / "orm_scores.partial"
    if orm_engine is not None:
        orm_part = (orm_cache, {**header, "orm": orm}) if resumable and orm_given is None else None
        orm_scores = [
            [s[0] for s in g]
            for g in _score_all(orm_engine, problems, image_root, no_image, True, desc="ORM", partial=orm_part)
        ]

    from .report import report_images

    picks, eval_records, samples, shown = [], [], [], []
    for i, (p, ss) in enumerate(zip(problems, step_scores)):
        agg = [aggregate_value(s, aggregate) for s in ss]
        best = select_best(agg)
        picks.append({"id": p["id"], "best": best, "response": p["responses"][best], "scores": agg, "step_scores": ss})
        gold = _gold(p, check)
        if gold is not None:
            flags, extracted = gold
            eval_records.append(
                {
                    "id": p["id"],
                    "source": p.get("source") or p.get("data_source"),
                    "correct": flags,
                    "step_scores": ss,
                    "answers": extracted,
                    "orm_scores": orm_scores[i] if orm_scores else None,
                }
            )
            if len(shown) < 6:
                shown.append(
                    {
                        "title": f"{p['id']}: picked candidate {best}",
                        "question": p["question"],
                        "steps": p["_steps"][best],
                        "scores": ss[best],
                        "correct": flags[best],
                        "images": report_images(p["images"], Path(p["_loc"].path).parent, image_root),
                    }
                )
    schema.write_jsonl(out / "picks.jsonl", picks)
    print(f"wrote {out / 'picks.jsonl'} ({len(picks)} problems, {time.time() - t0:.1f}s)")
    if hasattr(engine, "engine_counts"):
        from .remote_prm import counts_line

        print(f"PRM engine: {counts_line(engine.engine_counts())}")
    if not eval_records:
        print("no gold answers: picks only, no evaluation")
        cache.unlink(missing_ok=True)
        orm_cache.unlink(missing_ok=True)
        return 0

    ev = evaluate_bon(eval_records, seed=seed, aggregate_by=aggregate, n_subsets=n_subsets)
    for rec, pp in zip(eval_records, ev.pop("per_problem")):
        samples.append({**{k: v for k, v in rec.items() if k != "step_scores"}, "methods": pp})
    results = {
        "version": __version__,
        "config": {
            "prm": prm,
            "judge": judge,
            "orm": orm,
            "input": str(input_path),
            "aggregate": aggregate,
            "seed": seed,
            "limit": limit,
            "n_subsets": n_subsets,
            "max_steps": max_steps,
        },
        **ev,
        "counts": {**ev["counts"], "problems_total": len(problems)},
        "seconds": round(time.time() - t0, 2),
    }
    if hasattr(engine, "summary"):
        results["judge_parse"] = engine.summary()
    if hasattr(engine, "engine_counts"):  # a PRM behind a server: requests, tokens, bounded steps
        results["prm_engine"] = engine.engine_counts()
    schema.write_jsonl(out / "samples.jsonl", samples)
    schema.write_json(out / "results.json", results)
    from .report import bon_curve_png, bon_report

    png = bon_curve_png(results["curves"], out / "bon_curve.png", f"prm_{aggregate}", results["accuracy"]["pass@1"])
    if report:
        bon_report(results, shown, out / "report.html", png)
    print(format_table(results))
    print(f"wrote {out / 'results.json'}, {out / 'samples.jsonl'}, {out / 'bon_curve.png'}")
    cache.unlink(missing_ok=True)
    orm_cache.unlink(missing_ok=True)
    return 0
