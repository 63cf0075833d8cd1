"""Monte-Carlo process supervision (REFERENCE.md §3, §5) and the `annotate` job.

For every problem: sample N solutions from a policy (one request, `n=N`), split each into steps (at most
`max_steps`), check its final answer, and estimate for the step prefixes `steps[:i+1]` the chance that the
policy, continuing from there, reaches a correct answer: `mc_i = n_correct / n_total` over K continuations
(requests of `first_round` of them, sequential.py; the continued text is `prefix + continuation`, checked
like a solution).

Strategies, and what each step's `n_correct` / `n_total` mean (m steps; K = `--rollouts`):

- `all`: K continuations from every prefix but the last, `n_total = K`. The last step is the solution itself:
  `mc` is its verdict (1.0 or 0.0) with `n_correct = 0|1, n_total = 1`. (The released pipeline also rolls out
  the complete response, whose continuation is almost always empty, i.e. the same verdict at K times the cost.)
- `early-stop`: the prefixes in order until the first with `mc = 0` (that one included, `n_total = K`); every
  later step gets `mc = 0, n_correct = 0, n_total = 0` (inferred, not rolled out), the last step included. If no
  rolled-out prefix hits 0, the last step is the verdict as in `all`.
- `binary` (OmegaPRM-style): binary search for the first step with `mc = 0`, assuming mc never recovers after a
  zero. The last step is the verdict (`n_total = 1`), so a wrong solution has a known zero at m-1 and the search
  rolls out about log2(m) prefixes; a correct solution needs none. Rolled-out steps keep their measured `mc`
  (`n_total = K`). The other steps are inferred (`n_total = 0`): before the first zero, `mc` is copied from the
  nearest measured step after it (a lower bound if mc only falls along a solution), so for a correct solution
  every step gets 1.0; from the first zero on, `mc = 0`.
- `adaptive`, `adaptive-early-stop`, `adaptive-binary`: the same three, drawing each prefix's continuations
  block by block until its value label at `threshold` (and for the last two, whether mc = 0) is decided: the
  same labels at a fraction of the rollouts; a step stopped before K is a bound (`mc_bound`, sequential.py).

So rollouts per solution: all = K(m-1); early-stop = K(f+1) for a first zero at f < m-1, else K(m-1);
binary = K * ceil(log2(m)) at most, 0 for correct solutions.

Resume and determinism: each problem's lines are appended with one write when it is finished; every line
carries `solution_index` and `problem_solutions` (lines written for its problem), so a re-run drops a torn last
line and an incomplete problem, and skips finished ones. Every request's seed is derived from the run seed, the
problem id and the (solution, step, block) it serves, so results do not depend on `--concurrency`, on the
shard, on the strategy (strategies with the same `first_round` share the rollouts they both make) or on where a
run was interrupted. Problems are processed
`concurrency` at a time in lock-step rounds: each round sends every pending request of those problems to the
policy in one `generate` call (batched in hf/vllm, concurrent HTTP in openai).

For the synthetic task each line also carries `gold_step_correct` and `gold_error_kind` (evaluation only).
This module does not train or score; it does not talk HTTP itself (the policy does).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from .policy import GenRequest, Policy
from .schema import InputError, append_jsonl, read_jsonl, repair_torn_tail, write_jsonl
from .sequential import ADAPTIVE, adaptive_steps, draw_rounds, step_record

STRATEGIES = ("all", "early-stop", "binary", *ADAPTIVE)
# Options that must match when resuming into an existing output file.
RUN_KEYS = ("policy", "solutions", "rollouts", "max_steps", "strategy", "temperature", "top_k", "top_p")
RUN_KEYS += ("max_tokens", "seed", "prompt", "checker", "splitter", "first_round", "threshold")
MC_BINS = ((0.0, 0.0, "0"), (0.0, 0.25, "(0,.25]"), (0.25, 0.5, "(.25,.5]"), (0.5, 0.75, "(.5,.75]"))
MC_BINS += ((0.75, 1.0, "(.75,1)"), (1.0, 1.0, "1"))

Measure = dict[int, tuple[int, int]]  # prefix index -> (n_correct, n_total)
Labels = list[tuple[float, int, int]]  # per step: (mc, n_correct, n_total)


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (run seed, problem id, solution, step), stable across runs and machines."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------------------------
# Strategies: which prefixes to roll out, and the labels that follow


def strategy_steps(
    strategy: str, m: int, correct: bool
) -> Generator[list[int], Measure, list[tuple[float, int, int]]]:
    """Drive one solution of `m` steps: yields lists of prefix indices to roll out, receives their
    `{i: (n_correct, n_total)}`, returns `[(mc, n_correct, n_total)]` per step (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}", field="strategy")
    last = m - 1
    meas: Measure = {last: (int(bool(correct)), 1)}

    def mc(i: int) -> float:
        c, t = meas[i]
        return c / t if t else 0.0

    if strategy == "all":
        if last > 0:
            meas.update((yield list(range(last))))
        return [(mc(i), *meas[i]) for i in range(m)]

    if strategy == "early-stop":
        first_zero = None
        for i in range(last):
            meas.update((yield [i]))
            if meas[i][0] == 0:
                first_zero = i
                break
        if first_zero is None:
            return [(mc(i), *meas[i]) for i in range(m)]
        return [(mc(i), *meas[i]) if i <= first_zero else (0.0, 0, 0) for i in range(m)]

    # binary: lo..hi brackets the first zero; hi is a known zero (the verdict of a wrong solution)
    if correct:
        first_zero = m
    else:
        lo, hi = 0, last
        while lo < hi:
            mid = (lo + hi) // 2
            meas.update((yield [mid]))
            if meas[mid][0] == 0:
                hi = mid
            else:
                lo = mid + 1
        first_zero = lo
    out = []
    for i in range(m):
        if i > first_zero:
            out.append((0.0, 0, 0))
        elif i in meas:
            out.append((mc(i), *meas[i]))
        else:  # before the first zero: copy the nearest measured step after it (one exists before first_zero)
            out.append((mc(min(k for k in meas if k >= i)), 0, 0))
    return out


# ---------------------------------------------------------------------------------------------------------------
# One problem


def annotate_problem(
    problem: dict,
    *,
    solutions: int,
    rollouts: int,
    max_steps: int,
    strategy: str,
    seed: int,
    check: Callable[[str, dict], dict],
    split: Callable[[str, int], list[str]],
    sampling: dict,
    first_round: int | None = None,
    threshold: float = 0.0,
    count_tokens: Callable[[str], int] | None = None,
) -> Generator[list[GenRequest], list[list[str]], dict]:
    """Label one problem: yields the requests of each round, receives their texts, returns
    `{"solutions": [...], "rollouts", "rollouts_unparsed", "empty", "tokens", "requests"}` where each solution
    is `{"index", "response", "verdict", "steps", "labels", "rollouts", "tokens", "requests"}` (tokens and
    requests of its rollouts). Continuations are drawn in blocks of `first_round` (default 1 for the adaptive
    strategies, else K; sequential.py); `threshold` is the value-label threshold the adaptive strategies decide."""
    first_round = first_round or (1 if strategy in ADAPTIVE else rollouts)
    pid = problem["id"]
    req = GenRequest(problem, "", n=solutions, seed=derive_seed(seed, pid, "solutions"), **sampling)
    texts = (yield [req])[0]
    sols, empty = [], 0
    for j, text in enumerate(texts[:solutions]):
        steps = split(text, max_steps)
        if not steps:
            empty += 1
            continue
        verdict = check(text, problem)
        if strategy in ADAPTIVE:
            gen = adaptive_steps(strategy, len(steps), bool(verdict["correct"]), rollouts, threshold, first_round,
                                 strategy_steps)  # fmt: skip
        else:
            gen = strategy_steps(strategy, len(steps), bool(verdict["correct"]))
        sols.append({"index": j, "response": text, "verdict": verdict, "steps": steps, "gen": gen})

    def seed_of(sol: int, i: int, start: int) -> int:  # block 0 keeps the seed of one request per prefix
        return derive_seed(seed, pid, sol, i, *([start] if start else []))

    n_unparsed = yield from draw_rounds(problem, sols, rollouts, first_round, seed_of, check, sampling, count_tokens)
    totals = {k: sum(s[k] for s in sols) for k in ("rollouts", "tokens", "requests")}
    return {"solutions": sols, **totals, "rollouts_unparsed": n_unparsed, "empty": empty}


# ---------------------------------------------------------------------------------------------------------------
# Many problems in lock-step rounds


def run_rounds(
    problems: list[dict],
    policy: Policy,
    make_job: Callable[[dict], Generator],
    concurrency: int,
    on_done: Callable[[dict, dict], None],
    on_fail: Callable[[dict, Exception], None],
) -> None:
    """Run `make_job(problem)` generators `concurrency` problems at a time; each round is one `generate` call.

    A request the policy refuses (`PolicyError`) or bad input met during the work (`InputError`, e.g. a corrupt
    image) fails only its problem: the round is retried problem by problem to find it.
    """
    from .policy import PolicyError

    queue = iter(problems)
    active: dict[str, list] = {}  # id -> [problem, generator, pending requests]

    def step(pid: str, texts: list[list[str]] | None) -> None:
        prob, gen, _ = active[pid]
        try:
            active[pid][2] = next(gen) if texts is None else gen.send(texts)
        except StopIteration as e:
            del active[pid]
            on_done(prob, e.value)
        except (PolicyError, InputError) as e:
            del active[pid]
            on_fail(prob, e)

    while True:
        while len(active) < concurrency:
            prob = next(queue, None)
            if prob is None:
                break
            active[prob["id"]] = [prob, make_job(prob), None]
            step(prob["id"], None)
        if not active:
            return
        pids = list(active)
        flat = [r for pid in pids for r in active[pid][2]]
        try:
            outs = policy.generate(flat)
            per, k = {}, 0
            for pid in pids:
                n = len(active[pid][2])
                per[pid], k = outs[k : k + n], k + n
        except (PolicyError, InputError):
            per = {}
            for pid in pids:
                try:
                    per[pid] = policy.generate(active[pid][2])
                except (PolicyError, InputError) as e:
                    on_fail(active.pop(pid)[0], e)
        for pid in pids:
            if pid in per:
                step(pid, per[pid])


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
    from .policy import ANSWER_FORMATS, load_policy, parse_policy_spec
    from .schema import load_splitter

    # Everything the user can get wrong fails here, before any work.
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
    spec = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    if isinstance(policy, str):
        parse_policy_spec(policy)
    check, split = load_checker(checker), load_splitter(splitter)
    shard_i, shard_n = parse_shard(shard)
    todo, bad = load_problems(problems, (shard_i, shard_n), image_root)
    if bad and not todo:
        raise bad[0]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    run = {"policy": spec, "solutions": solutions, "rollouts": rollouts, "max_steps": max_steps}
    run.update(strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens)
    run.update(seed=seed, prompt=prompt, checker=checker, splitter=splitter)
    run.update(first_round=min(first_round, rollouts), threshold=float(threshold))
    lock = _lock(out_path)
    try:
        done, dropped = read_done(out_path, run)
        n_resumed = sum(p["id"] in done for p in todo)
        todo = [p for p in todo if p["id"] not in done]
        for e in bad[:10]:
            print(f"warning: skipping a bad problem: {e}", file=sys.stderr)
        if len(bad) > 10:
            print(f"warning: ... and {len(bad) - 10} more bad problems", file=sys.stderr)
        if dropped:
            print(f"resume: dropped {dropped} torn or incomplete line(s) of {out}", file=sys.stderr)
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
