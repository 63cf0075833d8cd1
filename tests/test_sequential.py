"""Adaptive (sequential) Monte-Carlo labels: the stopping arithmetic, identical labels to the strategies they
shorten on the synthetic task, bounds in the output, SIGKILL + resume, build-data on bounded steps."""

import json
import signal
import subprocess
import sys

import pytest
from test_montecarlo import SLOW_CHECKER, _env, _kill_midway, by_id, lines

from visualprm.builddata import build_data_file
from visualprm.cli import main
from visualprm.montecarlo import annotate_file, strategy_steps
from visualprm.schema import InputError, write_jsonl
from visualprm.sequential import adaptive_steps, blocks, draws_needed, label_decided, value_cut
from visualprm.synthetic import make_problems


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    make_problems(d, n=12, seed=2)
    return d / "problems.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# The arithmetic


def test_blocks_cut_and_decisions():
    assert blocks(16, 1) == [(i, 1) for i in range(16)]
    assert blocks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert blocks(16, 16) == [(0, 16)]
    assert [value_cut(t, 16) for t in (0.0, 0.25, 0.5, 0.2, -0.1, 1.0)] == [0, 4, 8, 3, -1, 16]
    # tau = 0: one success settles a step; a '-' needs all K failures
    assert label_decided(1, 1, 16, 0) and not label_decided(0, 15, 16, 0) and label_decided(0, 16, 16, 0)
    # tau = 0.25 (t = 4): '+' after 5 successes, '-' after 12 failures
    assert label_decided(5, 5, 16, 4) and not label_decided(4, 11, 16, 4) and label_decided(0, 12, 16, 4)
    assert draws_needed(0, 0, 16, 4, False) == 5  # five straight successes could decide '+'
    assert draws_needed(3, 6, 16, 4, False) == 2
    assert draws_needed(0, 12, 16, 4, False) == 0  # '-' decided at all 12 failures...
    assert draws_needed(0, 12, 16, 4, True) == 1  # ...but early-stop must still learn whether mc = 0
    assert draws_needed(0, 15, 16, 0, False) == 1 and draws_needed(2, 9, 16, 0, True) == 0


def test_adaptive_generator_rounds_and_bounds():
    """A 4-step solution, K = 8, threshold 0.25 (t = 2), blocks of 2; outcomes per prefix in draw order."""
    outcomes = {0: [1, 1, 1, 0, 1, 1, 1, 1], 1: [0, 0, 0, 0, 0, 0, 1, 0], 2: [1, 0, 0, 1, 0, 0, 1, 1]}
    g = adaptive_steps("adaptive", 4, False, 8, 0.25, 2, strategy_steps)
    counts, asked = {}, []
    want = next(g)
    try:
        while True:
            asked.append(dict(want))
            for i, total in want.items():
                counts[i] = (sum(outcomes[i][:total]), total)
            want = g.send({i: counts[i] for i in want})
    except StopIteration as e:
        labels = e.value
    # round 1: 3 successes could decide '+' -> 4 (two blocks); prefix 0 has 3 of 4: '+'
    assert asked == [{0: 4, 1: 4, 2: 4}, {1: 6, 2: 6}, {2: 8}]
    assert labels == [
        (0.75, 3, 4, 3 / 8, 7 / 8),  # a bound: the K-rollout mc is in [3/8, 7/8]
        (0.0, 0, 6, 0.0, 2 / 8),  # '-' after 6 failures: mc <= 2/8
        (0.5, 4, 8),  # drawn to the end: exact
        (0.0, 0, 1),  # the verdict
    ]


def test_adaptive_early_stop_settles_the_zero():
    """tau = 0.25 with K = 4 (t = 1), blocks of 1: a '-' is known after 3 failures, but early-stop must know
    whether mc = 0, so a step without a success is drawn to the end; after that zero the rest are inferred."""
    outcomes = {0: [1, 1, 0, 0], 1: [0, 0, 0, 0], 2: [1, 1, 1, 1]}
    g = adaptive_steps("adaptive-early-stop", 4, True, 4, 0.25, 1, strategy_steps)
    asked, want = [], next(g)
    try:
        while True:
            asked.append(dict(want))
            want = g.send({i: (sum(outcomes[i][:n]), n) for i, n in want.items()})
    except StopIteration as e:
        labels = e.value
    assert asked == [{0: 2}, {1: 2}, {1: 4}]  # after 2 failures: 2 successes or 2 failures settle it
    assert labels == [(1.0, 2, 2, 0.5, 1.0), (0.0, 0, 4), (0.0, 0, 0), (0.0, 0, 0)]


def test_adaptive_over_http_equals_synthetic(tmp_path, syn):
    """The openai backend gets one request per block with its own seed: the same files as the synthetic policy."""
    from fake_openai import FakeOpenAI

    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in list(read_jsonl(syn))[:3]:
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    write_jsonl(tmp_path / "p.jsonl", probs)
    fake = FakeOpenAI(probs)
    url = fake.start()
    kw = {"rollouts": 4, "seed": 2, "progress": False, "strategy": "adaptive", "first_round": 2}
    try:
        annotate_file(str(tmp_path / "p.jsonl"), f"openai:syn@{url}", str(tmp_path / "o.jsonl"), **kw)
    finally:
        fake.stop()
    annotate_file(str(tmp_path / "p.jsonl"), "synthetic", str(tmp_path / "s.jsonl"), **kw)
    drop = ("policy", "annotate")
    strip = [
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in lines(tmp_path / "o.jsonl")
    ]
    ref = [
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in lines(tmp_path / "s.jsonl")
    ]
    assert sorted(strip) == sorted(ref)
    assert {b["n"] for b in fake.bodies if b["messages"][-1]["role"] == "assistant"} <= {1, 2}


# ---------------------------------------------------------------------------------------------------------------
# Identical labels to the strategy each adaptive one shortens (the synthetic task)


def _labels(path, tau):
    return {r["id"]: [st["mc"] > tau for st in r["steps"]] for r in lines(path)}


def test_identical_labels_to_base_strategies(tmp_path, syn):
    kw = {"rollouts": 8, "seed": 3, "progress": False, "first_round": 1}
    base = {}
    for strategy in ("all", "early-stop", "binary"):
        base[strategy] = tmp_path / f"{strategy}.jsonl"
        annotate_file(str(syn), "synthetic", str(base[strategy]), strategy=strategy, **kw)
    full = {r["id"]: r for r in lines(base["all"])}
    for tau in (0.0, 0.25, 0.5):
        for strategy, ref in (
            ("adaptive", "all"),
            ("adaptive-early-stop", "early-stop"),
            ("adaptive-binary", "binary"),
        ):
            out = tmp_path / f"{strategy}-{tau}.jsonl"
            s = annotate_file(str(syn), "synthetic", str(out), strategy=strategy, threshold=tau, **kw)
            assert _labels(out, tau) == _labels(base[ref], tau), (strategy, tau)
            ref_s = lines(base[ref])
            assert s["rollouts"] < sum(r["num_mc_sequences"] for r in ref_s)
            assert s["bounded_steps"] > 0 and s["threshold"] == tau
            for r in lines(out):
                assert r["annotate"]["threshold"] == tau and r["annotate"]["first_round"] == 1
                assert r["num_mc_requests"] == r["num_mc_sequences"]  # blocks of one
                for k, (st, st_all) in enumerate(zip(r["steps"], full[r["id"]]["steps"])):
                    if st.get("mc_bound"):  # all's mc lies in the range (measured steps)
                        lo, hi = st["mc_range"]
                        assert st["n_total"] == 0 or 0 < st["n_total"] < 8
                        if st["n_total"]:
                            assert lo <= st_all["mc"] <= hi and lo <= st["mc"] <= hi
                            assert st["n_correct"] == round(st["mc"] * st["n_total"])
                    elif st["n_total"] == 8:  # drawn to the end: the same continuations as all's
                        assert st == st_all, (r["id"], k)
    # blocks of K are the former one-request-per-step files (the non-adaptive default)
    annotate_file(str(syn), "synthetic", str(tmp_path / "k.jsonl"), **{**kw, "first_round": 8})
    annotate_file(str(syn), "synthetic", str(tmp_path / "d.jsonl"), **{**kw, "first_round": None})
    assert by_id(tmp_path / "k.jsonl") == by_id(tmp_path / "d.jsonl")


def test_adaptive_independent_of_concurrency_and_blocks(tmp_path, syn):
    kw = {"rollouts": 8, "seed": 4, "progress": False, "strategy": "adaptive-early-stop", "threshold": 0.25}
    s1 = annotate_file(str(syn), "synthetic", str(tmp_path / "c1.jsonl"), concurrency=1, **kw)
    annotate_file(str(syn), "synthetic", str(tmp_path / "c7.jsonl"), concurrency=7, **kw)
    assert by_id(tmp_path / "c1.jsonl") == by_id(tmp_path / "c7.jsonl")
    s4 = annotate_file(str(syn), "synthetic", str(tmp_path / "b4.jsonl"), first_round=4, **kw)
    annotate_file(str(syn), "synthetic", str(tmp_path / "e4.jsonl"), first_round=4, **{**kw, "strategy": "early-stop"})
    assert _labels(tmp_path / "b4.jsonl", 0.25) == _labels(tmp_path / "e4.jsonl", 0.25)
    assert s4["requests"] < s1["requests"] and s4["rollouts"] > s1["rollouts"]  # the trade --first-round makes
    assert s1["tokens"] > s1["rollouts"] > 0
    with pytest.raises(InputError, match=r"--threshold must be in \[0, 1\), got 1.0"):
        annotate_file(str(syn), "synthetic", str(tmp_path / "x.jsonl"), **{**kw, "threshold": 1.0})
    with pytest.raises(InputError, match=r"first_round=1 \(now 4\)"):
        annotate_file(str(syn), "synthetic", str(tmp_path / "c1.jsonl"), first_round=4, **kw)


def test_old_files_resume_as_one_block(tmp_path, syn):
    out = tmp_path / "o.jsonl"
    annotate_file(str(syn), "synthetic", str(out), rollouts=4, progress=False)
    recs = lines(out)
    for r in recs:  # as written before blocks and thresholds existed
        del r["annotate"]["first_round"], r["annotate"]["threshold"]
    write_jsonl(out, recs[:-3])
    s = annotate_file(str(syn), "synthetic", str(out), rollouts=4, progress=False)
    assert s["resumed_problems"] == 11 and s["this_run"]["problems_done"] == 1 and len(lines(out)) == 48


def test_sigkill_then_rerun_equals_uninterrupted_adaptive(tmp_path):
    make_problems(tmp_path / "syn", n=24, seed=1)
    (tmp_path / "slowcheck.py").write_text(SLOW_CHECKER)
    probs = str(tmp_path / "syn" / "problems.jsonl")
    opts = ["--policy", "synthetic", "--seed", "1", "--rollouts", "6", "--concurrency", "2"]
    opts += ["--strategy", "adaptive", "--threshold", "0.25", "--checker", f"{tmp_path / 'slowcheck.py'}:check"]
    ref = tmp_path / "ref.jsonl"
    assert main(["annotate", "--problems", probs, "--out", str(ref), *opts]) == 0
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "visualprm", "annotate", "--problems", probs, "--out", str(out), *opts]
    assert _kill_midway(cmd, out, 32, _env()) == -signal.SIGKILL
    assert 32 <= len(out.read_text().splitlines()) < 96  # really killed midway
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0 and "bounds" in done.stdout and "requests" in done.stdout
    assert by_id(out) == by_id(ref)
    assert len({r["id"] for r in lines(out)}) == 96


# ---------------------------------------------------------------------------------------------------------------
# build-data on bounded steps


def test_build_data_on_bounds(tmp_path, syn, capsys):
    kw = {"rollouts": 8, "seed": 3, "progress": False, "first_round": 1}
    ann, ref = tmp_path / "ann.jsonl", tmp_path / "all.jsonl"
    annotate_file(str(syn), "synthetic", str(ann), strategy="adaptive", threshold=0.25, **kw)
    annotate_file(str(syn), "synthetic", str(ref), strategy="all", **kw)
    capsys.readouterr()
    # value labels at the run's threshold: exactly those from all's file
    build_data_file(str(ann), str(tmp_path / "a.jsonl"), threshold=0.25)
    build_data_file(str(ref), str(tmp_path / "r.jsonl"), threshold=0.25)
    assert by_id(tmp_path / "a.jsonl") == by_id(tmp_path / "r.jsonl")  # lines in the order problems finished
    bounded = next(r for r in lines(ann) if any(st.get("mc_bound") for st in r["steps"]))
    line = [r["id"] for r in lines(ann)].index(bounded["id"]) + 1
    for extra in (["--labels", "soft"], ["--labels", "advantage"], ["--threshold", "0.5"]):
        out = tmp_path / "x.jsonl"
        rc = main(["build-data", "--annotated", str(ann), "--out", str(out), "--threshold", "0.25", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and not out.exists()
        assert f"ann.jsonl:{line}: field 'steps': step " in err
        if "--labels" in extra:
            assert "is a bound" in err and "need the mc of all K rollouts" in err
        else:
            assert "not decided by its bound" in err
    # ORM data uses the last step only (the verdict, never a bound)
    assert main(["build-data", "--annotated", str(ann), "--out", str(tmp_path / "o.jsonl"), "--orm"]) == 0
    bad = [dict(bounded, steps=[dict(bounded["steps"][0], mc_bound=True, mc_range=[0.5]), *bounded["steps"][1:]])]
    write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(InputError, match="mc_bound without a valid mc_range"):
        build_data_file(str(tmp_path / "bad.jsonl"), str(tmp_path / "b.jsonl"))
    assert json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["conversations"]
