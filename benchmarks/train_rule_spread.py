"""Spread of tests/test_train.py's trained-model assertions (the tiny PRM that learns "wrong iff 'purple'").

Trains the test's configuration for several training seeds and torch thread counts (threads stand in for the
floating-point differences between CPUs) and prints, per run, the held-out macro-F1 (the test asserts >= 0.9) and the
smallest distance to the 0.5 threshold of the scores the test checks step by step; last line JSON.

    python benchmarks/train_rule_spread.py --seeds 0,1,2,3,4 --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    import torch
    from test_train import _cfg, items_of, rule_data

    from visualprm.scoring import Scorer
    from visualprm.tiny import make_tiny_model
    from visualprm.train import train

    tmp = Path(tempfile.mkdtemp())
    tiny = make_tiny_model(tmp / "tiny", arch="qwen2_vl", seed=0)
    rule = rule_data(tmp / "rule", 120)
    items = items_of(rule, 8)
    runs = {}
    for seed in [int(x) for x in a.seeds.split(",")]:
        for th in [int(x) for x in a.threads.split(",")]:
            out = tmp / f"s{seed}-t{th}"
            cfg = _cfg(rule, tiny, out, lr=3e-3, epochs=4, batch_size=8, eval_split=0.2, save_steps=1000, seed=seed)
            cfg.torch_threads = th
            res = train(cfg)
            torch.set_num_threads(1)
            ev = json.loads((out / "eval.json").read_text())
            rows = Scorer(res["model"], res["processor"], system_prompt=False).score_steps(items)
            ok = all([s >= 0.5 for s in r] == ["purple" not in st for st in it["steps"]] for it, r in zip(items, rows))
            margin = min(abs(s - 0.5) for r in rows for s in r)
            runs[f"s{seed}-t{th}"] = {"macro_f1": ev["metrics"]["macro_f1"], "rule_exact": ok, "min_dist": margin}
            print(f"s{seed}-t{th}", json.dumps(runs[f"s{seed}-t{th}"]), flush=True)
    f1 = [r["macro_f1"] for r in runs.values()]
    print(
        f"macro-F1 min {min(f1):.4f} max {max(f1):.4f}; rule exact in {sum(r['rule_exact'] for r in runs.values())}"
        f"/{len(runs)}; smallest |score-0.5| {min(r['min_dist'] for r in runs.values()):.4f}"
    )
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
