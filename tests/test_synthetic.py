"""The synthetic task: problems, images, the scripted policy, per-step ground truth."""

import json
from collections import Counter

import pytest
from PIL import Image

from visualprm.cli import main
from visualprm.policy import GenRequest
from visualprm.schema import InputError
from visualprm.synthetic import (
    COLORS,
    SyntheticPolicy,
    check_steps,
    describe_scene,
    final_answer,
    gold_step_correct,
    make_problems,
    parse_synthetic_spec,
    problem_records,
    render_scene,
    scene_values,
    step_error_kind,
)

PERFECT = SyntheticPolicy(perception=0.0, reasoning=0.0, hard=0.0)


def _shapes_problem(op="sum2", keys=("red", "blue"), const=None, counts=None):
    counts = counts or {"red": 3, "blue": 2, "green": 1}
    objects, cell = [], 0
    for color, k in counts.items():
        for _ in range(k):
            objects.append({"shape": "circle", "color": color, "row": cell // 3, "col": cell % 3, "dx": 0, "dy": 0})
            cell += 1
    return {
        "id": "t",
        "question": "q",
        "scene": {"kind": "shapes", "objects": objects},
        "task": {"op": op, "keys": list(keys), "const": const},
    }


def _recount_answer(rec):
    """The gold answer recomputed here from the scene, independently of synthetic.py's plan."""
    scene, task = rec["scene"], rec["task"]
    if scene["kind"] == "shapes":
        v = Counter(o["color"] for o in scene["objects"])
        total = len(scene["objects"])
    else:
        v = {b["color"]: b["value"] for b in scene["bars"]}
    k = task["keys"]
    return {
        "sum2": lambda: v[k[0]] + v[k[1]],
        "diff": lambda: abs(v[k[0]] - v[k[1]]),
        "sum3": lambda: v[k[0]] + v[k[1]] + v[k[2]],
        "times": lambda: v[k[0]] * task["const"],
        "rest": lambda: total - v[k[0]],
    }[task["op"]]()


def test_make_problems_deterministic_and_images_render(tmp_path):
    a = make_problems(tmp_path / "a", n=12, seed=3, image_size=56)
    b = make_problems(tmp_path / "b", n=12, seed=3, image_size=56)
    assert a == b
    for rec in a:
        assert (tmp_path / "a" / rec["images"][0]).read_bytes() == (tmp_path / "b" / rec["images"][0]).read_bytes()
    lines = (tmp_path / "a" / "problems.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == a
    assert problem_records(5, 3) == a[:5]  # problem i does not depend on n
    assert problem_records(12, 4) != a
    assert a[0]["id"] == "syn3-00000" and a[0]["images"] == ["images/syn3-00000.png"]
    assert a[0]["source"] == "synthetic"
    im = Image.open(tmp_path / "a" / a[0]["images"][0])
    assert im.size == (56, 56) and im.mode == "RGB"


def test_pixels_show_the_scene():
    recs = problem_records(40, 1)
    shapes = next(r for r in recs if r["scene"]["kind"] == "shapes")
    im = render_scene(shapes["scene"], 112)
    cell = 112 / 3
    for o in shapes["scene"]["objects"]:
        centre = (int((o["col"] + 0.5 + o["dx"]) * cell), int((o["row"] + 0.5 + o["dy"]) * cell) + 4)
        assert im.getpixel(centre) == COLORS[o["color"]]
    occupied = {(o["row"], o["col"]) for o in shapes["scene"]["objects"]}
    empty = [(r, c) for r in range(3) for c in range(3) if (r, c) not in occupied]
    for r, c in empty:
        assert im.getpixel((int((c + 0.5) * cell), int((r + 0.5) * cell))) == (255, 255, 255)
    bars = next(r for r in recs if r["scene"]["kind"] == "bars")
    im = render_scene(bars["scene"], 56)
    base, unit, slot = 0.92 * 56, (0.84 * 56) / 5.5, (56 - 0.08 * 56) / 3
    for i, b in enumerate(bars["scene"]["bars"]):
        x = int(0.08 * 56 + (i + 0.5) * slot)
        assert im.getpixel((x, int(base - (b["value"] - 0.5) * unit))) == COLORS[b["color"]]
        assert im.getpixel((x, int(base - (b["value"] + 0.4) * unit))) != COLORS[b["color"]]


def test_gold_answers_recount_from_scene():
    recs = problem_records(300, 2)
    assert {r["scene"]["kind"] for r in recs} == {"shapes", "bars"}
    assert {r["task"]["op"] for r in recs} == {"sum2", "diff", "sum3", "times", "rest"}
    for r in recs:
        assert r["answer"] == str(_recount_answer(r)), r
        assert r["question"]
    first = recs[0]
    assert (first["question"], first["answer"]) == (
        "In the bar chart, grid lines are 1 unit apart. What is the sum of the blue, yellow and green bars?",
        "10",
    )
    assert describe_scene(first["scene"]) == "The blue bar is 5, the yellow bar is 1, the green bar is 4."
    only = problem_records(20, 2, kinds=("shapes",))
    assert {r["scene"]["kind"] for r in only} == {"shapes"}


def test_policy_deterministic_under_seed():
    recs = problem_records(30, 1)
    pol = SyntheticPolicy()
    reqs = [GenRequest(problem=r, n=3, seed=7 + i) for i, r in enumerate(recs)]
    a, b = pol.generate(reqs), SyntheticPolicy().generate(reqs)
    assert a == b
    c = pol.generate([GenRequest(problem=r, n=3, seed=1000 + i) for i, r in enumerate(recs)])
    assert a != c
    # a request's output does not depend on what else is in the batch
    assert pol.generate(reqs[5:6]) == a[5:6]
    assert pol.name == "synthetic"


def test_correct_prefix_continues_to_the_same_correct_solution():
    for r in problem_records(20, 5):
        full = PERFECT.generate([GenRequest(problem=r)])[0][0]
        steps = full.split("\n\n")
        assert final_answer(full) == r["answer"] and gold_step_correct(r, steps) == [True] * len(steps)
        for k in range(1, len(steps)):
            prefix = "\n\n".join(steps[:k])
            text = PERFECT.generate([GenRequest(problem=r, prefix=prefix, seed=k)])[0][0]
            assert text.startswith("\n\n") and prefix + text == full
            text = PERFECT.generate([GenRequest(problem=r, prefix=prefix + "\n\n", seed=k)])[0][0]
            assert prefix + "\n\n" + text == full
        assert PERFECT.generate([GenRequest(problem=r, prefix=full)])[0][0] == ""


def test_perception_mistake_in_prefix_propagates():
    p = _shapes_problem()  # 3 red, 2 blue: answer 5
    text = PERFECT.generate([GenRequest(problem=p, prefix="There are 4 red shapes.", n=2)])[0]
    assert text == ["\n\nThere are 2 blue shapes.\n\n4 + 2 = 6.\n\nFinal answer: 6"] * 2
    # a wrong arithmetic result is carried into the final answer
    text = PERFECT.generate(
        [GenRequest(problem=p, prefix="There are 3 red shapes.\n\nThere are 2 blue shapes.\n\n3 + 2 = 7.")]
    )
    assert text == [["\n\nFinal answer: 7"]]


def test_unparseable_prefix_still_gets_a_full_solution():
    p = _shapes_problem()
    text = PERFECT.generate([GenRequest(problem=p, prefix="Let me look at the image carefully.")])[0][0]
    assert text == "\n\nThere are 3 red shapes.\n\nThere are 2 blue shapes.\n\n3 + 2 = 5.\n\nFinal answer: 5"
    with pytest.raises(InputError, match="scene"):
        PERFECT.generate([GenRequest(problem={"id": "x", "question": "q", "answer": "1"})])


def test_stop_gives_one_step_and_steps_chain_to_the_full_solution():
    for r in problem_records(10, 6):
        full = PERFECT.generate([GenRequest(problem=r)])[0][0]
        prefix, n_steps = "", 0
        while True:
            text = PERFECT.generate([GenRequest(problem=r, prefix=prefix, stop=["\n\n"])])[0][0]
            if not text:
                break
            assert text.count("\n\n") == (1 if prefix else 0) and text.startswith("\n\n") == bool(prefix)
            prefix += text
            n_steps += 1
        assert prefix == full and n_steps == len(full.split("\n\n"))
    noisy = SyntheticPolicy().generate([GenRequest(problem=r, stop=["\n\n"], n=4) for r in problem_records(10, 6)])
    assert all("\n\n" not in t and t for ts in noisy for t in ts)


def test_gold_step_correct_on_hand_written_solutions():
    p = _shapes_problem()  # 3 red, 2 blue, 1 green; question: red + blue
    good = ["There are 3 red shapes.", "There are 2 blue shapes.", "3 + 2 = 5.", "Final answer: 5"]
    assert gold_step_correct(p, good) == [True] * 4
    assert step_error_kind(p, good) == [None] * 4
    assert (
        gold_step_correct(p, ["There are 2 blue shapes.", "There are 3 red shapes.", "2 + 3 = 5.", "Final answer: 5"])
        == [True] * 4
    )
    miscount = ["There are 3 red shapes.", "There are 3 blue shapes.", "3 + 3 = 6.", "Final answer: 6"]
    assert gold_step_correct(p, miscount) == [True, False, False, False]
    assert step_error_kind(p, miscount) == [None, "perception", "perception", "perception"]
    assert [c["claim_true"] for c in check_steps(p, miscount)[0]] == [True, False, True, True]
    arith = ["There are 3 red shapes.", "There are 2 blue shapes.", "3 + 2 = 6.", "Final answer: 6"]
    assert gold_step_correct(p, arith) == [True, True, False, False]
    assert step_error_kind(p, arith) == [None, None, "reasoning", "reasoning"]
    carried = ["There are 3 red shapes.", "There are 2 blue shapes.", "4 + 2 = 6.", "Final answer: 6"]
    assert step_error_kind(p, carried) == [None, None, "reasoning", "reasoning"]
    wrong_final = ["There are 3 red shapes.", "There are 2 blue shapes.", "3 + 2 = 5.", "Final answer: 4"]
    assert gold_step_correct(p, wrong_final) == [True, True, True, False]
    # cancelling errors reach the right answer, but the process is wrong from the first miscount
    cancel = ["There are 4 red shapes.", "There is 1 blue shape.", "4 + 1 = 5.", "Final answer: 5"]
    assert gold_step_correct(p, cancel) == [False] * 4
    assert gold_step_correct(p, ["blah", "There are 3 red shapes."]) == [False, False]
    q = _shapes_problem("rest", ("red",))  # 6 shapes, 3 red -> 3 not red
    rest = ["There are 6 shapes in total.", "There are 3 red shapes.", "6 - 3 = 3.", "Final answer: 3"]
    assert gold_step_correct(q, rest) == [True] * 4
    assert gold_step_correct(q, rest[:2] + ["3 - 6 = -3.", "Final answer: -3"]) == [True, True, False, False]
    t = _shapes_problem("times", ("blue",), const=4)
    assert gold_step_correct(t, ["There are 2 blue shapes.", "2 × 4 = 8.", "Final answer: 8"]) == [True] * 3
    assert gold_step_correct(t, ["There are 2 blue shapes.", "2 x 3 = 6.", "Final answer: 6"]) == [True, False, False]
    d = _shapes_problem("diff", ("blue", "red"))
    assert (
        gold_step_correct(d, ["There are 2 blue shapes.", "There are 3 red shapes.", "3 - 2 = 1.", "Final answer: 1"])
        == [True] * 4
    )


def test_policy_ground_truth_is_consistent():
    recs = problem_records(60, 8)
    for r in recs:
        steps = PERFECT.generate([GenRequest(problem=r)])[0][0].split("\n\n")
        assert gold_step_correct(r, steps) == [True] * len(steps)
    only_perception = SyntheticPolicy(perception=1.0, reasoning=0.0, hard=0.0)
    for r in recs:
        steps = only_perception.generate([GenRequest(problem=r, seed=1)])[0][0].split("\n\n")
        assert step_error_kind(r, steps) == ["perception"] * len(steps)
        assert final_answer(steps[-1]) != r["answer"] or r["task"]["op"] in ("sum2", "diff", "sum3", "rest")
    only_reasoning = SyntheticPolicy(perception=0.0, reasoning=1.0)
    for r in recs:
        steps = only_reasoning.generate([GenRequest(problem=r, seed=2)])[0][0].split("\n\n")
        kinds = step_error_kind(r, steps)
        first = next(i for i, s in enumerate(steps) if not s.startswith(("There", "The ")))
        assert kinds == [None] * first + ["reasoning"] * (len(steps) - first)


def test_pass_at_1_at_default_rates():
    recs = problem_records(200, 1)
    outs = SyntheticPolicy().generate([GenRequest(problem=r, seed=i) for i, r in enumerate(recs)])
    passed = sum(final_answer(o[0]) == r["answer"] for r, o in zip(recs, outs))
    kinds = Counter(step_error_kind(r, o[0].split("\n\n"))[-1] for r, o in zip(recs, outs))
    print(f"synthetic pass@1 = {passed / 200:.3f} on 200 problems; last-step error kinds {dict(kinds)}")
    assert 0.3 <= passed / 200 <= 0.6
    assert kinds["perception"] > kinds["reasoning"] > 0


def test_spec_parsing():
    assert parse_synthetic_spec("synthetic").name == "synthetic"
    pol = parse_synthetic_spec("synthetic:perception=0.2,reasoning=0.05")
    assert (pol.perception, pol.reasoning, pol.hard) == (0.2, 0.05, 0.3)
    assert pol.name == "synthetic:perception=0.2,reasoning=0.05,hard=0.3"
    for bad in ("synthetic:perception", "synthetic:speed=1", "synthetic:reasoning=x", "synthetic:hard=2", "hf:x"):
        with pytest.raises(InputError):
            parse_synthetic_spec(bad)


def test_scene_values():
    p = _shapes_problem()
    assert scene_values(p["scene"]) == {"red": 3, "blue": 2, "green": 1, "yellow": 0, "total": 6}


def test_cli_make_synthetic(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path / "o"), "--n", "4", "--seed", "2", "--image-size", "64"]) == 0
    assert "wrote 4 problems" in capsys.readouterr().out
    assert len((tmp_path / "o" / "problems.jsonl").read_text().splitlines()) == 4
    assert len(list((tmp_path / "o" / "images").glob("*.png"))) == 4
    assert main(["make-synthetic", str(tmp_path / "p"), "--image-size", "8"]) == 2
    assert main(["make-synthetic", str(tmp_path / "p"), "--kinds", "pies"]) == 2
    assert "kinds" in capsys.readouterr().err
