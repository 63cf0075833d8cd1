"""The default demo on several seeds: every figure of the README's demo table, per seed, with mean and range.

Runs `visualprm demo --seed S --out OUT/seedS` for each seed (a seed whose OUT/seedS/results.json exists is read,
not re-run; `--jobs 2` runs two at once, each on one torch thread), then prints one row per seed, the mean and the
range, the demo's targets met per seed, and last one JSON line. Seeds 101-105 were not used in development.

    python benchmarks/demo_seeds.py --out runs/seeds --seeds 101,102,103,104,105 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COLUMNS = [
    ("pass@1", "bon", "pass_at_1", 100),
    ("majority", "bon", "majority", 100),
    ("PRM mean", "bon", "prm_mean", 100),
    ("PRM min", "bon", "prm_min", 100),
    ("PRM max", "bon", "prm_max", 100),
    ("oracle", "bon", "oracle", 100),
    ("step F1", "steps", "macro_f1", 1),
    ("perception", "steps", "macro_f1_perception", 1),
    ("reasoning", "steps", "macro_f1_reasoning", 1),
    ("text-only", "ref", "macro_f1", 1),
    ("text-only perc.", "ref", "macro_f1_perception", 1),
    ("seconds", "", "seconds", 1),
]


def run_one(out: Path, seed: int, extra: list[str]) -> Path:
    d = out / f"seed{seed}"
    if not (d / "results.json").is_file():
        cmd = [sys.executable, "-m", "visualprm", "demo", "--seed", str(seed), "--out", str(d), *extra]
        with open(out / f"seed{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return d


def figures(d: Path) -> dict:
    res = json.loads((d / "results.json").read_text())
    ref = json.loads((d / "details.json").read_text())["text_only_reference"]
    row = {}
    for name, part, key, scale in COLUMNS:
        v = res[key] if not part else (ref if part == "ref" else res[part])[key]
        row[name] = round(v * scale, 3 if scale == 1 and name != "seconds" else 1)
    curve = res["bon"]["curve"]
    row["curve_prm_mean"] = [round(100 * v, 1) for v in curve.get("prm_mean", [])]
    row["curve_majority"] = [round(100 * v, 1) for v in curve.get("majority_vote", [])]
    return row


def targets(r: dict) -> dict:
    """The demo's targets (issue 17), each True/False for one seed."""
    return {
        "mean>=maj+5": r["PRM mean"] >= r["majority"] + 5,
        "mean>=pass1+15": r["PRM mean"] >= r["pass@1"] + 15,
        "F1>=0.80": r["step F1"] >= 0.80,
        "perc>=0.70": r["perception"] >= 0.70,
        "gap>=0.10": r["perception"] >= r["text-only perc."] + 0.10,
        "mean>=min>max": r["PRM mean"] >= r["PRM min"] > r["PRM max"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("--seeds", default="101,102,103,104,105")
    ap.add_argument("--jobs", type=int, default=1, help="demos run at once (each on one torch thread)")
    ap.add_argument("--demo-args", default="", help="extra arguments for visualprm demo, e.g. '--quick'")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    with ThreadPoolExecutor(a.jobs) as pool:
        dirs = list(pool.map(lambda s: run_one(out, s, a.demo_args.split()), seeds))
    rows = {s: figures(d) for s, d in zip(seeds, dirs)}
    names = [c[0] for c in COLUMNS]
    print("| seed | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for s, r in rows.items():
        print(f"| {s} | " + " | ".join(str(r[n]) for n in names) + " |")
    for label, fn in (("mean", lambda v: sum(v) / len(v)), ("range", None)):
        cells = []
        for n in names:
            v = [r[n] for r in rows.values()]
            cells.append(f"{min(v)}-{max(v)}" if fn is None else f"{fn(v):.3f}" if max(v) <= 1 else f"{fn(v):.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    met = {s: targets(r) for s, r in rows.items()}
    print("\ntargets met per seed:")
    for k in next(iter(met.values())):
        hits = [int(m[k]) for m in met.values()]
        print(f"  {k:16} {sum(hits)}/{len(hits)}  " + " ".join(map(str, hits)))
    margins = {
        s: (round(r["PRM mean"] - r["majority"], 1), round(r["PRM mean"] - r["pass@1"], 1)) for s, r in rows.items()
    }
    print("PRM mean minus majority / pass@1 per seed:", margins)
    print(json.dumps({"rows": rows, "targets": met}))


if __name__ == "__main__":
    main()
