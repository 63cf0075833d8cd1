"""Where a demo's PRM is right and wrong: held-out step predictions by step type and position.

Reads a finished `visualprm demo --out DIR` and prints, for each (step type, position relative to the solution's
first error, kind of that error), the number of steps, the accuracy of "correct iff score >= 0.5" against the
synthetic ground truth, and how often the PRM called the step correct. Step types: `claim` (a reading of the
image), `arith` (a calculation), `final` (the final answer); positions: `before` the first error (or no error),
`first` (the first wrong step), `after` it. Then the wrong Best-of-8 (mean) picks by the first error of the
picked candidate: a misread (`perception`), a wrong result (`wrong result`), an operand that is not the value
claimed earlier (`misquoted operand`), or a final answer that does not repeat the last result (`final answer`).

    python benchmarks/demo_step_breakdown.py demo-out
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path


def breakdown(d: Path) -> dict:
    bench = [json.loads(line) for line in (d / "heldout" / "bench.jsonl").read_text().splitlines()]
    scores = [json.loads(line)["step_scores"] for line in (d / "bench" / "scores.jsonl").read_text().splitlines()]
    kinds = {}
    for line in (d / "heldout" / "annotated.jsonl").read_text().splitlines():
        r = json.loads(line)
        kinds[f"{r['problem_id']}-{r['solution_index']}"] = r["gold_error_kind"]
    tab: dict[tuple, Counter] = defaultdict(Counter)
    for b, s in zip(bench, scores):
        gold, kind = b["response"]["process_correctness"], kinds[b["id"]]
        first = next((i for i, g in enumerate(gold) if g < 0), None)
        for i, (step, g, sc) in enumerate(zip(b["response"]["steps"], gold, s)):
            typ = "final" if step.startswith("Final") else "arith" if "=" in step else "claim"
            rel = "before" if first is None or i < first else "first" if i == first else "after"
            tab[(typ, rel, kind[first] if rel != "before" else "-")][(g > 0, sc >= 0.5)] += 1
    return tab


def wrong_picks(d: Path) -> Counter:
    """The wrong picks of Best-of-N by the PRM's mean, by the first error of the picked candidate."""
    from visualprm.synthetic import step_error_kind

    problems = {r["id"]: r for r in map(json.loads, (d / "heldout" / "problems.jsonl").read_text().splitlines())}
    samples = {r["id"]: r for r in map(json.loads, (d / "bon" / "samples.jsonl").read_text().splitlines())}
    out: Counter = Counter()
    for pick in map(json.loads, (d / "bon" / "picks.jsonl").read_text().splitlines()):
        if samples[pick["id"]]["correct"][pick["best"]]:
            out["right"] += 1
            continue
        steps = pick["response"]
        kinds = step_error_kind(problems[pick["id"]], steps)
        first = next((i for i, k in enumerate(kinds) if k), None)
        if first is None:
            out["no wrong step"] += 1
        elif kinds[first] == "perception":
            out["perception"] += 1
        elif steps[first].startswith("Final"):
            out["final answer"] += 1
        else:
            x, sym, y, _, z = steps[first].rstrip(".").split()
            right = {"+": int(x) + int(y), "-": int(x) - int(y), "×": int(x) * int(y)}[sym] == int(z)
            out["misquoted operand" if right else "wrong result"] += 1
    return out


def main() -> None:
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")
    tab = breakdown(d)
    print(f"{'type':6} {'rel':6} {'first error':12} {'steps':>6} {'accuracy':>9} {'called correct':>15}")
    for key in sorted(tab):
        c = tab[key]
        n = sum(c.values())
        acc = (c[(True, True)] + c[(False, False)]) / n
        called = sum(v for (_, pred), v in c.items() if pred) / n
        print(f"{key[0]:6} {key[1]:6} {str(key[2]):12} {n:6d} {acc:9.3f} {called:15.3f}")
    picks = wrong_picks(d)
    print(
        f"\nBest-of-8 (mean): {picks.pop('right', 0)} right picks; wrong picks by the picked candidate's first error:"
    )
    for kind, n in picks.most_common():
        print(f"  {kind:18} {n:4d}")


if __name__ == "__main__":
    main()
