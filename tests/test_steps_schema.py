"""Step splitting, PRM chat layout, and record validation (no torch)."""

import json

import pytest

from visualprm import schema
from visualprm.schema import load_splitter
from visualprm.steps import (
    PRM_SYSTEM_PROMPT,
    conversation_to_turns,
    prm_messages,
    split_step_markers,
    split_steps,
    turns_to_messages,
)


def test_split_blank_lines_and_drop_empty():
    assert split_steps("a\n\nb\n\n\n\nc\n\n") == ["a", "b", "c"]
    assert split_steps("one line\nsame step\n\ntwo") == ["one line\nsame step", "two"]
    assert split_steps("   \n\n  ") == []


def test_split_merges_to_max_steps_in_groups_of_ceil():
    text = "\n\n".join(str(i) for i in range(13))
    steps = split_steps(text, max_steps=12)
    assert len(steps) == 7  # ceil(13 / 12) = 2 paragraphs a step
    assert steps[0] == "0\n\n1" and steps[-1] == "12"
    text = "\n\n".join(str(i) for i in range(25))
    steps = split_steps(text, max_steps=12)
    assert len(steps) == 9 and steps[0] == "0\n\n1\n\n2"  # ceil(25 / 12) = 3
    assert split_steps("\n\n".join("x" * 12), max_steps=12) == ["x"] * 12


def test_split_markers_and_regex_and_custom():
    text = "Intro.\nStep 1: count.\nmore\nStep 2: add.\n**Step 3:** answer."
    assert split_step_markers(text) == ["Intro.", "Step 1: count.\nmore", "Step 2: add.", "**Step 3:** answer."]
    assert split_step_markers("no markers\n\nhere") == ["no markers", "here"]
    f = load_splitter(r"re:\n(?=- )")
    assert f("- a\n- b\n- c", 12) == ["- a", "- b", "- c"]
    assert load_splitter("visualprm.steps:split_steps") is split_steps
    with pytest.raises(schema.InputError, match="splitter"):
        load_splitter("nosuchmodule_xyz:f")
    with pytest.raises(schema.InputError, match="unknown splitter"):
        load_splitter("bogus")


def test_prm_messages_layout():
    msgs = prm_messages("What is 1+1?", ["s1", "s2"], ["+", "-"], n_images=2)
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": PRM_SYSTEM_PROMPT}]}
    assert msgs[1]["content"] == [
        {"type": "text", "text": "### Question:\n"},
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "\nWhat is 1+1?\n\n### Solution Process:\ns1"},
    ]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[2]["content"][0]["text"] == "+" and msgs[3]["content"][0]["text"] == "s2"
    assert msgs[4]["content"][0]["text"] == "-"
    no_sys = prm_messages("q", ["s"], ["+"], 0, system_prompt=False)
    assert [m["role"] for m in no_sys] == ["user", "assistant"]
    assert PRM_SYSTEM_PROMPT.startswith("You are an advanced AI assistant, designed to serve as a process")
    assert PRM_SYSTEM_PROMPT.endswith("correctness of each step in the given solution process.")


def test_official_conversation_layout():
    conv = [
        {"from": "system", "value": "SYS"},
        {"from": "human", "value": "### Question:\n<image>\nQ\n\n### Solution Process:\nA"},
        {"from": "gpt", "value": "+"},
        {"from": "human", "value": "B"},
        {"from": "gpt", "value": "-"},
    ]
    system, turns = conversation_to_turns(conv)
    assert system == "SYS" and [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    msgs = turns_to_messages(system, turns, n_images=1)
    assert msgs[1]["content"] == [
        {"type": "text", "text": "### Question:\n"},
        {"type": "image"},
        {"type": "text", "text": "\nQ\n\n### Solution Process:\nA"},
    ]
    with pytest.raises(ValueError, match="unknown speaker"):
        conversation_to_turns([{"from": "bot", "value": "x"}])


def test_read_jsonl_errors_name_file_line_field(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"question": "q", "steps": ["a"]}\n{bad json\n')
    with pytest.raises(schema.InputError) as e:
        list(schema.read_jsonl(p))
    assert str(e.value).startswith(f"{p}:2: not valid JSON")
    p.write_text('{"steps": ["a"]}\n')
    loc, rec = next(schema.read_jsonl(p))
    with pytest.raises(schema.InputError) as e:
        schema.solution(rec, loc)
    assert str(e.value) == f"{p}:1: field 'question': missing"
    with pytest.raises(schema.InputError, match="empty step list"):
        schema.solution({"question": "q", "steps": []}, loc)
    with pytest.raises(schema.InputError, match="step 1 is empty"):
        schema.solution({"question": "q", "steps": ["a", "  "]}, loc)


def test_official_field_names(tmp_path):
    loc = schema.Loc("f.jsonl", 3)
    sol = schema.solution({"image": "a.png", "question": "q", "response": {"steps": ["x", "y"]}}, loc)
    assert sol["images"] == ["a.png"] and sol["steps"] == ["x", "y"] and "image" not in sol
    ann = schema.annotated(
        {
            "image": ["a.png"],
            "question": "q",
            "answer": "1",
            "steps_with_score": [{"step": "s", "score": 0.5, "num_mc_correct": 8, "num_mc_total": 16}],
        },
        loc,
    )
    assert ann["steps"] == [{"text": "s", "mc": 0.5, "n_correct": 8, "n_total": 16}]
    with pytest.raises(schema.InputError, match=r"mc 1.5 outside \[0, 1\]"):
        schema.annotated({"question": "q", "steps": [{"text": "s", "mc": 1.5}]}, loc)


def test_atomic_write_and_torn_tail(tmp_path):
    p = tmp_path / "out.jsonl"
    schema.write_jsonl(p, [{"a": 1}, {"b": "é"}])
    assert p.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'

    def boom():
        yield {"a": 1}
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        schema.write_jsonl(tmp_path / "never.jsonl", boom())
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.jsonl"]
    with open(p, "a") as f:
        f.write('{"torn": ')
    assert [r for _, r in schema.read_jsonl(p, allow_torn_tail=True)] == [{"a": 1}, {"b": "é"}]
    assert schema.repair_torn_tail(p) == len('{"torn": ')
    assert json.loads(p.read_text().splitlines()[-1]) == {"b": "é"}
