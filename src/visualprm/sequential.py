"""Sequential Monte-Carlo rollouts for `annotate` (issue 18): continuations drawn in fixed blocks, and the
`adaptive*` strategies that stop drawing a step once its value label is decided.

Blocks. The K continuations of a step prefix are drawn in fixed blocks of N (`--first-round N`): `[0, N),
[N, 2N), ...`, one request with `n` = the block's size and a seed derived from (run seed, problem, solution,
step, block start); block 0 keeps the seed of the former one-request-per-step scheme, so N = K reproduces files
written before blocks existed (and is the default of the non-adaptive strategies). Under the same N every
strategy draws the same blocks (`all`, `early-stop`, `binary` send all of a prefix's blocks in one round), so
continuation j of a step is the same text under every strategy, whatever round it was drawn in: that is what
makes the adaptive labels exactly those of the strategy they shorten, run with the same N.

Sequential stopping. With `t` the largest count c with `c / K <= threshold` (`value_cut`), a step's value label
(`+` iff mc > threshold) is decided after n draws with c successes as soon as `c > t` (`+`, whatever the rest
give) or `c + (K - n) <= t` (`-`, even if all the rest succeed). At threshold 0, one success settles a step.
`adaptive` draws every prefix round by round, each round the fewest blocks that could decide it
(`draws_needed`: never past the point where it is decided, so N = 1 draws the fewest rollouts possible in
continuation order, at the most rounds), until each is decided: its value labels at the threshold equal
`all`'s exactly. `adaptive-early-stop` and `adaptive-binary` drive `early-stop` / `binary`
(which ask "is mc = 0?") the same way, drawing until both that question (`c > 0` or `n = K`) and the label are
decided: their labels equal those of `early-stop` / `binary` exactly.

A step stopped before K draws is a bound: it is written with `mc = n_correct / n_total` (the estimate from the
draws made, on the decided side of the threshold), `"mc_bound": true` and `"mc_range": [lo, hi]`, the interval
in which the K-rollout mc lies (`lo = c / K`, `hi = (c + K - n) / K`); an inferred step copied from a bound
(binary) carries the same marker. Value labels at any threshold outside the range are exact; soft and
advantage labels need the K-rollout mc, so `build-data` refuses bounds there.

This module neither sends requests nor checks answers (mclabel.py does); it is plain arithmetic on counts.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

ADAPTIVE = ("adaptive", "adaptive-early-stop", "adaptive-binary")


def blocks(k: int, first_round: int) -> list[tuple[int, int]]:
    """The (start, size) blocks of K continuations: [0, N), [N, 2N), ... (the last one cut at K)."""
    return [(start, min(first_round, k - start)) for start in range(0, k, max(1, first_round))]


def value_cut(threshold: float, k: int) -> int:
    """The largest success count c in 0..K whose mc = c / K is labelled `-` (c / K <= threshold); -1 if none."""
    return max((c for c in range(k + 1) if c / k <= threshold), default=-1)


def label_decided(c: int, n: int, k: int, t: int) -> bool:
    """Whether the value label is known after `n` of K draws with `c` successes (`t` from `value_cut`)."""
    return c > t or c + (k - n) <= t


def draws_needed(c: int, n: int, k: int, t: int, zero: bool) -> int:
    """The fewest further draws that can settle a step (0 when settled): its label and, with `zero`, whether
    mc = 0. Drawing exactly this many never draws past the point where the step is settled."""
    if n >= k:
        return 0
    done = label_decided(c, n, k, t)
    open_zero = zero and c == 0
    succ = max(0 if done else t + 1 - c, 1 if open_zero else 0)  # if every further draw succeeds
    fail = max(0 if done else c + k - n - t, k - n if open_zero else 0)  # if every further draw fails
    return min(succ, fail)


def mc_range(c: int, n: int, k: int) -> tuple[float, float]:
    """The interval the K-rollout mc lies in, after `n` draws with `c` successes."""
    return c / k, (c + k - n) / k


def base_strategy(strategy: str) -> str:
    """The strategy an adaptive one shortens: adaptive -> all, adaptive-X -> X; others are their own base."""
    if strategy == "adaptive":
        return "all"
    return strategy.removeprefix("adaptive-")


def adaptive_steps(
    strategy: str, m: int, correct: bool, k: int, threshold: float, first_round: int, base_steps: Callable
) -> Generator[dict[int, int], dict[int, tuple[int, int]], list[tuple]]:
    """Drive one solution of `m` steps under an adaptive strategy: yields `{prefix: continuations wanted in
    total}` (block ends), receives `{prefix: (n_correct, n_drawn)}` so far, returns the labels per step:
    `(mc, n_correct, n_total)` or, for a bound, `(mc, n_correct, n_total, lo, hi)`.

    `base_steps(strategy, m, correct)` is montecarlo's non-adaptive driver, fed the counts of decided steps."""
    base = base_strategy(strategy)
    ends = [s + n for s, n in blocks(k, first_round)]
    t = value_cut(threshold, k)
    zero = base != "all"  # early-stop and binary ask whether mc = 0
    counts: dict[int, tuple[int, int]] = {}

    def need(i: int) -> int:
        return draws_needed(*counts.get(i, (0, 0)), k, t, zero)

    inner = base_steps(base, m, correct)
    try:
        want = next(inner)
        while True:
            pending = [i for i in want if need(i)]
            while pending:  # each round: the fewest blocks that can settle each step
                before = {i: counts.get(i, (0, 0))[1] for i in pending}
                got = yield {i: next(e for e in ends if e >= before[i] + need(i)) for i in pending}
                counts.update(got)
                # a policy that returned nothing for a step would be asked again forever: stop there
                pending = [i for i in pending if need(i) and counts[i][1] > before[i]]
            want = inner.send({i: counts.get(i, (0, 0)) for i in want})
    except StopIteration as e:
        labels = e.value
    out: list[tuple] = []
    for i, (mc, c, n) in enumerate(labels):
        src = i if n else min((j for j in counts if j >= i), default=None)  # binary's copies: their source
        if src is not None and n == 0 and mc == 0.0 and counts[src][0] == 0:
            src = None  # an inferred zero (after the first zero) is the base strategy's assumption, not a bound
        if src is not None and src < m - 1 and 0 < counts[src][1] < k:
            out.append((mc, c, n, *mc_range(*counts[src], k)))
        else:
            out.append((mc, c, n))
    return out


def draw_rounds(
    problem: dict,
    sols: list[dict],
    k: int,
    first_round: int,
    seed_of: Callable[[int, int, int], int],
    check: Callable[[str, dict], dict],
    sampling: dict,
    count_tokens: Callable[[str], int] | None = None,
) -> Generator[list, list[list[str]], int]:
    """Run the strategy drivers `sol["gen"]` of one problem's solutions in lock-step rounds: yields each round's
    requests (one per block, seed `seed_of(solution, prefix, block start)`), receives their texts, checks them,
    and sets `labels`, `rollouts`, `tokens` and `requests` in every solution. Returns the unparsed rollouts.

    A driver yields prefix indices (all K continuations) or `{prefix: continuations wanted in total}` and
    receives `{prefix: (n_correct, n_drawn)}` so far."""
    from .policy import GenRequest
    from .steps import join_steps

    count_tokens = count_tokens or (lambda text: len(text.split()))
    plan = blocks(k, first_round)
    for s in sols:
        s.update(rollouts=0, tokens=0, requests=0, drawn={})
        _advance(s, None)
    n_unparsed = 0
    while active := [s for s in sols if "labels" not in s]:
        reqs, owners = [], []
        for s in active:
            want = s["want"] if isinstance(s["want"], dict) else dict.fromkeys(s["want"], k)
            for i, total in want.items():
                prefix = join_steps(s["steps"][: i + 1])
                drawn = s["drawn"].setdefault(i, [0, 0])[1]
                for start, size in plan:
                    if drawn <= start < total:
                        seed = seed_of(s["index"], i, start)
                        reqs.append(GenRequest(problem, prefix, n=size, seed=seed, **sampling))
                        owners.append((s, i, prefix))
        outs = yield reqs
        for (s, i, prefix), conts in zip(owners, outs):
            verdicts = [check(prefix + c, problem) for c in conts]
            s["drawn"][i][0] += sum(bool(v["correct"]) for v in verdicts)
            s["drawn"][i][1] += len(verdicts)
            n_unparsed += sum(not v.get("parsed", True) for v in verdicts)
            s["rollouts"] += len(conts)
            s["tokens"] += sum(count_tokens(c) for c in conts)
            s["requests"] += 1
        for s in active:
            _advance(s, {i: tuple(s["drawn"][i]) for i in s["want"]})
    for s in sols:
        del s["gen"], s["want"], s["drawn"]
    return n_unparsed


def _advance(sol: dict, measured: dict | None) -> None:
    try:
        sol["want"] = next(sol["gen"]) if measured is None else sol["gen"].send(measured)
    except StopIteration as e:
        sol["labels"], sol["want"] = e.value, []


def step_record(text: str, label: tuple) -> dict:
    """One step of an annotated line: text, mc, n_correct, n_total, and for a bound mc_bound and mc_range."""
    rec = {"text": text, "mc": label[0], "n_correct": label[1], "n_total": label[2]}
    if len(label) > 3:
        rec["mc_bound"], rec["mc_range"] = True, [label[3], label[4]]
    return rec


def token_counter(policy) -> Callable[[str], int]:
    """Generated tokens of a text: the policy's tokenizer where it has one (hf), else whitespace-separated words."""
    tok = getattr(policy, "tokenizer", None)
    if tok is not None and callable(getattr(tok, "encode", None)):
        return lambda text: len(tok.encode(text, add_special_tokens=False))
    return lambda text: len(text.split())


def check_bounds(steps: list[dict], labels: str, threshold: float, loc, orm: bool = False) -> None:
    """build-data: refuse bounded steps where the labels need the K-rollout mc (soft, advantage) or where the
    value label at `threshold` is not decided by the bound. `steps` are the raw step objects of one line."""
    if not isinstance(steps, list):
        return  # schema.annotated reports it
    used = range(max(len(steps) - 1, 0), len(steps)) if orm else range(len(steps))
    for i in used:
        s = steps[i]
        if not (isinstance(s, dict) and s.get("mc_bound")):
            continue
        rng = s.get("mc_range")
        ok = isinstance(rng, list) and len(rng) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
        if not ok or not 0.0 <= rng[0] <= rng[1] <= 1.0:
            raise loc.error(f"step {i}: mc_bound without a valid mc_range [lo, hi]", "steps")
        how = f"annotated with an adaptive strategy, {s.get('n_total')} rollouts drawn; mc in [{rng[0]:g}, {rng[1]:g}]"
        if labels in ("soft", "advantage"):
            raise loc.error(
                f"step {i}'s mc is a bound ({how}): {labels} labels need the mc of all K rollouts; "
                "use --labels value or annotate with a non-adaptive strategy",
                "steps",
            )
        if rng[0] <= threshold < rng[1]:
            raise loc.error(
                f"step {i}'s value label at threshold {threshold:g} is not decided by its bound ({how}); use the "
                "annotate run's --threshold (in its 'annotate' field)",
                "steps",
            )
