"""Monte-Carlo labelling strategies on the synthetic task: rollouts spent and label quality.

For each strategy (`all`, `early-stop`, `binary`) it annotates the same generated problems with the scripted
synthetic policy and compares the value labels (`mc > 0` = "+") with the hidden per-step truth
(`gold_step_correct`). Prints a markdown table (for the README) and the machine it ran on.

    python benchmarks/annotate_strategies.py [--n 200] [--seed 1] [--rollouts 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from visualprm.montecarlo import STRATEGIES, annotate_file
from visualprm.schema import read_jsonl
from visualprm.synthetic import make_problems


def label_quality(path: Path) -> dict:
    """Agreement of mc > 0 with gold_step_correct, and precision/recall/F1 of "-" for the wrong steps."""
    pairs = [(st["mc"] > 0, bool(g)) for _, r in read_jsonl(path) for st, g in zip(r["steps"], r["gold_step_correct"])]
    agree = sum(a == b for a, b in pairs)
    tp = sum(not a and not b for a, b in pairs)  # "-" on a wrong step
    fp = sum(not a and b for a, b in pairs)
    fn = sum(a and not b for a, b in pairs)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"steps": len(pairs), "agreement": agree / len(pairs), "precision": prec, "recall": rec, "f1": f1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="synthetic problems (200)")
    ap.add_argument("--seed", type=int, default=1, help="problem and run seed (1)")
    ap.add_argument("--rollouts", type=int, default=16, help="continuations per step prefix (16)")
    ap.add_argument("--solutions", type=int, default=4, help="solutions per problem (4)")
    ap.add_argument("--out", default=None, help="keep the annotated files here (default: a temporary folder)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        make_problems(out / "syn", n=a.n, seed=a.seed)
        rows = []
        for strategy in STRATEGIES:
            path = out / f"annotated-{strategy}.jsonl"
            if path.exists():
                path.unlink()
            t0 = time.time()
            s = annotate_file(
                str(out / "syn" / "problems.jsonl"),
                "synthetic",
                str(path),
                solutions=a.solutions,
                rollouts=a.rollouts,
                strategy=strategy,
                seed=a.seed,
                progress=False,
            )
            rows.append((strategy, s, label_quality(path), time.time() - t0))
    base = rows[0][1]["rollouts"]
    print(
        f"\nSynthetic task, {a.n} problems x {a.solutions} solutions, K = {a.rollouts} rollouts per prefix, "
        f"seed {a.seed}; labels: mc > 0 is '+'; gold: gold_step_correct ({rows[0][2]['steps']} steps).\n"
    )
    head = "| strategy | rollouts | per solution | vs all | label agreement | '-' precision | '-' recall | '-' F1 |"
    print(head + " time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, s, q, dt in rows:
        print(
            f"| {strategy} | {s['rollouts']:,} | {s['rollouts'] / s['solutions']:.1f} | "
            f"{100 * s['rollouts'] / base:.0f}% | {100 * q['agreement']:.1f}% | {100 * q['precision']:.1f}% | "
            f"{100 * q['recall']:.1f}% | {100 * q['f1']:.1f}% | {dt:.1f}s |"
        )
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
