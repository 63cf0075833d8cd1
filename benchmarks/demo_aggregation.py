"""Why a demo's Best-of-8 by the PRM's min beats its mean: the problems where exactly one of the two is right.

Reads finished `visualprm demo --out DIR` folders (their bon/picks.jsonl, which holds every candidate's step scores,
and bon/samples.jsonl) and prints, per folder and pooled:
- the accuracy of the argmax of each aggregation (mean, min, max) with ties to the lower index, as `bon` picks (the
  figures match bon/results.json), and the expected accuracy with ties broken uniformly at random;
- of the problems where exactly one of mean and min picks a right candidate, how many each wins, and of the wins
  of min, how many are ties: min's best value is shared by a right and a wrong candidate (both hold the same
  lowest step, such as the same first reading; the synthetic policy's steps are templated, so candidates share
  steps word for word), so min picks among them by index, a draw in which the copies of the right answer count
  as votes, while the mean ranks them by their other steps;
- of mean's wrong picks in the problems min wins, how many score the first step where they differ from min's right
  pick at least as high as that pick's step there (a missed error that outranks the right answer).

    python benchmarks/demo_aggregation.py runs/seeds/seed101 runs/seeds/seed102
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

HOWS = ("mean", "min", "max")


def analyse(d: Path) -> Counter:
    """Counts for one finished demo (see the module docstring); `problems` is their number."""
    from visualprm.bon import select_best
    from visualprm.schema import read_jsonl
    from visualprm.scoring import aggregate

    samples = {r["id"]: r for _, r in read_jsonl(d / "bon" / "samples.jsonl")}
    c: Counter = Counter()
    for _, pick in read_jsonl(d / "bon" / "picks.jsonl"):
        right, ss = samples[pick["id"]]["correct"], pick["step_scores"]
        c["problems"] += 1
        best = {}
        for how in HOWS:
            agg = [aggregate(s, how) for s in ss]
            best[how] = select_best(agg)
            c[how] += right[best[how]]
            tied = [i for i, a in enumerate(agg) if a == agg[best[how]]]
            c[f"{how}_random_ties"] += sum(right[i] for i in tied) / len(tied)
        i_mean, i_min = best["mean"], best["min"]
        if right[i_mean] == right[i_min]:
            continue
        if right[i_mean]:
            c["mean_only"] += 1
            continue
        c["min_only"] += 1
        top = min(ss[i_min])
        if any(not right[i] and min(s) == top for i, s in enumerate(ss)):
            c["min_only_tie"] += 1
            c["min_only_tie_first_step"] += ss[i_min].index(top) == 0
        w, r = ss[i_mean], ss[i_min]
        k = next((k for k, (a, b) in enumerate(zip(w, r)) if a != b), None)
        if k is not None:
            c["mean_wrong_outranks_at_divergence"] += w[k] >= r[k]
    return c


def format_counts(name: str, c: Counter) -> str:
    n = c["problems"]
    accs = ", ".join(f"{h} {100 * c[h] / n:.1f} ({100 * c[h + '_random_ties'] / n:.1f})" for h in HOWS)
    return (
        f"{name}: {n} problems; Best-of-8 % (ties at random): {accs}; exactly one right: mean {c['mean_only']}, "
        f"min {c['min_only']}, of which min tied with a wrong candidate {c['min_only_tie']} "
        f"(at the first step {c['min_only_tie_first_step']}); mean's wrong pick scores the step where it "
        f"leaves min's right one at least as high: {c['mean_wrong_outranks_at_divergence']} of {c['min_only']}"
    )


def main(argv: list[str] | None = None) -> int:
    from visualprm.schema import InputError

    dirs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)] or [Path("demo-out")]
    total: Counter = Counter()
    for d in dirs:
        if not (d / "bon" / "picks.jsonl").is_file():
            print(f"error: {d}: not a finished `visualprm demo --out` folder (no bon/picks.jsonl)", file=sys.stderr)
            return 2
        try:
            c = analyse(d)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        total.update(c)
        print(format_counts(str(d), c))
    if len(dirs) > 1:
        print(format_counts("pooled", total))
    print(json.dumps({"pooled": dict(total)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
