"""Monte-Carlo labelling strategies on the synthetic task: rollouts, tokens, requests and rounds spent, label quality.

Every strategy (`all`, `early-stop`, `binary` and their adaptive versions `adaptive`, `adaptive-early-stop`,
`adaptive-binary`) annotates the same generated problems with the scripted synthetic policy, with the same
`--first-round` (continuations per request) for all, so the adaptive strategies draw the same continuations as
the ones they shorten. The value labels (`mc > threshold` = "+") are compared with the hidden per-step truth
(`gold_step_correct`) and with `all`'s labels on the same steps. Prints a markdown table (for the README), the
machine it ran on, and last a line of JSON:
`{"<strategy>": {"rollouts", "tokens", "requests", "agreement_gold", "agreement_all"}, ...}`.

Tokens are the synthetic policy's whitespace words (it has no tokenizer); rounds are the policy's `generate`
calls per problem (problems one at a time: the latency a problem sees, in round trips).

    python benchmarks/annotate_strategies.py [--n 200] [--seed 1] [--rollouts 16] [--threshold 0] [--first-round 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from visualprm.montecarlo import STRATEGIES, annotate_file
from visualprm.schema import read_jsonl
from visualprm.synthetic import SyntheticPolicy, make_problems


class CountingPolicy(SyntheticPolicy):
    """The synthetic policy, counting its generate calls (rounds)."""

    calls = 0

    def generate(self, requests: list) -> list[list[str]]:
        self.calls += 1
        return super().generate(requests)


def labels_of(path: Path, tau: float) -> dict[str, list[bool]]:
    return {r["id"]: [st["mc"] > tau for st in r["steps"]] for _, r in read_jsonl(path)}


def label_quality(path: Path, tau: float, ref: dict[str, list[bool]]) -> dict:
    """Agreement of mc > tau with gold_step_correct and with `ref` (all's labels); precision/recall/F1 of "-"."""
    recs = [r for _, r in read_jsonl(path)]
    pairs = [(st["mc"] > tau, bool(g)) for r in recs for st, g in zip(r["steps"], r["gold_step_correct"])]
    same = [a == b for r in recs for a, b in zip((st["mc"] > tau for st in r["steps"]), ref[r["id"]])]
    tp = sum(not a and not b for a, b in pairs)  # "-" on a wrong step
    fp = sum(not a and b for a, b in pairs)
    fn = sum(a and not b for a, b in pairs)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    agree = sum(a == b for a, b in pairs) / len(pairs)
    return {"steps": len(pairs), "agreement": agree, "agreement_all": sum(same) / len(same), "f1": f1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="synthetic problems (200)")
    ap.add_argument("--seed", type=int, default=1, help="problem and run seed (1)")
    ap.add_argument("--rollouts", type=int, default=16, help="continuations per step prefix (16)")
    ap.add_argument("--solutions", type=int, default=4, help="solutions per problem (4)")
    ap.add_argument("--threshold", type=float, default=0.0, help="value labels: + iff mc > threshold (0)")
    ap.add_argument("--first-round", type=int, default=1, help="continuations per request, every strategy (1)")
    ap.add_argument("--out", default=None, help="keep the annotated files here (default: a temporary folder)")
    a = ap.parse_args(argv)
    tau = a.threshold
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        make_problems(out / "syn", n=a.n, seed=a.seed)
        rows, ref = [], {}
        for strategy in STRATEGIES:  # `all` first: the reference
            path = out / f"annotated-{strategy}.jsonl"
            if path.exists():
                path.unlink()
            pol = CountingPolicy()
            t0 = time.time()
            with contextlib.redirect_stdout(io.StringIO()):
                s = annotate_file(
                    str(out / "syn" / "problems.jsonl"),
                    pol,
                    str(path),
                    solutions=a.solutions,
                    rollouts=a.rollouts,
                    strategy=strategy,
                    seed=a.seed,
                    concurrency=1,
                    first_round=a.first_round,
                    threshold=tau,
                    progress=False,
                )
            ref = ref or labels_of(path, tau)
            rows.append((strategy, s, label_quality(path, tau, ref), pol.calls / a.n, time.time() - t0))
    base = rows[0][1]
    print(
        f"\nSynthetic task, {a.n} problems x {a.solutions} solutions, K = {a.rollouts} rollouts per prefix, "
        f"seed {a.seed}, --first-round {a.first_round}; labels: mc > {tau:g} is '+'; gold: gold_step_correct "
        f"({rows[0][2]['steps']} steps).\n"
    )
    print(
        "| strategy | rollouts | vs all | tokens | requests | rounds/problem | bounds | agreement gold | "
        "agreement all | '-' F1 | time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, s, q, rounds, dt in rows:
        print(
            f"| {strategy} | {s['rollouts']:,} | {100 * s['rollouts'] / base['rollouts']:.1f}% | {s['tokens']:,} | "
            f"{s['requests']:,} | {rounds:.1f} | {s['bounded_steps']:,} | {100 * q['agreement']:.1f}% | "
            f"{100 * q['agreement_all']:.1f}% | {100 * q['f1']:.1f}% | {dt:.1f}s |"
        )
    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    figures = {
        strategy: {
            "rollouts": s["rollouts"],
            "tokens": s["tokens"],
            "requests": s["requests"],
            "agreement_gold": q["agreement"],
            "agreement_all": q["agreement_all"],
        }
        for strategy, s, q, _, _ in rows
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
