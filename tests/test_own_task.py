"""Bring your own task (examples/own_task): a splitter and a checker given as `module:function` change what
`annotate`, `score`, `search` and the reward function see, exactly as expected; the worked example runs end to
end (make problems -> annotate -> train -> score -> search) on tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visualprm.cli import main
from visualprm.montecarlo import annotate_file
from visualprm.policy import GenRequest
from visualprm.rewards import answer_reward, prm_reward
from visualprm.search import SearchConfig, search_file
from visualprm.server import FakeScorer

ROOT = Path(__file__).resolve().parents[1]
SPLITTER, CHECKER = "own_task.tally:split_steps", "own_task.tally:check"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


@pytest.fixture()
def tally(tmp_path):
    from own_task.tally import make_problems

    make_problems(tmp_path / "p", n=3, seed=1)
    return tmp_path / "p" / "problems.jsonl"


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_task_splitter_checker_and_policy():
    from own_task.tally import TallyPolicy, check, gold_step_correct, make_problems, split_steps

    text = "Step 1: red tiles: 4\nStep 2: blue tiles: 3\nmore about blue\nStep 3: Most frequent: red"
    assert split_steps(text) == ["Step 1: red tiles: 4", "Step 2: blue tiles: 3\nmore about blue",
                                 "Step 3: Most frequent: red"]  # fmt: skip
    assert split_steps("Step 1: a\n\nStep 2: b") == ["Step 1: a", "Step 2: b"]  # annotate's blank-line prefixes
    assert len(split_steps("\n".join(f"Step {i}: x" for i in range(13)), 12)) == 7
    assert check(text, {"answer": "Red"}) == {"correct": True, "extracted": "red"}
    assert check("red", {"answer": "red"})["parsed"] is False
    p = {"colors": ["red", "blue"], "tiles": ["red"] * 5 + ["blue"] * 4}
    assert gold_step_correct(p, ["Step 1: red tiles: 5", "Step 2: blue tiles: 3", "Step 3: Most frequent: red"]) == [
        True, False, False]  # fmt: skip
    assert gold_step_correct(p, ["Step 1: red tiles: 3", "Step 2: blue tiles: 4", "Step 3: Most frequent: blue"]) == [
        False, False, False]  # fmt: skip
    # the policy continues a prefix from its claims and honours stop (one step at a time)
    prob = make_problems(Path(os.environ.get("TMPDIR", "/tmp")) / "tally-test-policy", n=1, seed=3)[0]
    pol = TallyPolicy(misread=0.0, slip=0.0)
    full = pol.generate([GenRequest(prob, "", n=1, seed=0)])[0][0]
    steps = split_steps(full)
    assert len(steps) == 4 and all(gold_step_correct(prob, steps)) and check(full, prob)["correct"]
    one = pol.generate([GenRequest(prob, steps[0] + "\n", n=1, seed=0, stop=["\n"])])[0][0]
    assert one == steps[1]
    assert pol.generate([GenRequest(prob, full, n=2, seed=0)]) == [["", ""]]


def test_custom_splitter_and_checker_change_annotate(tally, tmp_path):
    from own_task.tally import TallyPolicy, check

    kw = {"solutions": 4, "rollouts": 4, "progress": False}
    annotate_file(str(tally), TallyPolicy(), str(tmp_path / "builtin.jsonl"), **kw)
    annotate_file(str(tally), TallyPolicy(), str(tmp_path / "own.jsonl"), checker=CHECKER, splitter=SPLITTER, **kw)
    builtin, own = lines(tmp_path / "builtin.jsonl"), lines(tmp_path / "own.jsonl")
    assert [r["response"] for r in builtin] == [r["response"] for r in own]  # same solutions, seeded
    # blank lines: one step per solution; the task's splitter: one per `Step k:` line
    assert all(len(r["steps"]) == 1 for r in builtin)
    assert [len(r["steps"]) for r in own] == [4] * 12
    assert [s["text"] for s in own[0]["steps"]] == own[0]["response"].split("\n")
    # the built-in checker reads the last number (a count) and is always wrong; the task's reads the colour
    assert not any(r["correct"] for r in builtin) and all(r["extracted"].isdigit() for r in builtin)
    problems = {p["id"]: p for p in lines(tally)}
    assert [r["correct"] for r in own] == [check(r["response"], problems[r["problem_id"]])["correct"] for r in own]
    assert [r["correct"] for r in own] == [True] * 3 + [False] + [True] * 8
    assert own[0]["annotate"]["splitter"] == SPLITTER and own[0]["annotate"]["checker"] == CHECKER


def test_custom_task_in_search_and_rewards(tally, tmp_path):
    from own_task.tally import TallyPolicy

    cfg = SearchConfig(width=2, expand=2, step_sep="\n")
    res = search_file(TallyPolicy(), FakeScorer(), str(tally), str(tmp_path / "s"), "bon,beam", cfg,
                      checker=CHECKER, splitter=SPLITTER, progress=False)  # fmt: skip
    rows = lines(tmp_path / "s" / "samples.jsonl")
    assert all(len(r["steps"]) == 4 and r["steps"][-1].split(": ")[1] == "Most frequent" for r in rows)
    assert all(r["parsed"] for r in rows) and res["methods"]["beam"]["problems"] == 3
    res = search_file(TallyPolicy(), FakeScorer(), str(tally), str(tmp_path / "b"), "bon", cfg, progress=False)
    assert res["methods"]["bon"]["accuracy"] == 0.0  # the built-in checker cannot read the task's answers
    completions = ["Step 1: red tiles: 4\nStep 2: blue tiles: 3\nStep 3: Most frequent: red"]
    assert prm_reward(FakeScorer(), splitter=SPLITTER, per_step=True)(["q"], completions)[0].__len__() == 3
    assert answer_reward(CHECKER)(["q"], completions, answer=["red"]) == [1.0]
    assert answer_reward()(["q"], completions, answer=["red"]) == [0.0]


@pytest.mark.slow
def test_score_cli_with_the_task_splitter(tally, tmp_path):
    from visualprm.tiny import make_tiny_model

    make_tiny_model(tmp_path / "prm", image_size=84)
    rec = {"id": "a", "images": ["p/images/tally1-0000.png"], "question": "q",
           "response": "Step 1: red tiles: 4\nStep 2: blue tiles: 3\nStep 3: Most frequent: red"}  # fmt: skip
    (tmp_path / "in.jsonl").write_text(json.dumps(rec) + "\n")
    for spec, n in ((None, 1), (SPLITTER, 3)):
        args = ["score", "--prm", str(tmp_path / "prm"), "--input", str(tmp_path / "in.jsonl")]
        args += ["--out", str(tmp_path / "out.jsonl")] + (["--splitter", spec] if spec else [])
        assert main(args) == 0
        assert len(lines(tmp_path / "out.jsonl")[0]["step_scores"]) == n


@pytest.mark.slow
def test_worked_example_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "examples"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "examples" / "own_task" / "run.py"), "--out", str(tmp_path / "t"), "--quick"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["train_problems"] == 8 and s["test_solutions"] == 8
    assert set(s["search_accuracy"]) == {"bon", "beam"}
    assert (tmp_path / "t" / "prm" / "visualprm.json").is_file()
    scored = lines(tmp_path / "t" / "scored.jsonl")
    assert all(len(x["step_scores"]) == 4 for x in scored)  # the task's steps, not one blank-line step
