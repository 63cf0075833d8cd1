"""The `annotate` job: Monte-Carlo process supervision over a problems file (REFERENCE.md §3, §5).

`annotate_file` validates the options and the problems (this shard), holds a lock beside the output, skips the
problems already finished there, runs the rest through `mclabel.run_rounds` with `mclabel.annotate_problem`
(the per-problem algorithm and the strategies `all`, `early-stop`, `binary` and the adaptive ones: see
mclabel.py, whose names `STRATEGIES`, `derive_seed`, `strategy_steps`, `annotate_problem` and `run_rounds` are
re-exported here), writes each problem's lines and prints a summary of the whole file.

Resume and determinism: each problem's lines are appended with one write when it is finished; every line
carries `solution_index` and `problem_solutions` (lines written for its problem), so a re-run drops a torn last
line and an incomplete problem, and skips finished ones. Every request's seed derives from the run seed, the
problem id and what it serves (mclabel.py), so the lines do not depend on `--concurrency`, on the shard or on where
a run was interrupted.

For the synthetic task each line also carries `gold_step_correct` and `gold_error_kind` (evaluation only).
This module does not label a problem itself (mclabel.py), train or score; it does not talk HTTP itself (the
policy does).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .mclabel import (  # noqa: F401  (re-exported: montecarlo.derive_seed, montecarlo.strategy_steps, ...)
    STRATEGIES,
    annotate_problem,
    derive_seed,
    run_rounds,
    strategy_steps,
)
from .policy import Policy
from .schema import InputError, append_jsonl, read_jsonl, repair_torn_tail, write_jsonl
from .sequential import ADAPTIVE, step_record

# Options that must match when resuming into an existing output file.
RUN_KEYS = ("policy", "solutions", "rollouts", "max_steps", "strategy", "temperature", "top_k", "top_p")
RUN_KEYS += ("max_tokens", "seed", "prompt", "checker", "splitter", "first_round", "threshold")
MC_BINS = ((0.0, 0.0, "0"), (0.0, 0.25, "(0,.25]"), (0.25, 0.5, "(.25,.5]"), (0.5, 0.75, "(.5,.75]"))
MC_BINS += ((0.75, 1.0, "(.75,1)"), (1.0, 1.0, "1"))


# ---------------------------------------------------------------------------------------------------------------
# Files


def parse_shard(shard: str | None) -> tuple[int, int]:
    """`I/N` (0 <= I < N) -> (I, N); None -> (0, 1)."""
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard {shard!r}: expected I/N, e.g. 0/4", field="shard") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {shard!r}: need 0 <= I < N", field="shard")
    return i, n


def load_problems(
    path: str, shard: tuple[int, int] = (0, 1), image_root: str | None = None
) -> tuple[list[dict], list[InputError]]:
    """Validated problems of this shard (images resolved to absolute paths), and the errors of bad ones.

    Duplicate ids are an error for the whole file (resume relies on them)."""
    from .schema import problem as normalise
    from .schema import resolve_images

    base = Path(path).parent
    good, bad, seen = [], [], {}
    for k, (loc, rec) in enumerate(read_jsonl(path)):
        pid = rec.get("id")
        if pid is not None:
            if str(pid) in seen:
                raise loc.error(f"duplicate id {pid!r} (first on line {seen[str(pid)]})", "id")
            seen[str(pid)] = loc.line
        if k % shard[1] != shard[0]:
            continue
        try:
            p = normalise(rec, loc, need_answer=True)
            p["images"] = resolve_images(p["images"], loc, base, image_root)
        except InputError as e:
            bad.append(e)
            continue
        good.append(p)
    return good, bad


def _policy_key(spec: str) -> str:
    return spec.split("@", 1)[0] if spec.startswith("openai:") else spec  # the server may move between runs


def read_done(out: Path, run: dict) -> tuple[set[str], int]:
    """Problem ids finished in `out`; repairs a torn last line and drops incomplete problems (atomic rewrite).

    Returns (finished ids, lines dropped). Lines written with other options raise `InputError`."""
    if not out.exists():
        return set(), 0
    dropped = int(repair_torn_tail(out) > 0)
    groups: dict[str, list[dict]] = {}
    for loc, rec in read_jsonl(out):
        old = dict(rec.get("annotate") or {})
        old.setdefault("first_round", old.get("rollouts"))  # files from before blocks: one block of K
        old.setdefault("threshold", 0.0)
        diff = [k for k in RUN_KEYS if k != "policy" and old.get(k) != run.get(k)]
        if _policy_key(str(old.get("policy"))) != _policy_key(str(run["policy"])):
            diff.insert(0, "policy")
        if diff:
            what = ", ".join(f"{k}={old.get(k)!r} (now {run.get(k)!r})" for k in diff)
            raise loc.error(f"written with other options: {what}; use the same options or another --out", "annotate")
        groups.setdefault(str(rec.get("problem_id")), []).append(rec)
    incomplete = {p for p, recs in groups.items() if len(recs) != (recs[0].get("problem_solutions") or -1)}
    if incomplete:
        keep = [r for p, recs in groups.items() if p not in incomplete for r in recs]
        write_jsonl(out, keep)
        dropped += sum(len(groups[p]) for p in incomplete)
    return set(groups) - incomplete, dropped


def _records(problem: dict, result: dict, prompt: str, run: dict, out_dir: Path) -> list[dict]:
    images = []
    for p in problem["images"]:
        try:
            images.append(os.path.relpath(p, out_dir))
        except ValueError:  # another drive (Windows)
            images.append(p)
    synthetic = problem.get("source") == "synthetic" and isinstance(problem.get("scene"), dict)
    sols = result["solutions"]
    recs = []
    for s in sols:
        v = s["verdict"]
        rec = {
            "id": f"{problem['id']}-{s['index']}",
            "problem_id": problem["id"],
            "images": images,
            "question": prompt,
            "question_orig": problem["question"],
            "answer": problem["answer"],
            "source": problem.get("source"),
            "policy": run["policy"],
            "response": s["response"],
            "correct": bool(v["correct"]),
            "parsed": bool(v.get("parsed", True)),
            "extracted": v.get("extracted"),
            "steps": [step_record(t, lab) for t, lab in zip(s["steps"], s["labels"])],
            "num_mc_sequences": s["rollouts"],
            "num_mc_tokens": s.get("tokens", 0),
            "num_mc_requests": s.get("requests", 0),
            "solution_index": s["index"],
            "problem_solutions": len(sols),
        }
        if synthetic:
            from .synthetic import gold_step_correct, step_error_kind

            rec["gold_step_correct"] = gold_step_correct(problem, s["steps"])
            rec["gold_error_kind"] = step_error_kind(problem, s["steps"])
        for k, val in problem.items():  # the problem's own extra fields (options, scene, metadata, ...)
            rec.setdefault(k, val)
        rec["annotate"] = run
        recs.append(rec)
    return recs


def mc_bin(mc: float) -> str:
    """The histogram bin of an mc value: 0, (0,.25], (.25,.5], (.5,.75], (.75,1), 1."""
    if mc <= 0.0:
        return "0"
    if mc >= 1.0:
        return "1"
    return next(name for lo, hi, name in MC_BINS[1:] if lo < mc <= hi)


def summarize(out: str | os.PathLike) -> dict:
    """Figures over a whole annotated file: solutions, steps, pass rate, mc histogram, rollouts."""
    recs = [r for _, r in read_jsonl(out)] if Path(out).exists() else []
    steps = [st for r in recs for st in r["steps"]]
    hist = Counter(mc_bin(st["mc"]) for st in steps)
    s: dict[str, Any] = {
        "problems": len({r["problem_id"] for r in recs}),
        "solutions": len(recs),
        "steps": len(steps),
        "pass_rate": sum(r["correct"] for r in recs) / len(recs) if recs else 0.0,
        "unparsed_solutions": sum(not r.get("parsed", True) for r in recs),
        "mc_histogram": {name: hist[name] for _, _, name in MC_BINS},
        "rollouts": sum(r.get("num_mc_sequences", 0) for r in recs),
        "inferred_steps": sum(st.get("n_total") == 0 for st in steps),
        "bounded_steps": sum(bool(st.get("mc_bound")) for st in steps),
        "tokens": sum(r.get("num_mc_tokens", 0) for r in recs),
        "requests": sum(r.get("num_mc_requests", 0) for r in recs),
    }
    tau = recs[0]["annotate"].get("threshold", 0.0) if recs and isinstance(recs[0].get("annotate"), dict) else 0.0
    s["threshold"] = tau
    gold = [(st["mc"] > tau, g) for r in recs for st, g in zip(r["steps"], r.get("gold_step_correct") or [])]
    if gold:
        s["label_agreement_with_gold"] = sum(a == b for a, b in gold) / len(gold)
    return s


# ---------------------------------------------------------------------------------------------------------------
# The job


def run_settings(spec: str, *, solutions: int, rollouts: int, max_steps: int, strategy: str, temperature: float,
                 top_k: int | None, top_p: float | None, max_tokens: int, seed: int, prompt: str, checker: str | None,
                 splitter: str | None, first_round: int | None, threshold: float) -> dict:  # fmt: skip
    """The run's settings as the output records them (and resume compares them); every setting the user can get
    wrong fails here with one line, before any work. Shared by `annotate_file` and its Ray twin."""
    from .policy import ANSWER_FORMATS

    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}", field="strategy")
    if prompt not in ANSWER_FORMATS:
        raise InputError(f"unknown prompt {prompt!r}; choose from {', '.join(ANSWER_FORMATS)}", field="prompt")
    first_round = first_round or (1 if strategy in ADAPTIVE else rollouts)
    sizes = {"solutions": solutions, "rollouts": rollouts, "max_steps": max_steps, "first_round": first_round}
    for name, v in sizes.items():
        if v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {v}", field=name)
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"--threshold must be in [0, 1), got {threshold}", field="threshold")
    run = {"policy": spec, "solutions": solutions, "rollouts": rollouts, "max_steps": max_steps}
    run.update(strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens)
    run.update(seed=seed, prompt=prompt, checker=checker, splitter=splitter)
    run.update(first_round=min(first_round, rollouts), threshold=float(threshold))
    return run


def resume_todo(out_path: Path, run: dict, todo: list[dict], bad: list) -> tuple[list[dict], int]:
    """The problems still to do after the finished ones in `out_path` (a torn tail dropped), and how many were
    finished; warns about bad problems and dropped lines. Call with the output's lock held."""
    done, dropped = read_done(out_path, run)
    n_resumed = sum(p["id"] in done for p in todo)
    for e in bad[:10]:
        print(f"warning: skipping a bad problem: {e}", file=sys.stderr)
    if len(bad) > 10:
        print(f"warning: ... and {len(bad) - 10} more bad problems", file=sys.stderr)
    if dropped:
        print(f"resume: dropped {dropped} torn or incomplete line(s) of {out_path}", file=sys.stderr)
    return [p for p in todo if p["id"] not in done], n_resumed


def annotate_file(
    problems: str,
    policy: str | Policy,
    out: str,
    solutions: int = 4,
    rollouts: int = 16,
    max_steps: int = 12,
    strategy: str = "all",
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    max_tokens: int = 4096,
    concurrency: int = 8,
    shard: str | None = None,
    seed: int = 0,
    prompt: str = "final-answer",
    checker: str | None = None,
    splitter: str | None = None,
    image_root: str | None = None,
    policy_options: dict | None = None,
    progress: bool = True,
    first_round: int | None = None,
    threshold: float = 0.0,
) -> dict:
    """Annotate every problem of `problems` (this shard) into `out` (appended, resumable); returns the summary.

    `policy`: a spec (`synthetic`, `hf:PATH`, `openai:MODEL@URL`, `vllm:PATH_OR_ID`) or a Policy object.
    `policy_options`: extra keyword arguments for `load_policy` (retries, timeout, api_key, device, ...).
    `first_round`: continuations per block (sequential.py; default 1 for the adaptive strategies, else K);
    `threshold`: the value-label threshold the adaptive strategies decide (recorded; use it in build-data).
    """
    from .answers import load_checker
    from .policy import load_policy, parse_policy_spec
    from .schema import load_splitter

    spec = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    if isinstance(policy, str):
        parse_policy_spec(policy)
    run = run_settings(spec, solutions=solutions, rollouts=rollouts, max_steps=max_steps, strategy=strategy,
                       temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed,
                       prompt=prompt, checker=checker, splitter=splitter, first_round=first_round,
                       threshold=threshold)  # fmt: skip
    check, split = load_checker(checker), load_splitter(splitter)
    shard_i, shard_n = parse_shard(shard)
    todo, bad = load_problems(problems, (shard_i, shard_n), image_root)
    if bad and not todo:
        raise bad[0]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_path)
    try:
        todo, n_resumed = resume_todo(out_path, run, todo, bad)
        owned = isinstance(policy, str) and bool(todo)  # an unreachable server fails here, before any work
        pol = load_policy(policy, prompt, concurrency, **(policy_options or {})) if owned else policy
        try:
            stats = _run(pol, todo, out_path, run, check, split, concurrency, progress)
        finally:
            if owned:
                pol.close()
    finally:
        _unlock(lock, out_path)
    summary = summarize(out_path)
    summary.update(stats, shard=f"{shard_i}/{shard_n}", resumed_problems=n_resumed, bad_problems=len(bad))
    _print_summary(summary, out)
    return summary


def _run(policy, todo, out_path, run, check, split, concurrency, progress) -> dict:
    from .jobs import bar as progress_bar
    from .policy import policy_prompt
    from .sequential import token_counter

    sampling = {"temperature": run["temperature"], "top_k": run["top_k"], "top_p": run["top_p"]}
    sampling["max_tokens"] = run["max_tokens"]
    count_tokens = token_counter(policy)
    stats = Counter()
    t0 = time.time()
    bar = progress_bar(len(todo), "annotate", "problem", enabled=progress)

    def make_job(p: dict):
        return annotate_problem(
            p,
            solutions=run["solutions"],
            rollouts=run["rollouts"],
            max_steps=run["max_steps"],
            strategy=run["strategy"],
            seed=run["seed"],
            check=check,
            split=split,
            sampling=sampling,
            first_round=run["first_round"],
            threshold=run["threshold"],
            count_tokens=count_tokens,
        )

    def tick() -> None:
        bar.update(1)
        bar.set_postfix_str(f"{stats['rollouts'] / max(time.time() - t0, 1e-9):.1f} rollouts/s", refresh=False)

    def on_done(p: dict, result: dict) -> None:
        append_jsonl(out_path, _records(p, result, policy_prompt(p, run["prompt"]), run, out_path.parent))
        stats["problems_done"] += 1
        stats["rollouts"] += result["rollouts"]
        stats["tokens"] += result["tokens"]
        stats["requests"] += result["requests"]
        stats["rollouts_unparsed"] += result["rollouts_unparsed"]
        stats["empty_responses"] += result["empty"]
        tick()

    first_error: list[str] = []

    def on_fail(p: dict, e: Exception) -> None:
        stats["failed_problems"] += 1
        first_error.append(f"problem {p['id']!r}: {e}")
        bar.write(f"warning: skipping problem {p['id']!r}: {e}", file=sys.stderr)
        tick()

    try:
        run_rounds(todo, policy, make_job, max(1, concurrency), on_done, on_fail)
    finally:
        bar.close()
    if todo and stats["failed_problems"] == len(todo):
        raise InputError(f"every problem failed ({len(todo)}); the first: {first_error[0]}")
    elapsed = time.time() - t0
    return {
        "this_run": {
            "problems_done": stats["problems_done"],
            "failed_problems": stats["failed_problems"],
            "rollouts": stats["rollouts"],
            "tokens": stats["tokens"],
            "requests": stats["requests"],
            "rollouts_unparsed": stats["rollouts_unparsed"],
            "empty_responses": stats["empty_responses"],
            "seconds": round(elapsed, 2),
            "rollouts_per_second": round(stats["rollouts"] / elapsed, 1) if elapsed > 0 else 0.0,
        }
    }


def _lock(out: Path):
    """An exclusive lock beside the output, so two runs never append to the same file."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    f = open(str(out) + ".lock", "w")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError("another annotate run is writing this file (its .lock is held)", out) from None
    return f


def _unlock(f, out: Path) -> None:
    if f is not None:
        try:
            os.unlink(str(out) + ".lock")
        except OSError:
            pass
        f.close()


def _print_summary(s: dict, out: str) -> None:
    r = s["this_run"]
    print(f"annotated {s['problems']} problems -> {out} (shard {s['shard']})")
    print(
        f"  this run: {r['problems_done']} problems, {r['rollouts']} rollouts ({r['tokens']} tokens, "
        f"{r['requests']} requests) in {r['seconds']:.1f}s "
        f"({r['rollouts_per_second']} rollouts/s); resumed {s['resumed_problems']} finished problems; "
        f"skipped {s['bad_problems']} bad and {r['failed_problems']} failed problems"
    )
    print(
        f"  solutions {s['solutions']}, steps {s['steps']} ({s['inferred_steps']} inferred, {s['bounded_steps']} "
        f"bounds), pass rate "
        f"{100 * s['pass_rate']:.1f}%, unparsed answers: {s['unparsed_solutions']} solutions, "
        f"{r['rollouts_unparsed']} rollouts this run; empty responses {r['empty_responses']}"
    )
    print(
        f"  rollouts used: {s['rollouts']} ({s['rollouts'] / max(s['solutions'], 1):.1f} per solution); generated "
        f"tokens {s['tokens']}, requests {s['requests']}"
    )
    print("  mc histogram: " + " | ".join(f"{k}: {v}" for k, v in s["mc_histogram"].items()))
    if "label_agreement_with_gold" in s:
        tau, agree = s["threshold"], 100 * s["label_agreement_with_gold"]
        print(f"  value labels (mc > {tau:g}) agree with gold_step_correct on {agree:.1f}%")
