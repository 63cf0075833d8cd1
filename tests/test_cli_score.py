"""`visualprm score` and `make-tiny-model` from the command line: real images, bad input, no half-written output."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from conftest import shared_data  # noqa: E402
from PIL import Image  # noqa: E402

from visualprm.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    out = tmp_path_factory.mktemp("prm") / "tiny"
    assert main(["make-tiny-model", str(out), "--arch", "qwen2_vl"]) == 0
    return out


@pytest.fixture()
def data(tmp_path):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return tmp_path


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_score_mathv_testmini_real_images(tiny_prm, tmp_path):
    root = shared_data("mathv-testmini")
    recs = [json.loads(line) for line in (root / "testmini.jsonl").read_text().splitlines() if line.strip()]
    assert len(recs) == 304
    sols = []
    for r in recs:
        steps = [f"Look at the image for problem {r['id']}.", "Reason about it.", f"Final answer: {r['answer']}"]
        sol = {"id": r["id"], "image": r["image"], "question": r["question"], "steps": steps}
        sols.append({**sol, "level": r["level"]})
    inp = _write(tmp_path / "sols.jsonl", sols)
    out = tmp_path / "scored.jsonl"
    code = main(["score", "--prm", str(tiny_prm), "--input", str(inp), "--out", str(out), "--image-root", str(root)])
    assert code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 304 and [x["id"] for x in lines] == [r["id"] for r in recs]
    for x in lines:
        assert len(x["step_scores"]) == 3 and x["aggregate"] == "mean" and "level" in x
        assert 0.0 < x["score"] < 1.0
        assert abs(x["score"] - sum(x["step_scores"]) / 3) < 1e-5


def test_score_response_split_and_aggregate(tiny_prm, data):
    inp = _write(data / "in.jsonl", [{"id": "a", "images": ["red.png"], "question": "q", "response": "x\n\ny\n\nz"}])
    out = data / "out.jsonl"
    assert main(["score", "--prm", str(tiny_prm), "--input", str(inp), "--out", str(out), "--aggregate", "min"]) == 0
    rec = json.loads(out.read_text())
    assert rec["steps"] == ["x", "y", "z"] and rec["score"] == min(rec["step_scores"]) and rec["aggregate"] == "min"


BAD = [
    ("not json", ["{oops"], ":1: not valid JSON"),
    ("missing field", [{"id": 1, "steps": ["a"]}], ":1: field 'question': missing"),
    ("missing image", [{"question": "q", "images": ["nope.png"], "steps": ["a"]}], "'images': image file not found"),
    ("corrupt image", [{"question": "q", "images": ["corrupt.png"], "steps": ["a"]}], "'images': cannot read image"),
    ("empty steps", [{"question": "q", "steps": []}], ":1: field 'steps': empty step list"),
    ("second line", [{"question": "q", "steps": ["a"]}, {"question": "q", "steps": 3}], ":2: field 'steps'"),
]


@pytest.mark.parametrize("name,lines,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_and_no_output(tiny_prm, data, capsys, name, lines, message):
    inp = _write(data / "bad.jsonl", lines)
    out = data / "never.jsonl"
    code = main(["score", "--prm", str(tiny_prm), "--input", str(inp), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("visualprm score: error: ") and message in err[0]
    assert str(inp) in err[0] or "image" in message
    assert not out.exists() and not list(data.glob(".never.jsonl*"))


def test_model_folder_without_processor(tiny_prm, data, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((tiny_prm / f).read_bytes())
    inp = _write(data / "in.jsonl", [{"question": "q", "steps": ["a"]}])
    code = main(["score", "--prm", str(bare), "--input", str(inp), "--out", str(data / "o.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "field 'processor'" in err[0] and str(bare) in err[0]
    assert not (data / "o.jsonl").exists()


def test_unknown_aggregate_is_usage_error(tiny_prm, data):
    inp = _write(data / "in.jsonl", [{"question": "q", "steps": ["a"]}])
    proc = subprocess.run(
        [sys.executable, "-m", "visualprm", "score", "--prm", str(tiny_prm), "--input", str(inp)]
        + ["--out", str(data / "o.jsonl"), "--aggregate", "median"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "invalid choice: 'median'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (data / "o.jsonl").exists()


def test_help_is_instant_and_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, visualprm.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip() == "False"  # the CLI imports no torch until a command needs it
    proc = subprocess.run([sys.executable, "-m", "visualprm", "--help"], capture_output=True, text=True)
    for cmd in ("score", "bon", "make-tiny-model"):
        assert cmd in proc.stdout
