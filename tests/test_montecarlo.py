"""Monte-Carlo labelling: exact strategy semantics, determinism, resume after SIGKILL, openai through a local
server with injected failures, bad input, hf with a tiny model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from visualprm.cli import main
from visualprm.montecarlo import annotate_file, derive_seed, strategy_steps
from visualprm.schema import InputError, write_jsonl
from visualprm.synthetic import make_problems

ROOT = Path(__file__).resolve().parents[1]


def lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def by_id(path) -> list[str]:
    recs = lines(path)
    return sorted(json.dumps(r, sort_keys=True) for r in recs)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    make_problems(d, n=12, seed=2)
    return d / "problems.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# Strategy semantics on a scripted policy with known outcomes

K = 4
# solution j: its steps (the last one states the answer) and, per prefix k (1..m-1), how many of K continuations
# end correct. Gold answer 7.
SCRIPT = {
    0: (["s0.0", "s0.1", "s0.2", "s0.3", "Final answer: 7"], [4, 3, 2, 4]),  # correct, never zero
    1: (["s1.0", "s1.1", "s1.2", "s1.3", "Final answer: 3"], [3, 2, 0, 1]),  # wrong, first zero at step 2
    2: (["Final answer: 7"], []),  # one step: no rollouts
    3: (["s3.0", "s3.1", "s3.2", "s3.3", "Final answer: 5"], [0, 2, 1, 0]),  # wrong, zero at 0 (not monotone)
}


class ScriptedPolicy:
    name = "scripted"

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        self.requests += requests
        out = []
        for r in requests:
            if not r.prefix:
                out.append(["\n\n".join(SCRIPT[j][0]) for j in range(r.n)])
                continue
            j, k = int(r.prefix[1]), r.prefix.count("\n\n") + 1
            good = SCRIPT[j][1][k - 1]
            out.append(["\n\nFinal answer: 7"] * good + ["\n\nFinal answer: 1"] * (r.n - good))
        return out

    def close(self):
        pass


EXPECTED = {  # strategy -> solution -> [(mc, n_correct, n_total)], rollouts
    "all": {
        0: ([(1.0, 4, 4), (0.75, 3, 4), (0.5, 2, 4), (1.0, 4, 4), (1.0, 1, 1)], 16),
        1: ([(0.75, 3, 4), (0.5, 2, 4), (0.0, 0, 4), (0.25, 1, 4), (0.0, 0, 1)], 16),
        2: ([(1.0, 1, 1)], 0),
        3: ([(0.0, 0, 4), (0.5, 2, 4), (0.25, 1, 4), (0.0, 0, 4), (0.0, 0, 1)], 16),
    },
    "early-stop": {
        0: ([(1.0, 4, 4), (0.75, 3, 4), (0.5, 2, 4), (1.0, 4, 4), (1.0, 1, 1)], 16),
        1: ([(0.75, 3, 4), (0.5, 2, 4), (0.0, 0, 4), (0.0, 0, 0), (0.0, 0, 0)], 12),
        2: ([(1.0, 1, 1)], 0),
        3: ([(0.0, 0, 4), (0.0, 0, 0), (0.0, 0, 0), (0.0, 0, 0), (0.0, 0, 0)], 4),
    },
    "binary": {
        0: ([(1.0, 0, 0), (1.0, 0, 0), (1.0, 0, 0), (1.0, 0, 0), (1.0, 1, 1)], 0),
        # probes 2 (zero) then 1 (2/4): first zero 2; step 0 copies step 1's mc
        1: ([(0.5, 0, 0), (0.5, 2, 4), (0.0, 0, 4), (0.0, 0, 0), (0.0, 0, 0)], 8),
        2: ([(1.0, 1, 1)], 0),
        # probes 2 (1/4) then 3 (zero): the zero at step 0 is missed, as binary search must
        3: ([(0.25, 0, 0), (0.25, 0, 0), (0.25, 1, 4), (0.0, 0, 4), (0.0, 0, 0)], 8),
    },
}


@pytest.mark.parametrize("strategy", ["all", "early-stop", "binary"])
def test_strategy_exact_values(tmp_path, strategy):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "q1", "question": "How much?", "answer": "7"}])
    pol = ScriptedPolicy()
    s = annotate_file(
        str(tmp_path / "p.jsonl"), pol, str(tmp_path / "out.jsonl"), rollouts=K, strategy=strategy, progress=False
    )
    recs = sorted(lines(tmp_path / "out.jsonl"), key=lambda r: r["solution_index"])
    assert [r["id"] for r in recs] == ["q1-0", "q1-1", "q1-2", "q1-3"]
    assert [r["correct"] for r in recs] == [True, False, True, False]
    for r in recs:
        labels, rollouts = EXPECTED[strategy][r["solution_index"]]
        assert [(st["mc"], st["n_correct"], st["n_total"]) for st in r["steps"]] == labels
        assert r["num_mc_sequences"] == rollouts
    assert s["rollouts"] == {"all": 48, "early-stop": 32, "binary": 16}[strategy]
    assert pol.requests[0].n == 4 and pol.requests[0].seed == derive_seed(0, "q1", "solutions")
    assert all(r.n == K for r in pol.requests[1:])
    assert s["this_run"]["rollouts"] == s["rollouts"]


def test_strategy_generator_directly():
    g = strategy_steps("binary", 9, False)  # prefixes 0..7, verdict at 8
    assert next(g) == [4]
    assert g.send({4: (3, 16)}) == [6]
    assert g.send({6: (0, 16)}) == [5]
    with pytest.raises(StopIteration) as e:
        g.send({5: (1, 16)})
    mc = [x[0] for x in e.value.value]
    assert mc == [3 / 16] * 5 + [1 / 16, 0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="unknown strategy"):
        next(strategy_steps("greedy", 3, True))


# ---------------------------------------------------------------------------------------------------------------
# Determinism, shards, resume


def test_independent_of_concurrency_and_shards(tmp_path, syn):
    kw = {"rollouts": 4, "seed": 5, "progress": False}
    annotate_file(str(syn), "synthetic", str(tmp_path / "c1.jsonl"), concurrency=1, **kw)
    annotate_file(str(syn), "synthetic", str(tmp_path / "c5.jsonl"), concurrency=5, **kw)
    assert by_id(tmp_path / "c1.jsonl") == by_id(tmp_path / "c5.jsonl")
    parts = []
    for i in range(3):
        s = annotate_file(str(syn), "synthetic", str(tmp_path / f"s{i}.jsonl"), shard=f"{i}/3", **kw)
        assert s["problems"] == 4
        parts += by_id(tmp_path / f"s{i}.jsonl")
    assert sorted(parts) == by_id(tmp_path / "c1.jsonl")
    # strategies share their rollouts: early-stop's measured steps equal the same steps under `all`
    annotate_file(str(syn), "synthetic", str(tmp_path / "es.jsonl"), strategy="early-stop", **kw)
    full = {r["id"]: r for r in lines(tmp_path / "c1.jsonl")}
    for r in lines(tmp_path / "es.jsonl"):
        for a, b in zip(r["steps"], full[r["id"]]["steps"]):
            if a["n_total"]:
                assert a == b
    with pytest.raises(InputError, match="expected I/N"):
        annotate_file(str(syn), "synthetic", str(tmp_path / "x.jsonl"), shard="1", **kw)


def test_resume_repairs_torn_and_incomplete(tmp_path, syn):
    kw = {"rollouts": 4, "seed": 1, "progress": False}
    full = tmp_path / "full.jsonl"
    annotate_file(str(syn), "synthetic", str(full), **kw)
    recs = full.read_text().splitlines(keepends=True)
    # keep 5 problems whole, 2 lines of the 6th, and a torn half line
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(recs[:22]) + recs[22][:40])
    s = annotate_file(str(syn), "synthetic", str(cut), **kw)
    assert s["resumed_problems"] == 5 and s["this_run"]["problems_done"] == 7
    assert by_id(cut) == by_id(full)
    ids = [r["id"] for r in lines(cut)]
    assert len(ids) == len(set(ids)) == 48
    with pytest.raises(InputError, match=r"written with other options: rollouts=4 \(now 8\)"):
        annotate_file(str(syn), "synthetic", str(cut), **{**kw, "rollouts": 8})


SLOW_CHECKER = """
import time
from visualprm.answers import check as builtin

def check(response, record):
    time.sleep(0.001)
    return builtin(response, record)
"""


def _kill_midway(cmd: list[str], out: Path, at_lines: int, env: dict) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= at_lines:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    make_problems(tmp_path / "syn", n=30, seed=1)
    (tmp_path / "slowcheck.py").write_text(SLOW_CHECKER)
    probs = str(tmp_path / "syn" / "problems.jsonl")
    opts = ["--policy", "synthetic", "--seed", "1", "--rollouts", "4", "--concurrency", "1"]
    opts += ["--checker", f"{tmp_path / 'slowcheck.py'}:check"]
    ref = tmp_path / "ref.jsonl"
    assert main(["annotate", "--problems", probs, "--out", str(ref), *opts]) == 0
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "visualprm", "annotate", "--problems", probs, "--out", str(out), *opts]
    rc = _kill_midway(cmd, out, 40, _env())
    assert rc == -signal.SIGKILL
    n_killed = len(out.read_text().splitlines())
    assert 40 <= n_killed < 120  # really killed midway
    assert subprocess.run(cmd, env=_env(), capture_output=True).returncode == 0
    assert by_id(out) == by_id(ref)
    ids = [r["id"] for r in lines(out)]
    assert len(ids) == len(set(ids)) == 120


@pytest.mark.slow
def test_acceptance_200_problems_sigkill(tmp_path):
    """The issue's acceptance command on 200 problems, killed midway and re-run, equals an uninterrupted run."""
    make_problems(tmp_path / "syn", n=200, seed=1)
    probs = str(tmp_path / "syn" / "problems.jsonl")
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    base = [sys.executable, "-m", "visualprm", "annotate", "--policy", "synthetic", "--problems", probs, "--seed", "1"]
    t0 = time.time()
    done = subprocess.run([*base, "--out", str(ref)], env=_env(), capture_output=True, text=True)
    print(f"uninterrupted: {time.time() - t0:.1f}s\n{done.stdout}")
    assert done.returncode == 0 and "pass rate" in done.stdout
    assert _kill_midway([*base, "--out", str(out)], out, 300, _env()) == -signal.SIGKILL
    assert 300 <= len(out.read_text().splitlines()) < 800
    assert subprocess.run([*base, "--out", str(out)], env=_env(), capture_output=True).returncode == 0
    assert by_id(out) == by_id(ref)
    assert len({r["id"] for r in lines(out)}) == 800


# ---------------------------------------------------------------------------------------------------------------
# openai: a local server answering with the synthetic policy, with injected 500s and timeouts


def test_openai_pipeline_survives_failures(tmp_path, syn):
    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in read_jsonl(syn):
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    fake = FakeOpenAI(probs, fail_every=7, hang_every=23, hang_s=2.5)
    url = fake.start()
    try:
        kw = {"rollouts": 4, "seed": 3, "progress": False, "strategy": "all"}
        opts = {"retries": 10, "timeout": 1.0, "backoff": 0.01}
        s = annotate_file(
            str(syn), f"openai:syn@{url}", str(tmp_path / "o.jsonl"), concurrency=4, policy_options=opts, **kw
        )
    finally:
        fake.stop()
    assert fake.injected["500"] > 0 and fake.injected["hang"] > 0 and fake.max_in_flight > 1
    print(f"{fake.count} requests, injected {fake.injected}, at most {fake.max_in_flight} in flight")
    assert s["this_run"]["failed_problems"] == 0 and s["problems"] == 12
    annotate_file(str(syn), "synthetic", str(tmp_path / "s.jsonl"), **kw)
    strip = [{k: v for k, v in r.items() if k not in ("policy", "annotate")} for r in lines(tmp_path / "o.jsonl")]
    ref = [{k: v for k, v in r.items() if k not in ("policy", "annotate")} for r in lines(tmp_path / "s.jsonl")]
    assert sorted(json.dumps(r, sort_keys=True) for r in strip) == sorted(json.dumps(r, sort_keys=True) for r in ref)


def test_refused_request_skips_only_its_problem(tmp_path, syn):
    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in read_jsonl(syn):
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    fake = FakeOpenAI(probs, refuse=probs[3]["id"])
    url = fake.start()
    try:
        s = annotate_file(str(syn), f"openai:syn@{url}", str(tmp_path / "o.jsonl"), rollouts=2, progress=False)
    finally:
        fake.stop()
    assert s["this_run"]["failed_problems"] == 1 and s["problems"] == 11
    assert probs[3]["id"] not in {r["problem_id"] for r in lines(tmp_path / "o.jsonl")}


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_fails_before_work_or_skips(tmp_path, syn, capsys):
    recs = [json.loads(x) for x in syn.read_text().splitlines()]
    for r in recs:
        r["images"] = [str(syn.parent / p) for p in r["images"]]
    out = tmp_path / "o.jsonl"

    def run(problems, policy="synthetic", extra=()):
        write_jsonl(tmp_path / "p.jsonl", problems)
        rc = main(["annotate", "--problems", str(tmp_path / "p.jsonl"), "--policy", policy, "--out", str(out),
                   "--rollouts", "2", *extra])  # fmt: skip
        return rc, capsys.readouterr()

    no_answer = {k: v for k, v in recs[0].items() if k != "answer"}
    rc, cap = run([no_answer])
    assert rc == 2 and cap.err.strip().count("\n") == 0 and "p.jsonl:1: field 'answer': missing" in cap.err
    assert not out.exists()
    rc, cap = run([{**recs[0], "images": ["nope.png"]}])
    assert rc == 2 and "field 'images': image file not found" in cap.err and not out.exists()
    rc, cap = run(recs[:2], policy="gpt4")
    assert rc == 2 and "bad policy spec 'gpt4'" in cap.err and not out.exists()
    rc, cap = run(recs[:2], policy="openai:m@http://127.0.0.1:9")
    assert rc == 1 and "cannot reach the OpenAI-compatible server" in cap.err and not out.exists()
    rc, cap = run([recs[0], recs[0]])
    assert rc == 2 and "duplicate id" in cap.err
    # one bad problem among many: skipped with a warning and counted
    rc, cap = run([recs[0], no_answer | {"id": "bad1"}, recs[2]])
    assert rc == 0 and "warning: skipping a bad problem" in cap.err and "skipped 1 bad" in cap.out
    assert {r["problem_id"] for r in lines(out)} == {recs[0]["id"], recs[2]["id"]}
    # problems the policy cannot answer at all: one line, exit 2, not a silent success
    plain = [{"id": "a", "question": "2+2?", "answer": "4"}, {"id": "b", "question": "3+3?", "answer": "6"}]
    out.unlink()
    rc, cap = run(plain)
    assert rc == 2 and "every problem failed (2); the first: problem 'a'" in cap.err and "no synthetic" in cap.err


def test_second_writer_is_refused(tmp_path, syn):
    from visualprm.montecarlo import _lock, _unlock

    out = tmp_path / "o.jsonl"
    held = _lock(out)
    try:
        with pytest.raises(InputError, match="another annotate run"):
            annotate_file(str(syn), "synthetic", str(out), progress=False)
    finally:
        _unlock(held, out)


# ---------------------------------------------------------------------------------------------------------------
# hf with a tiny random model: gibberish answers, the pipeline still finishes and counts them


def test_hf_tiny_pipeline(tmp_path):
    from visualprm.tiny import make_tiny_model

    make_problems(tmp_path / "syn", n=2, seed=4, image_size=56)
    model = make_tiny_model(tmp_path / "tiny", arch="qwen2_vl", seed=0)
    out = tmp_path / "o.jsonl"
    s = annotate_file(
        str(tmp_path / "syn" / "problems.jsonl"),
        f"hf:{model}",
        str(out),
        solutions=2,
        rollouts=2,
        max_tokens=12,
        progress=False,
        policy_options={"device": "cpu"},
    )
    assert s["problems"] == 2
    recs = lines(out)
    assert s["solutions"] + s["this_run"]["empty_responses"] == 4
    assert s["unparsed_solutions"] == sum(not r["parsed"] for r in recs)
    assert s["unparsed_solutions"] + s["this_run"]["empty_responses"] >= 1  # gibberish is counted, not hidden
    assert all(r["policy"] == f"hf:{model}" for r in recs)


def test_server_down_midway_exits_1_and_resumes(tmp_path, syn, capsys):
    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in read_jsonl(syn):
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    fake = FakeOpenAI(probs, fail_every=1)
    url = fake.start()
    out = tmp_path / "o.jsonl"
    argv = ["annotate", "--problems", str(syn), "--policy", f"openai:syn@{url}", "--out", str(out)]
    argv += ["--rollouts", "2", "--retries", "0"]
    try:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "failed after 1 attempts" in err and err.endswith("finished work is saved: re-run to resume")
        fake.fail_every = 0
        assert main(argv) == 0
    finally:
        fake.stop()
    assert len(lines(out)) == 48
