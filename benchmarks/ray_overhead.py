"""Ray's overhead on one machine: `annotate` plain vs `annotate --ray local`, the same job, one run.

Generates N synthetic problems, runs the plain command and the Ray command (each a fresh process, so the Ray
figure includes starting a local Ray), checks that the lines are equal (sorted), then kills a Ray driver with
SIGKILL once some problems are written, re-runs it, and checks the lines again (no loss, no duplicate). Prints
the wall times, the ratio and the machine.

    python benchmarks/ray_overhead.py [--n 60] [--solutions 4] [--rollouts 8] [--seed 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visualprm.synthetic import make_problems


def _run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.time() - t0, p.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="synthetic problems (60)")
    ap.add_argument("--solutions", type=int, default=4, help="solutions per problem (4)")
    ap.add_argument("--rollouts", type=int, default=8, help="rollouts per step prefix (8)")
    ap.add_argument("--seed", type=int, default=1, help="seed (1)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args(argv)
    d = Path(a.out or tempfile.mkdtemp(prefix="ray-overhead-"))
    make_problems(d / "syn", n=a.n, seed=a.seed)
    base = [sys.executable, "-m", "visualprm", "annotate", "--problems", str(d / "syn" / "problems.jsonl")]
    base += ["--policy", "synthetic", "--solutions", str(a.solutions), "--rollouts", str(a.rollouts)]
    base += ["--seed", str(a.seed)]
    for f in ("plain.jsonl", "ray.jsonl", "killed.jsonl"):
        (d / f).unlink(missing_ok=True)
    t_plain, _ = _run([*base, "--out", str(d / "plain.jsonl")])
    t_ray, out = _run([*base, "--out", str(d / "ray.jsonl"), "--ray", "local"])
    plain = sorted((d / "plain.jsonl").read_text().splitlines())
    same = sorted((d / "ray.jsonl").read_text().splitlines()) == plain
    connect = next((x for x in out.splitlines() if x.strip().startswith("ray:")), "").strip()

    killed = d / "killed.jsonl"
    proc = subprocess.Popen([*base, "--out", str(killed), "--ray", "local"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    while proc.poll() is None:
        if killed.exists() and killed.read_text().count("\n") >= len(plain) // 4:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    n_killed = len(killed.read_text().splitlines()) if killed.exists() else 0
    _run([*base, "--out", str(killed), "--ray", "local"])
    lines = killed.read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    resumed_same = sorted(lines) == plain and len(ids) == len(set(ids))

    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}, load {os.getloadavg()}")
    print(f"job: {a.n} synthetic problems, {a.solutions} solutions, {a.rollouts} rollouts ({len(plain)} lines)")
    print(f"plain annotate:        {t_plain:6.1f}s")
    print(f"annotate --ray local:  {t_ray:6.1f}s  ({t_ray / t_plain:.1f}x the plain run; {connect})")
    print(f"lines equal (sorted): {same}")
    was_killed = proc.returncode == -signal.SIGKILL
    print(f"SIGKILL after {n_killed} lines (killed: {was_killed}) + re-run: equal, no duplicate: {resumed_same}")
    return 0 if same and resumed_same else 1


if __name__ == "__main__":
    sys.exit(main())
