"""Spread of the quick demo's step figures over seeds and torch threads, by held-out size.

For each (seed, threads) it runs `visualprm demo --quick` with a large held-out set once, then recomputes the step
macro-F1 (overall, perception) with the images and with blank images on the first k held-out problems for several k
(problem i of the held-out set depends only on (seed, i), so the first k problems are exactly a run with k held-out
problems). Threads 1 vs 2 stands in for the floating-point differences between CPUs. Prints a table and, last, one
JSON line.

    python benchmarks/demo_spread.py --out runs/spread --seeds 0,1,2 --threads 1,2 --heldout 200 --ks 40,80,120,160,200
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(rows: list[tuple[list[int], list[float]]]) -> float:
    """VisualProcessBench macro-F1 pooled over steps (label 0 left out, correct iff score >= 0.5)."""
    tp = fp = fn = tn = 0
    for labels, scores in rows:
        for lab, s in zip(labels, scores):
            if lab == 0:
                continue
            pred, pos = s >= 0.5, lab > 0
            tp += pred and pos
            fp += pred and not pos
            fn += (not pred) and pos
            tn += (not pred) and not pos
    return (_f1(tp, fp, fn) + _f1(tn, fn, fp)) / 2


def figures(run: Path, k: int) -> dict:
    out = {}
    for name, folder in (("img", "bench"), ("blank", "bench_blank")):
        recs = [json.loads(line) for line in (run / folder / "samples.jsonl").read_text().splitlines()]
        recs = [r for r in recs if int(r["id"].rsplit("-", 1)[0].rsplit("-", 1)[1]) < k]
        rows = [(r["step_labels"], r["step_scores"]) for r in recs]
        per = [(r["step_labels"], r["step_scores"]) for r in recs if r["source"] in ("correct", "perception")]
        out[name] = {"macro_f1": macro_f1(rows), "perception": macro_f1(per)}
    return {
        "gap": out["img"]["macro_f1"] - out["blank"]["macro_f1"],
        "gap_perception": out["img"]["perception"] - out["blank"]["perception"],
        "macro_f1": out["img"]["macro_f1"],
        "perception": out["img"]["perception"],
        "blank_macro_f1": out["blank"]["macro_f1"],
        "blank_perception": out["blank"]["perception"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo-spread")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--ks", default="40,80,120,160,200")
    ap.add_argument("--reuse", action="store_true", help="only recompute from finished runs in --out")
    a = ap.parse_args()
    from visualprm.demo import run_demo

    ks = [int(x) for x in a.ks.split(",")]
    table = {}
    for seed in [int(x) for x in a.seeds.split(",")]:
        for th in [int(x) for x in a.threads.split(",")]:
            run = Path(a.out) / f"s{seed}-t{th}"
            if not (a.reuse and (run / "results.json").is_file()):
                run_demo(str(run), quick=True, seed=seed, sizes={"heldout_problems": a.heldout, "torch_threads": th})
            det = json.loads((run / "details.json").read_text())
            table[f"s{seed}-t{th}"] = {
                "stage_seconds": det["stage_seconds"],
                "seconds": json.loads((run / "results.json").read_text())["seconds"],
                **{str(k): figures(run, k) for k in ks},
            }
            print(f"s{seed}-t{th}", json.dumps(table[f"s{seed}-t{th}"]), flush=True)
    print("\nk    metric           min     mean    max     sd      (over runs)")
    summary = {}
    for k in ks:
        for m in ("gap", "gap_perception", "macro_f1", "perception", "blank_macro_f1", "blank_perception"):
            v = [t[str(k)][m] for t in table.values()]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            summary[f"{k}:{m}"] = {"min": min(v), "mean": statistics.mean(v), "max": max(v), "sd": sd}
            print(f"{k:<4} {m:<16} {min(v):.4f}  {statistics.mean(v):.4f}  {max(v):.4f}  {sd:.4f}")
    print(json.dumps({"runs": table, "summary": summary}))


if __name__ == "__main__":
    main()
