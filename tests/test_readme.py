"""The README's quick start runs as written (commands copied from the README, run in a temporary folder)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start[^\n]*\n+```bash\n(.*?)```", text, re.S)
    assert block, "README has no quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_block_names_real_commands():
    from visualprm.cli import build_parser

    commands = quickstart_commands()
    assert len(commands) == 7
    parser = build_parser()
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[0] == "visualprm"
        parser.parse_args(argv[1:])  # every option exists (argparse exits on an unknown one)


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for cmd in quickstart_commands():
        argv = [sys.executable, "-m", "visualprm", *shlex.split(cmd)[1:]]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
    scored = (tmp_path / "runs/qs/scored.jsonl").read_text().splitlines()
    assert len(scored) == 80  # 20 problems x 4 solutions, every one scored
    assert (tmp_path / "runs/qs/search/results.json").is_file()
