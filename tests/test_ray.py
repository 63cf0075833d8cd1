"""`--ray`: annotate, score and bon on a local Ray (2 CPUs, started once for the module) equal the plain commands;
a SIGKILLed driver resumes without loss or duplicates; a problem with a bad image is skipped and counted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install 'visualprm[ray]')")

from visualprm.cli import main  # noqa: E402
from visualprm.montecarlo import annotate_file  # noqa: E402
from visualprm.ray_jobs import annotate_ray  # noqa: E402
from visualprm.synthetic import make_problems  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    make_problems(d, n=12, seed=2)
    return d / "problems.jsonl"


def sorted_lines(path) -> list[str]:
    return sorted(Path(path).read_text().splitlines())


@pytest.mark.parametrize("strategy", ["all", "early-stop", "binary", "adaptive-early-stop"])
def test_annotate_ray_equals_plain(cluster, syn, tmp_path, strategy, capsys):
    # one block of 12 problems, so one actor (each actor costs seconds to start here; the SIGKILL test has two)
    opts = ["--policy", "synthetic", "--rollouts", "4", "--seed", "3", "--strategy", strategy, "--concurrency", "12"]
    plain, rayed = tmp_path / "plain.jsonl", tmp_path / "ray.jsonl"
    assert main(["annotate", "--problems", str(syn), "--out", str(plain), *opts]) == 0
    assert main(["annotate", "--problems", str(syn), "--out", str(rayed), *opts, "--ray", "local"]) == 0
    out = capsys.readouterr().out
    assert sorted_lines(rayed) == sorted_lines(plain) and len(sorted_lines(plain)) == 48
    assert "annotated 12 problems" in out and "stage workers: 12 problems" in out and "1 actor(s)" in out
    # re-running resumes: nothing to do, nothing written twice
    assert main(["annotate", "--problems", str(syn), "--out", str(rayed), *opts, "--ray", "local"]) == 0
    assert "resumed 12 finished problems" in capsys.readouterr().out and sorted_lines(rayed) == sorted_lines(plain)


def test_unreachable_address_is_one_line_exit_2(syn, tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "o.jsonl"
    argv = [
        "annotate",
        "--problems",
        str(syn),
        "--policy",
        "synthetic",
        "--out",
        str(out),
        "--ray",
        f"127.0.0.1:{port}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--ray 127.0.0.1:{port}: no Ray cluster answers there" in err and not out.exists()
    assert main([*argv[:-1], "nonsense"]) == 2 and "expected local, auto, HOST:PORT" in capsys.readouterr().err


SLOW_CHECKER = """
import time
from visualprm.answers import check as builtin

def check(response, record):
    time.sleep(0.001)
    return builtin(response, record)
"""


@pytest.mark.slow
def test_driver_sigkill_then_rerun_gives_the_same_lines(cluster, tmp_path):
    make_problems(tmp_path / "syn", n=24, seed=1)
    (tmp_path / "slowcheck.py").write_text(SLOW_CHECKER)
    probs = str(tmp_path / "syn" / "problems.jsonl")
    kw = {"rollouts": 4, "seed": 1, "concurrency": 1, "checker": f"{tmp_path / 'slowcheck.py'}:check"}
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    annotate_file(probs, "synthetic", str(ref), progress=False, **kw)
    opts = [f"--{k}={v}" for k, v in kw.items()]
    # a second driver joins the module's cluster by its address, and is killed once some problems are written
    cmd = [sys.executable, "-m", "visualprm", "annotate", "--problems", probs, "--policy", "synthetic", *opts]
    cmd += ["--out", str(out), "--ray", cluster]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 8:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    n_killed = len(out.read_text().splitlines())
    assert 8 <= n_killed < 96  # really killed midway
    s = annotate_ray(probs, "synthetic", str(out), address=cluster, progress=False, **kw)
    assert s["resumed_problems"] + s["this_run"]["problems_done"] == 24 and s["this_run"]["problems_done"] > 0
    assert sorted_lines(out) == sorted_lines(ref)
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 96


POLICY = """
import os
from pathlib import Path
from visualprm.schema import Loc, load_image
from visualprm.synthetic import SyntheticPolicy

MARK = Path(__file__).with_name("crashed")

class ImagePolicy(SyntheticPolicy):
    # the synthetic policy, but it opens every image it is shown (as a real policy does), and its whole worker
    # process dies the first time it sees one problem (Ray restarts it and retries the block)
    def generate(self, requests):
        if not MARK.exists() and any(r.problem["id"] == "{crash_on}" for r in requests):
            MARK.write_text("yes")
            os._exit(1)
        for r in requests:
            for p in r.problem["images"]:
                load_image(p, Loc())
        return super().generate(requests)

def make():
    return ImagePolicy()
"""


def test_bad_image_skipped_and_counted_dead_worker_retried(cluster, syn, tmp_path, capsys):
    recs = [json.loads(x) for x in syn.read_text().splitlines()]
    for r in recs:
        r["images"] = [str(syn.parent / p) for p in r["images"]]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    recs[4]["images"] = [str(tmp_path / "corrupt.png")]  # fails while it is worked on
    recs[7]["images"] = [str(tmp_path / "missing.png")]  # fails when the problems are read
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "policy.py").write_text(POLICY.replace("{crash_on}", recs[9]["id"]))
    spec = f"py:{tmp_path / 'policy.py'}:make"
    kw = {"rollouts": 2, "seed": 0, "concurrency": 4, "progress": False}
    b = annotate_ray(str(probs), spec, str(tmp_path / "ray.jsonl"), address="local", **kw)
    assert (tmp_path / "crashed").exists()  # a worker did die
    a = annotate_file(str(probs), spec, str(tmp_path / "plain.jsonl"), **kw)  # (no crash: the mark is there)
    err = capsys.readouterr().err
    for s in (a, b):
        assert (s["bad_problems"], s["this_run"]["failed_problems"], s["problems"]) == (1, 1, 10)
    assert f"warning: skipping problem {recs[4]['id']!r}" in err and "cannot read image" in err
    assert sorted_lines(tmp_path / "ray.jsonl") == sorted_lines(tmp_path / "plain.jsonl")
    assert recs[4]["id"] not in {json.loads(x)["problem_id"] for x in sorted_lines(tmp_path / "ray.jsonl")}


@pytest.mark.slow
def test_openai_fleet_through_ray_equals_synthetic(cluster, syn, tmp_path):
    from fake_openai import FakeOpenAI

    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in read_jsonl(syn):
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    fakes = [FakeOpenAI(probs, fail_every=9), FakeOpenAI(probs)]
    urls = [f.start() for f in fakes]
    try:
        kw = {"rollouts": 3, "seed": 5, "progress": False, "concurrency": 12}
        spec = f"openai:syn@{urls[0]},{urls[1]}"  # a fleet: every actor spreads its requests over both servers
        opts = {"retries": 5, "timeout": 10.0, "backoff": 0.01}
        s = annotate_ray(str(syn), spec, str(tmp_path / "o.jsonl"), address="local", policy_options=opts, **kw)
    finally:
        for f in fakes:
            f.stop()
    assert s["this_run"]["failed_problems"] == 0 and s["problems"] == 12
    assert all(f.count > 10 for f in fakes) and fakes[0].injected["500"] > 0
    annotate_file(str(syn), "synthetic", str(tmp_path / "s.jsonl"), **kw)

    def strip(path):
        recs = [json.loads(x) for x in Path(path).read_text().splitlines()]
        return sorted(json.dumps({k: v for k, v in r.items() if k not in ("policy", "annotate")}) for r in recs)

    assert strip(tmp_path / "o.jsonl") == strip(tmp_path / "s.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# score and bon on a tiny PRM


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    pytest.importorskip("torch")
    from visualprm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("prm") / "tiny", arch="qwen2_vl")


@pytest.mark.slow
def test_score_ray_equals_plain(cluster, tiny_prm, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "blue.png")
    recs = []
    for i in range(19):  # 3 chunks of 2 x 4 records, the last one short
        steps = [f"Step {j} of solution {i}." for j in range(1 + i % 4)]
        img = [["red.png"], ["blue.png"], []][i % 3]
        recs.append({"id": f"s{i}", "images": img, "question": f"What is {i} + 1?", "steps": steps, "extra": i})
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["score", "--prm", str(tiny_prm), "--input", str(inp), "--batch-size", "2", "--aggregate", "min"]
    assert main([*args, "--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray.jsonl"), "--ray", "local"]) == 0
    assert "scored 19 records" in capsys.readouterr().out
    plain = (tmp_path / "plain.jsonl").read_text()
    assert (tmp_path / "ray.jsonl").read_text() == plain
    assert [json.loads(x)["id"] for x in plain.splitlines()] == [r["id"] for r in recs]


@pytest.mark.slow
def test_bon_ray_equals_plain(cluster, tiny_prm, tmp_path):
    recs = []
    for i in range(12):  # one chunk (of up to 16 problems), one actor
        resp = [f"We add {i} and 1.\n\nThe answer is {i + 1}.", f"Guess.\n\nThe answer is {i}.", "\\boxed{3}"]
        recs.append({"id": f"p{i}", "question": f"{i}+1?", "answer": str(i + 1), "responses": resp[: 2 + i % 2]})
    inp = tmp_path / "cands.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["bon", "--prm", str(tiny_prm), "--input", str(inp), "--orm", "prm", "--subsets", "4"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray", "local"]) == 0
    for name in ("picks.jsonl", "samples.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "plain" / name).read_text()
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("plain", "ray"))
    a.pop("seconds"), b.pop("seconds")
    assert a == b and "orm" in a["accuracy"] and a["counts"]["problems"] == 12
