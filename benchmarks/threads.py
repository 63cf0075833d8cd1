"""How many torch threads `visualprm score` and `bon` should use on a small CPU: wall time per thread count.

Builds the demo's kind of held-out data (synthetic problems, N candidates each from the synthetic policy), then
runs `visualprm score` (every candidate as one solution) and `visualprm bon` as separate processes with
`--torch-threads T` for each T, on the tiny random-weight model and on the demo-size model (the shipped base
model, a 2M-parameter Qwen2-VL). Rounds interleave the thread counts, so a busy machine slows them alike; the
median of `--rounds` counts. Wall time includes start-up and model loading, as a user sees it. OMP_NUM_THREADS
is removed from the children's environment (it would override nothing, but says what the user chose), and
OMP_WAIT_POLICY is left to `visualprm` (passive) unless a count ends in `a` (active) or `p` (passive). The last
line is one JSON object.

    nice -n 5 python benchmarks/threads.py                  # threads 1, 2, 4; 40 problems x 8 candidates
    python benchmarks/threads.py --threads 1,2a,2p --problems 100   # 2 threads, OMP_WAIT_POLICY=ACTIVE / PASSIVE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_data(d: Path, n_problems: int, n_candidates: int) -> tuple[Path, Path]:
    from visualprm.demo import candidates_from_annotated
    from visualprm.montecarlo import annotate_file
    from visualprm.schema import read_jsonl, write_jsonl
    from visualprm.synthetic import make_problems

    make_problems(d, n=n_problems, seed=7)
    ann = d / "annotated.jsonl"
    annotate_file(str(d / "problems.jsonl"), "synthetic", str(ann), solutions=n_candidates, rollouts=2, progress=False)
    cands = candidates_from_annotated([r for _, r in read_jsonl(ann)])
    write_jsonl(d / "candidates.jsonl", cands)
    sols = [
        {"id": f"{c['id']}-{i}", "images": c["images"], "question": c["question"], "steps": r}
        for c in cands
        for i, r in enumerate(c["responses"])
    ]
    write_jsonl(d / "solutions.jsonl", sols)
    return d / "solutions.jsonl", d / "candidates.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,4", help="comma list of thread counts; Np / Na: passive / active wait")
    ap.add_argument("--models", default="tiny,demo-size", help="comma list: tiny, demo-size")
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    threads = args.threads.split(",")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sols, cands = make_data(d, args.problems, args.candidates)
        from visualprm.tiny import make_tiny_model

        make_tiny_model(d / "tiny", arch="qwen2_vl")
        base = Path(__file__).resolve().parents[1] / "src" / "visualprm" / "assets" / "base-model"
        models = {"tiny": str(d / "tiny"), "demo-size": str(base)}
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
        cmds = {
            "score": lambda m, o: ["score", "--prm", m, "--input", str(sols), "--out", str(o / "s.jsonl")],
            "bon": lambda m, o: ["bon", "--prm", m, "--input", str(cands), "--out", str(o / "bon")],
        }
        times: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for mname, mpath in models.items():
                for cname, cmd in cmds.items():
                    for t in threads:
                        n = t.rstrip("pa")
                        argv = [sys.executable, "-m", "visualprm", *cmd(mpath, d), "--torch-threads", n]
                        policy = {"p": "PASSIVE", "a": "ACTIVE"}.get(t[-1])  # else visualprm's default: passive
                        run_env = {**env, "OMP_WAIT_POLICY": policy} if policy else env
                        t0 = time.perf_counter()
                        subprocess.run(argv, env=run_env, check=True, capture_output=True)
                        dt = time.perf_counter() - t0
                        times.setdefault(f"{mname} {cname} T={t}", []).append(dt)
                        print(f"round {r}: {mname:9s} {cname:5s} threads {t:3s}: {dt:6.1f}s", flush=True)
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    print(f"\nmachine: {_cpu_name()}, {os.cpu_count()} cores; {args.problems} problems x {args.candidates} candidates")
    for mname in models:
        for cname in cmds:
            row = [med[f"{mname} {cname} T={t}"] for t in threads]
            best = min(row)
            cells = "  ".join(f"T={t}: {x:5.1f}s ({x / best:.2f}x)" for t, x in zip(threads, row))
            print(f"{mname:9s} {cname:5s} {cells}")
    print(json.dumps({"machine": _cpu_name(), "cores": os.cpu_count(), "median_seconds": med}))


if __name__ == "__main__":
    main()
