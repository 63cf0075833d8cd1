"""Long jobs and their files: output modes, output paths refused before work, one-line server failures, option
ranges, nothing created on bad input, a busy port, torch threads, and `score` / `bon` resuming after a kill."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from visualprm.cli import main
from visualprm.schema import InputError, check_output, write_json, write_jsonl, write_text

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_writes_get_the_mode_open_would(tmp_path, umask022):
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    write_json(tmp_path / "b.json", {"x": 1})
    write_text(tmp_path / "c.html", "<p>")
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "plain.txt") == 0o644
    assert [_mode(tmp_path / n) for n in ("a.jsonl", "b.json", "c.html")] == [0o644] * 3
    os.chmod(tmp_path / "a.jsonl", 0o600)  # an existing file keeps its own mode, as open(path, "w") keeps it
    write_jsonl(tmp_path / "a.jsonl", [{"x": 2}])
    assert _mode(tmp_path / "a.jsonl") == 0o600 and json.loads((tmp_path / "a.jsonl").read_text()) == {"x": 2}
    os.umask(0o077)
    write_json(tmp_path / "d.json", {})
    assert _mode(tmp_path / "d.json") == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_never_replaces_a_non_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        write_jsonl(fifo, [{"x": 1}])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "link.jsonl"
    (tmp_path / "target.jsonl").write_text("old\n")
    link.symlink_to(tmp_path / "target.jsonl")
    write_jsonl(link, [{"x": 1}])  # followed, as open() follows it
    assert link.is_symlink() and (tmp_path / "target.jsonl").read_text() == '{"x": 1}\n'


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("prm") / "tiny"
    old = os.umask(0o022)
    try:
        assert main(["make-tiny-model", str(out)]) == 0
    finally:
        os.umask(old)
    return out


def test_saved_model_is_readable_by_others(tiny_prm):
    assert _mode(tiny_prm / "model.safetensors") == 0o644  # safetensors alone writes 0600
    assert all(_mode(p) == 0o644 for p in tiny_prm.iterdir())


def _solutions(d: Path, n: int) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 30), (0, 90, 200)).save(d / "img.png")
    recs = [
        {"id": f"s{i}", "images": ["img.png"], "question": f"How many? {i}", "steps": [f"I see {i}.", f"So {i % 7}."]}
        for i in range(n)
    ]
    write_jsonl(d / "sols.jsonl", recs)
    return d / "sols.jsonl"


def _bad_outs(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    cases = [
        (tmp_path / "adir", "is a directory"),
        (tmp_path / "afile" / "out.jsonl", "is not a directory"),
        (tmp_path / "fifo", "not a regular file"),
    ]
    if Path("/dev/full").exists():
        cases.append((Path("/dev/full"), "not a regular file"))
    return cases


def _one_error_line(capsys, path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "error:" in err[0], err
    return err[0]


def test_bad_out_refused_before_any_work(tmp_path, capsys):
    """score, build-data, grade and bon: exit 2, one line naming the path, nothing written, input never read."""
    before = None
    for out, message in _bad_outs(tmp_path):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        for cmd in (
            ["score", "--prm", "no-such-prm", "--input", "no-such.jsonl", "--out", str(out)],
            ["build-data", "--annotated", "no-such.jsonl", "--out", str(out)],
            ["grade", "--input", "no-such.jsonl", "--out", str(out)],
        ):
            assert main(cmd) == 2
            assert message in _one_error_line(capsys, out)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before
        if Path("/dev/full").exists():
            assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    afile = str(tmp_path / "afile")
    for cmd in (
        ["bon", "--prm", "x", "--input", "x.jsonl", "--out", afile],
        ["bench", "--bench", "b.json", "--prm", "x", "--out", afile],
        ["search", "--policy", "synthetic", "--prm", "x", "--problems", "p.jsonl", "--out", afile],
        ["train", "--data", "d.jsonl", "--model", "m", "--out", afile],
        ["demo", "--out", afile],
        ["make-tiny-model", afile],
        ["make-base-model", afile],
    ):
        assert main(cmd) == 2, cmd
        assert "not a directory" in _one_error_line(capsys, afile)
    assert main(["make-synthetic", str(tmp_path / "afile" / "sub")]) == 2
    assert "not a directory" in _one_error_line(capsys, tmp_path / "afile")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")
def test_unwritable_parent_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["build-data", "--annotated", "x.jsonl", "--out", str(ro / "new" / "train.jsonl")]) == 2
        assert "permission denied" in _one_error_line(capsys, ro / "new" / "train.jsonl")
    finally:
        ro.chmod(0o755)


def test_check_output_accepts_new_paths_and_files(tmp_path):
    check_output(tmp_path / "new" / "deeper" / "out.jsonl")  # missing parents are created by the writer
    check_output(tmp_path / "newdir", "dir")
    (tmp_path / "old.jsonl").write_text("")
    check_output(tmp_path / "old.jsonl")


# ---------------------------------------------------------------------------------------------------------------
# Servers: a refused key and a server that stays down, one line each


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"detail": "missing or wrong API key"}).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *a):
        pass


@pytest.fixture()
def problems(tmp_path):
    from visualprm.synthetic import make_problems

    make_problems(tmp_path / "syn", n=2, seed=1, image_size=56)
    return tmp_path / "syn" / "problems.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_search_refused_key_and_server_down_are_one_line(tmp_path, problems, capsys):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = ["search", "--policy", "synthetic", "--problems", str(problems), "--method", "bon", "--width", "1"]
    base += ["--expand", "1"]
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert main([*base, "--prm", url, "--api-key", "WRONG", "--out", str(tmp_path / "s1")]) == 2
    finally:
        srv.shutdown()
        srv.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the API key (HTTP 401: missing or wrong API key)" in err[0], err
    down = f"http://127.0.0.1:{_free_port()}"
    assert main([*base, "--prm", down, "--out", str(tmp_path / "s2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the server at {down}/v1/score after retries (ConnectError" in err[0], err


def test_service_failure_classes():
    import httpx

    from visualprm.client import ServiceError
    from visualprm.jobs import service_failure
    from visualprm.openai_client import RequestError, ServerUnavailable

    assert service_failure(ServiceError(403, "forbidden"))[1] == 2
    assert service_failure(RequestError("HTTP 401: no", 401))[1] == 2
    assert service_failure(ServiceError(413, "too big", "max_tokens")) == ("the server answered HTTP 413: too big", 2)
    assert service_failure(ServiceError(500, "boom"))[1] == 1
    assert service_failure(ServerUnavailable("x: request failed after 7 attempts")) == (
        "server unavailable: x: request failed after 7 attempts",
        1,
    )
    assert service_failure(httpx.ReadTimeout("timed out"))[1] == 1
    assert service_failure(ValueError("not a server")) is None


# ---------------------------------------------------------------------------------------------------------------
# Options and inputs refused before anything is created


@pytest.mark.parametrize(
    "argv,message",
    [
        (["build-data", "--annotated", "a.jsonl", "--out", "o.jsonl", "--threshold", "1.5"], "must be in [0, 1)"),
        (["build-data", "--annotated", "a.jsonl", "--out", "o.jsonl", "--threshold", "-0.1"], "must be in [0, 1)"),
        (["annotate", "--problems", "p", "--policy", "synthetic", "--out", "o", "--top-p", "2"], "must be in (0, 1]"),
        (
            ["search", "--policy", "synthetic", "--prm", "p", "--problems", "p", "--out", "o", "--temperature", "-1"],
            "[0, inf)",
        ),
        (["bench", "--bench", "b", "--prm", "p", "--out", "o", "--heldout", "1"], "must be in (0, 1)"),
        (["train", "--lr", "-1"], "must be in [0, inf)"),
        (["serve", "--prm", "p", "--port", "70000"], "[1, 65535]"),
        (["score", "--prm", "p", "--input", "i", "--out", "o", "--max-steps", "0"], "must be >= 1"),
        (["bon", "--prm", "p", "--input", "i", "--out", "o", "--limit", "0"], "must be >= 1"),
        (["train", "--eval-split", "nan"], "finite"),
    ],
)
def test_out_of_range_options_refused(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_threshold_refused_by_the_function_too(tmp_path):
    from visualprm.builddata import build_data_file

    with pytest.raises(InputError, match=r"--threshold must be in \[0, 1\), got 1.5"):
        build_data_file(str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl"), threshold=1.5)


def test_bench_threshold_range(tmp_path, capsys):
    assert main(["bench", "--bench", "b.json", "--scores", "s", "--out", str(tmp_path / "o"), "--threshold", "2"]) == 2
    assert "--threshold must be in [-1, 1] or 'auto', got 2" in capsys.readouterr().err


def test_make_synthetic_bad_kinds_creates_nothing(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "out"), "--kinds", "pie"]) == 2
    assert "unknown kind(s)" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_serve_on_a_busy_port_fails_before_loading(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # The PRM folder does not exist: had the model loaded first, this would be another error.
        assert main(["serve", "--prm", str(tmp_path / "no-prm"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], err


# ---------------------------------------------------------------------------------------------------------------
# Threads and progress


def test_torch_threads_default_and_option(monkeypatch):
    torch = pytest.importorskip("torch")
    from visualprm import jobs

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(jobs, "usable_cores", lambda: 2)
        monkeypatch.setattr(jobs, "_PASSIVE", True)  # threads sleep while they wait: one per core
        assert jobs.default_torch_threads("cpu") == 2
        monkeypatch.setattr(jobs, "_PASSIVE", False)  # torch loaded before the policy could be chosen: half
        assert jobs.default_torch_threads("cpu") == 1
        monkeypatch.setattr(jobs, "usable_cores", lambda: 64)
        assert jobs.default_torch_threads("cpu") == jobs.DEFAULT_CPU_THREADS == 4
        assert jobs.default_torch_threads("cuda:0") is None  # a GPU: torch's own default
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert jobs.default_torch_threads("cpu") is None  # the user's choice stands
        assert jobs.set_torch_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_passive_wait_is_chosen_before_torch_loads():
    code = (
        "import os, sys; from visualprm import jobs; assert jobs.prefer_passive_wait(); "
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE' and 'torch' not in sys.modules; "
        "os.environ.pop('OMP_NUM_THREADS', None); print(jobs.set_torch_threads(None, 'cpu'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    from visualprm.jobs import DEFAULT_CPU_THREADS, usable_cores

    assert int(out.stdout) == min(usable_cores(), DEFAULT_CPU_THREADS)
    mine = subprocess.run(
        [sys.executable, "-c", "from visualprm import jobs; print(jobs.prefer_passive_wait())"],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
    )
    assert mine.stdout.strip() == "False"  # the user's policy stands


def test_progress_bar_off_when_quiet_or_not_a_terminal():
    from visualprm import jobs

    assert jobs.bar(3, "x").disable  # stderr is captured here: not a terminal
    jobs.set_quiet(True)
    try:
        assert jobs.bar(3, "x").disable
    finally:
        jobs.set_quiet(False)


# ---------------------------------------------------------------------------------------------------------------
# Resume: score after SIGKILL; bon after an interruption

SLOW_APPEND = (  # each appended chunk then takes 0.3 s, so the kill lands midway
    "import sys, time; import visualprm.jobs as j; o = j.append_rows; "
    "j.append_rows = lambda p, r: (o(p, r), time.sleep(0.3)); "
    "from visualprm.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.slow
def test_score_resumes_after_sigkill(tiny_prm, tmp_path):
    inp = _solutions(tmp_path, 24)
    # chunks of 4 records; one thread in both processes (a fresh process defaults to more, and other threads sum
    # in another order: the last digit of a rounded score can differ)
    common = ["--prm", str(tiny_prm), "--input", str(inp), "--batch-size", "1", "--torch-threads", "1"]
    ref = tmp_path / "ref.jsonl"
    assert main(["score", *common, "--out", str(ref)]) == 0
    out = tmp_path / "out.jsonl"
    partial = Path(str(out) + ".partial")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_APPEND, "score", *common, "--out", str(out)], env=env)
    try:
        while proc.poll() is None:
            if partial.exists() and partial.read_text().count("\n") >= 1 + 8:  # header + 2 chunks
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    kept = partial.read_text().count("\n") - 1
    assert 8 <= kept < 24 and kept % 4 == 0
    with open(partial, "a") as f:
        f.write('{"id": "s99", "torn')  # a write cut by the kill
    assert main(["score", *common, "--out", str(out)]) == 0
    assert out.read_bytes() == ref.read_bytes() and not partial.exists()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"s{i}" for i in range(24)]


def test_score_resume_ignores_another_runs_partial(tiny_prm, tmp_path, capsys):
    inp = _solutions(tmp_path, 6)
    out = tmp_path / "o.jsonl"
    Path(str(out) + ".partial").write_text('{"_resume": {"other": 1}}\n{"id": "zzz"}\n')
    assert main(["score", "--prm", str(tiny_prm), "--input", str(inp), "--out", str(out)]) == 0
    assert "from another run" in capsys.readouterr().err
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"s{i}" for i in range(6)]


@pytest.mark.slow
def test_bon_resumes_its_scoring(tiny_prm, tmp_path, monkeypatch):
    from visualprm import bon
    from visualprm.scoring import Scorer

    recs = [
        {"id": f"p{i}", "question": f"q{i}", "answer": str(i % 3), "responses": [f"a\n\nSo {i % 3}.", "b\n\nSo 9."]}
        for i in range(20)
    ]
    inp = tmp_path / "cands.jsonl"
    write_jsonl(inp, recs)
    kw = dict(prm=str(tiny_prm), input_path=str(inp), report=False)
    assert bon.bon_file(out_dir=str(tmp_path / "ref"), **kw) == 0
    real, calls = Scorer.score_groups, []

    def dies_on_the_second_chunk(self, groups):
        calls.append(len(groups))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, groups)

    monkeypatch.setattr(Scorer, "score_groups", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        bon.bon_file(out_dir=str(tmp_path / "out"), **kw)
    assert (tmp_path / "out" / "scores.partial").read_text().count("\n") == 1 + 16
    monkeypatch.setattr(Scorer, "score_groups", lambda self, groups: calls.append(len(groups)) or real(self, groups))
    assert bon.bon_file(out_dir=str(tmp_path / "out"), **kw) == 0
    assert calls[2:] == [4]  # only the last 4 problems were scored again
    for name in ("picks.jsonl", "samples.jsonl"):
        assert (tmp_path / "out" / name).read_text() == (tmp_path / "ref" / name).read_text()
    assert not (tmp_path / "out" / "scores.partial").exists()


def test_search_table_shows_the_budget_beside_the_spend():
    from visualprm.search import format_table

    row = {"problems": 2, "accuracy": 0.5, "oracle": 1.0, "tokens": 343.0, "requests": 4.0, "samples": 16.0}
    row |= {"rounds": 4.0, "prm_solutions": 16.0, "seconds": 1.0}
    table = format_table({"bon": row}, budget=300)
    assert "budget 300 tokens per problem; mean spent: bon 343.0" in table and "overshoot" in table
    assert "budget" not in format_table({"bon": row})
