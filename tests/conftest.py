"""Shared test fixtures: offline, seeded, CPU; paths to ../shared/data."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(sub: str) -> Path:
    """A folder of ../shared/data, or skip the test with a reason when it is absent."""
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"{p} is absent (the project's shared data folder is not beside this checkout)")
    return p


def pytest_configure(config):
    # Tiny models are dominated by per-op overhead: one thread is faster than two, and leaves a core to the
    # servers some tests start.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def quick_demo_dir(tmp_path_factory):
    """`visualprm demo --quick`'s output folder, made once per session (tests/test_demo.py checks its figures;
    tests/test_readme.py runs the README's commands against it as `demo-out/`). `VISUALPRM_TEST_DEMO_OUT=DIR`
    names a finished `visualprm demo --quick --out DIR` to use instead (to rerun README sections quickly)."""
    from visualprm.cli import main

    given = os.environ.get("VISUALPRM_TEST_DEMO_OUT")
    if given and (Path(given) / "results.json").is_file():
        return Path(given)
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out
