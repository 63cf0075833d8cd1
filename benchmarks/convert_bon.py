"""Best-of-8 scoring of a converted checkpoint: visualprm (prefix-shared and plain batching) vs the official InternVL
code scoring one candidate at a time with the pixel values computed once (as `select_best_response` does).

A tiny Qwen2-layout original checkpoint (released geometry: 448-pixel tiles, 256 tokens per tile), a 4-tile
image (900x300: 3 tiles + thumbnail), 8 candidates of 6 steps, one CPU thread; one run, ratios printed. Skips
without ../shared/reference (the official code). Usage: `python benchmarks/convert_bon.py [--repeats N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import internvl_oracle
    import numpy as np
    import torch
    from PIL import Image

    from visualprm.convert import convert
    from visualprm.internvl_original import write_original
    from visualprm.scoring import Scorer

    if not (internvl_oracle.REF / "internvl").is_dir():
        print(f"skipped: {internvl_oracle.REF} is absent (the official InternVL code)")
        return 0
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    src = write_original(tmp / "orig", "qwen2", seed=3)
    convert(src, tmp / "conv")
    off = internvl_oracle.Official(src)
    sc = Scorer.from_pretrained(str(tmp / "conv"), batch_size=8)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 900, 3), dtype=np.uint8))
    q = "What is the total length of the three bars shown in the chart? Answer with a number."
    cands = [
        [f"Step {k}: the bar {k} is {3 + i + k} units long, so far {k * (3 + i)}." for k in range(6)] for i in range(8)
    ]

    def official():
        pv = internvl_oracle.pixel_values(img, off.max_num)  # once, as select_best_response does
        flags = torch.ones(pv.shape[0], 1, dtype=torch.long)
        plus, minus = (off.tok.convert_tokens_to_ids(x) for x in ("+", "-"))
        out = []
        for steps in cands:
            query = off.prompt(q, steps, pv.shape[0])
            ids = off.tok(query, return_tensors="pt").input_ids
            pos = [i - 1 for i, t in enumerate(ids[0].tolist()) if t == plus]
            with torch.no_grad():
                lg = off.model(pixel_values=pv, input_ids=ids, image_flags=flags).logits[0, pos][:, [plus, minus]]
            out.append(torch.softmax(lg, -1)[:, 0].tolist())
        return out

    def shared():
        return sc.score_groups([{"question": q, "images": [img], "solutions": cands}])[0]

    def plain():
        return sc.score_steps([{"question": q, "images": [img], "steps": s} for s in cands])

    def best(fn):
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t0)
        return min(times), res

    t_off, r_off = best(official)
    t_sh, r_sh = best(shared)
    t_pl, r_pl = best(plain)
    diff = max(abs(x - y) for r in (r_sh, r_pl) for a_, b_ in zip(r, r_off) for x, y in zip(a_, b_))
    print("machine: 2-core AMD EPYC VM (shared, loaded), 1 torch thread; tiny Qwen2-layout checkpoint, 4 tiles")
    print(f"official one at a time: {t_off:.2f}s; visualprm prefix-shared: {t_sh:.2f}s; plain batching: {t_pl:.2f}s")
    print(
        f"speed-up: prefix-shared {t_off / t_sh:.1f}x, plain batching {t_off / t_pl:.2f}x; max |score diff| {diff:.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
