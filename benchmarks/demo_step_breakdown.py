"""Where a demo's PRM is right and wrong: held-out step predictions by step type and position.

Reads a finished `visualprm demo --out DIR` and prints, for each (step type, position relative to the solution's
first error, kind of that error), the number of steps, the accuracy of "correct iff score >= 0.5" against the
synthetic ground truth, and how often the PRM called the step correct. Step types: `claim` (a reading of the
image), `arith` (a calculation), `final` (the final answer); positions: `before` the first error (or no error),
`first` (the first wrong step), `after` it.

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


if __name__ == "__main__":
    main()
