"""Best-of-N curves past the demo's N = 8: a finished demo's PRM on more candidates per held-out problem.

The demo samples 8 candidates per held-out problem, so its curve over N stops at 8, too early to see whether
majority voting flattens while the PRM keeps rising (the paper's scaling claim, N = 8 to 128). This script takes
finished `visualprm demo --out DIR` folders, samples `--n` candidates for each of their held-out problems with the
same synthetic policy (`annotate --strategy binary --rollouts 4`, as the demo), runs `bon` with each folder's
trained PRM, and prints, per folder and as the mean over folders, the curves of PRM mean/min/max, the
PRM-weighted vote and majority voting at N = 1, 2, 4, ..., n (each point the mean over 32 seeded random subsets).
Outputs go to OUT/<folder name>/ (candidates, bon/); a folder whose bon/results.json exists is read, not re-run.

    python benchmarks/demo_curve.py runs/seeds/seed101 runs/seeds/seed102 --n 32 --out runs/curve32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

METHODS = ("prm_mean", "prm_min", "prm_max", "prm_weighted_vote", "majority_vote", "random", "oracle")


def curve(demo: Path, n: int, out: Path, seed: int) -> dict:
    """The Best-of-N curves of `demo`'s PRM on `n` fresh candidates per held-out problem (read from OUT if done)."""
    from visualprm.bon import bon_file
    from visualprm.demo import heldout_candidates
    from visualprm.schema import InputError
    from visualprm.scoring import Scorer

    res = out / "bon" / "results.json"
    if not res.is_file():
        for need in ("prm/config.json", "heldout/problems.jsonl"):
            if not (demo / need).is_file():
                raise InputError(f"not a finished `visualprm demo --out` folder: no {need}", demo)
        heldout_candidates(
            str(demo / "heldout" / "problems.jsonl"),
            out / "annotated.jsonl",
            out / "candidates.jsonl",
            n,
            seed,
            progress=True,
        )
        prm = str(demo / "prm")
        bon_file(
            prm,
            str(out / "candidates.jsonl"),
            str(out / "bon"),
            seed=seed,
            engine=Scorer.from_pretrained(prm, batch_size=16),
            report=False,
        )
    curves = json.loads(res.read_text())["curves"]
    if curves["n"][-1] != n:
        raise InputError(f"holds a finished run with N = {curves['n'][-1]}, not --n {n}: give another --out", out)
    return curves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demos", nargs="+", help="finished demo output folders (each with prm/ and heldout/)")
    ap.add_argument("--n", type=int, default=32, help="candidates per problem (default 32)")
    ap.add_argument("--out", required=True, help="folder for the candidates and bon outputs")
    ap.add_argument("--seed", type=int, default=7, help="sampling seed, other than the demo's (default 7)")
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.torch_threads)
    from visualprm.schema import InputError

    rows = {}
    for d in map(Path, args.demos):
        t = time.time()
        try:
            c = curve(d, args.n, Path(args.out) / d.name, args.seed)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{d.name}: {time.time() - t:.0f}s", flush=True)
        rows[d.name] = {"n": c["n"], **{m: [round(100 * v, 1) for v in c[m]] for m in METHODS if m in c}}
    sizes = next(iter(rows.values()))["n"]
    head = "| folder | method | " + " | ".join(f"N={k}" for k in sizes) + " |"
    print(head + "\n|" + "---|" * (len(sizes) + 2))
    for name, r in rows.items():
        for m in METHODS:
            if m in r:
                print(f"| {name} | {m} | " + " | ".join(f"{v:.1f}" for v in r[m]) + " |")
    if len(rows) > 1:
        for m in METHODS:
            vals = [r[m] for r in rows.values() if m in r]
            mean = [sum(col) / len(col) for col in zip(*vals)]
            print(f"| mean | {m} | " + " | ".join(f"{v:.1f}" for v in mean) + " |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
