"""build-data: value / advantage / soft / ORM labels, the conversation layout, the summary; reading training
conversations (the official VisualPRM400K layout included) and their errors; held-out split and step metrics."""

import json

import pytest
from PIL import Image

from visualprm.builddata import (
    build_data_file,
    check_label_mode,
    read_conversations,
    split_problems,
    step_metrics,
    system_prompt_of,
)
from visualprm.cli import main
from visualprm.schema import InputError
from visualprm.steps import PRM_SYSTEM_PROMPT


def _write(path, recs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def _steps(texts, mcs):
    return [{"text": t, "mc": m, "n_correct": None, "n_total": None} for t, m in zip(texts, mcs)]


@pytest.fixture()
def annotated(tmp_path):
    (tmp_path / "ann" / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "ann" / "img" / "a.png")
    recs = [
        # problem P: one correct, one wrong solution -> pass rate 0.5 = mc_{-1}
        {"id": "P-0", "problem_id": "P", "images": ["img/a.png"], "question": "How many?", "correct": True,
         "steps": _steps(["Count: 3.", "3 + 1 = 4.", "Final answer: 4"], [0.5, 1.0, 1.0])},
        {"id": "P-1", "problem_id": "P", "images": ["img/a.png"], "question": "How many?", "correct": False,
         "steps": _steps(["Count: 3.", "3 + 2 = 4.", "Final answer: 4"], [0.5, 0.25, 0.0])},
        # official raw layout (steps_with_score, image, no id, no correct): pass rate from its last step's mc
        {"image": "img/a.png", "question": "Colour?",
         "steps_with_score": [{"step": "It is red.", "score": 0.0, "num_mc_correct": 0, "num_mc_total": 16},
                              {"step": "Final answer: red", "score": 0.0, "num_mc_correct": 0, "num_mc_total": 16}]},
    ]  # fmt: skip
    return _write(tmp_path / "ann" / "annotated.jsonl", recs)


def _convs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_value_labels_layout_and_relative_images(annotated, tmp_path, capsys):
    out = tmp_path / "data" / "train.jsonl"
    summary = build_data_file(str(annotated), str(out), labels="value", threshold=0.0)
    recs = _convs(out)
    assert [r["id"] for r in recs] == ["P-0", "P-1", "line3"]
    r = recs[1]
    assert r["image"] == ["../ann/img/a.png"] and r["problem_id"] == "P" and "mc" not in r
    assert r["conversations"] == [
        {"from": "system", "value": PRM_SYSTEM_PROMPT},
        {"from": "human", "value": "### Question:\n<image>\nHow many?\n\n### Solution Process:\nCount: 3."},
        {"from": "gpt", "value": "+"},
        {"from": "human", "value": "3 + 2 = 4."},
        {"from": "gpt", "value": "+"},
        {"from": "human", "value": "Final answer: 4"},
        {"from": "gpt", "value": "-"},
    ]
    assert [c["value"] for c in recs[2]["conversations"][2::2]] == ["-", "-"]
    assert summary["label_counts"] == {"+": 5, "-": 3} and summary["steps"] == 8 and summary["dropped"] == {}
    printed = capsys.readouterr().out
    assert "3 records -> 3 conversations, 8 steps" in printed and "+ 5 (62.5%), - 3 (37.5%)" in printed
    # the layout reads back unchanged, images resolved against the output file
    ex = read_conversations(out)
    assert ex[1]["labels"] == ["+", "+", "-"] and ex[1]["images"][0].endswith("ann/img/a.png")
    assert system_prompt_of(ex) is True


def test_threshold(annotated, tmp_path):
    out = tmp_path / "t.jsonl"
    build_data_file(str(annotated), str(out), threshold=0.5)
    assert [[c["value"] for c in r["conversations"][2::2]] for r in _convs(out)][:2] == [
        ["-", "+", "+"],
        ["-", "-", "-"],
    ]


def test_advantage_labels_use_pass_rate_as_mc_minus_1(annotated, tmp_path):
    out = tmp_path / "adv.jsonl"
    summary = build_data_file(str(annotated), str(out), labels="advantage")
    labels = [[c["value"] for c in r["conversations"][2::2]] for r in _convs(out)]
    # P: pass rate 0.5; P-0 mc 0.5, 1, 1 -> = + = ; P-1 mc 0.5, .25, 0 -> = - - ; raw record: pass rate 0 -> = =
    assert labels == [["=", "+", "="], ["=", "-", "-"], ["=", "="]]
    assert summary["label_counts"] == {"+": 1, "=": 5, "-": 2}


def test_soft_labels_keep_mc(annotated, tmp_path):
    out = tmp_path / "soft.jsonl"
    build_data_file(str(annotated), str(out), labels="soft")
    recs = _convs(out)
    assert recs[1]["mc"] == [0.5, 0.25, 0.0]
    assert [c["value"] for c in recs[1]["conversations"][2::2]] == ["+", "+", "-"]
    assert read_conversations(out)[1]["mc"] == [0.5, 0.25, 0.0]


def test_orm_one_turn_last_mc(annotated, tmp_path):
    out = tmp_path / "orm.jsonl"
    build_data_file(str(annotated), str(out), orm=True, system_prompt=False)
    r = _convs(out)[1]
    assert r["conversations"] == [
        {
            "from": "human",
            "value": "### Question:\n<image>\nHow many?\n\n### Solution Process:\n"
            "Count: 3.\n\n3 + 2 = 4.\n\nFinal answer: 4",
        },
        {"from": "gpt", "value": "-"},
    ]
    with pytest.raises(InputError, match="advantage labels need steps"):
        build_data_file(str(annotated), str(tmp_path / "x.jsonl"), labels="advantage", orm=True)


def test_dropped_records_and_why(tmp_path, capsys):
    recs = [
        {"id": "a", "question": "q", "steps": _steps(["s1"], [1.0])},
        {"id": "b", "question": "q", "steps": _steps(["s1"], [1.0])},
        {"id": "c", "question": "see <image> here", "steps": _steps(["s1"], [1.0])},
    ]
    ann = _write(tmp_path / "a.jsonl", recs)
    s = build_data_file(str(ann), str(tmp_path / "o.jsonl"), dedup=True)
    assert s["records_out"] == 1
    assert s["dropped"] == {
        "question or a step contains the text <image>": 1,
        "duplicate of an earlier solution (same question, images and steps)": 1,
    }
    assert "dropped 2 records" in capsys.readouterr().out
    assert build_data_file(str(ann), str(tmp_path / "o.jsonl"))["records_out"] == 2  # duplicates kept by default


def test_cli_build_data_and_bad_input(annotated, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    assert main(["build-data", "--annotated", str(annotated), "--out", str(out), "--labels", "soft"]) == 0
    assert len(_convs(out)) == 3
    bad = _write(tmp_path / "bad.jsonl", [{"id": "x", "question": "q", "steps": _steps(["s"], [1.5])}])
    capsys.readouterr()
    assert main(["build-data", "--annotated", str(bad), "--out", str(tmp_path / "b.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:1" in err and "mc 1.5 outside [0, 1]" in err
    assert not (tmp_path / "b.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------
# reading training conversations


def _official(tmp_path, recs):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    return _write(tmp_path / "conv.jsonl", recs)


def _conv(labels, first="### Question:\n<image>\nQ\n\n### Solution Process:\ns1", system=True):
    conv = [{"from": "system", "value": PRM_SYSTEM_PROMPT}] if system else []
    for k, lab in enumerate(labels):
        conv += [{"from": "human", "value": first if k == 0 else f"s{k + 1}"}, {"from": "gpt", "value": lab}]
    return conv


@pytest.mark.parametrize(
    "rec, message",
    [
        ({"image": "x.png", "conversations": [{"from": "human", "value": "q"}]}, "no label turns"),
        ({"image": "x.png", "conversations": _conv(["+", "yes"])}, "gpt turn 1 is 'yes', not a label"),
        ({"image": "missing.png", "conversations": _conv(["+"])}, "image file not found"),
        ({"image": "x.png", "conversations": _conv(["+", "-"]), "mc": [0.5, 1.2]}, "mc[1] = 1.2 is outside [0, 1]"),
        ({"image": "x.png", "conversations": _conv(["+", "-"]), "mc": [0.5]}, "expected a list of 2 numbers"),
        ({"image": "x.png", "conversations": [{"from": "gpt", "value": "+"}]}, "turn 0 is assistant"),
        ({"image": "x.png", "conversations": _conv(["+"], first="<image><image> q")}, "2 <image> placeholders"),
        ({"image": "x.png"}, "field 'conversations': missing"),
    ],
)
def test_read_conversations_errors(tmp_path, rec, message):
    path = _official(tmp_path, [{"id": "ok", "image": "x.png", "conversations": _conv(["+"])}, rec])
    with pytest.raises(InputError, match=message.replace("[", "\\[").replace("]", "\\]")) as e:
        read_conversations(path)
    assert "conv.jsonl:2" in str(e.value)


def test_label_mode_checks(tmp_path):
    path = _official(tmp_path, [{"id": "a", "image": ["x.png"], "conversations": _conv(["+", "=", "-"])}])
    ex = read_conversations(path)
    assert check_label_mode(ex, "auto") == "advantage"
    with pytest.raises(InputError, match="'=' is not a value label"):
        check_label_mode(ex, "value")
    ex[0]["mc"] = [1.0, 1.0, 0.0]
    with pytest.raises(InputError, match="soft labels \\(mc\\) need value labels"):
        check_label_mode(ex, "advantage")


def test_system_prompt_of(tmp_path):
    recs = [{"id": "a", "conversations": _conv(["+"], first="q", system=False)}]
    assert system_prompt_of(read_conversations(_write(tmp_path / "a.jsonl", recs))) is False
    recs.append({"id": "b", "conversations": _conv(["+"], first="q")})
    with pytest.raises(InputError, match="differ in their system turn"):
        system_prompt_of(read_conversations(_write(tmp_path / "b.jsonl", recs)))


def test_split_keeps_problems_together(tmp_path):
    recs = [
        {"id": f"{p}-{i}", "problem_id": p, "conversations": _conv(["+"], first="q")}
        for p in "abcdefghij"
        for i in range(3)
    ]
    ex = read_conversations(_write(tmp_path / "s.jsonl", recs))
    train, held = split_problems(ex, 0.2, seed=0)
    assert len(held) == 6 and len(train) == 24
    assert not {e["group"] for e in train} & {e["group"] for e in held}
    assert split_problems(ex, 0.2, seed=0) == (train, held)  # seeded
    assert split_problems(ex, 0.0, seed=0) == (ex, [])


def test_step_metrics_exact():
    # value: P(+) >= 0.5 predicts correct; gold classes 0 = +, 1 = -
    probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6]]
    m = step_metrics(probs, [0, 1, 1, 0], mc=[1.0, -1, 0.0, 0.5])
    # TP(+)=1, FP(+)=1, FN(+)=1 -> F1(+) = 0.5; for '-' the same -> macro 0.5; accuracy 2/4
    assert m["step_accuracy"] == 0.5 and m["f1_+"] == 0.5 and m["f1_-"] == 0.5 and m["macro_f1"] == 0.5
    assert m["soft_mse"] == pytest.approx((0.1**2 + 0.2**2 + 0.1**2) / 3)
    # a class absent from gold and predictions still counts (F1 0), as bench does
    assert step_metrics([[0.9, 0.1]], [0])["macro_f1"] == 0.5
    adv = step_metrics([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], [0, 1, 1], label_mode="advantage")
    assert adv["step_accuracy"] == pytest.approx(2 / 3)
    assert adv["f1_+"] == 1.0 and adv["f1_="] == pytest.approx(2 / 3) and adv["f1_-"] == 0.0
