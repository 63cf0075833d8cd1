"""Monte-Carlo step labels of one problem, and many problems in lock-step rounds (REFERENCE.md §3, §5).

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

Every request's seed is derived from the run seed, the problem id and the (solution, step, block) it serves
(`derive_seed`), so results do not depend on `--concurrency`, on the shard, on the strategy (strategies with the
same `first_round` share the rollouts they both make) or on where a run was interrupted. `run_rounds` processes
problems `concurrency` at a time in lock-step rounds: each round sends every pending request of those problems
to the policy in one `generate` call (batched in hf/vllm, concurrent HTTP in openai).

This module does not read or write files, resume, lock or summarise (montecarlo.py: the `annotate` job), train
or score; it does not talk HTTP itself (the policy does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from typing import Any

from .policy import GenRequest, Policy
from .schema import InputError
from .sequential import ADAPTIVE, adaptive_steps, draw_rounds

STRATEGIES = ("all", "early-stop", "binary", *ADAPTIVE)

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
