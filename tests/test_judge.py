"""The MLLM judge: parsing messy replies into per-step verdicts, and `bench --judge` against a local
OpenAI-compatible test server that answers in several formats."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from visualprm.cli import main
from visualprm.judge import Judge, parse_spec, parse_verdicts

T, F_, N = True, False, None


@pytest.mark.parametrize(
    "reply, n, verdicts, extra, fmt",
    [
        ("Step 1: correct\nStep 2: incorrect\nStep 3: correct", 3, [T, F_, T], 0, "labelled"),
        ("**Step 1** - Correct\n**Step 2** - Wrong, 3*4 is 12\n**Step 3**: ✓", 3, [T, F_, T], 0, "labelled"),
        ("Steps 1-3 are correct. Step 4: incorrect", 4, [T, T, T, F_], 0, "labelled"),
        ("Steps 1, 2 and 4 are correct.\nStep 3: incorrect.", 4, [T, T, F_, T], 0, "labelled"),
        ("Step 1: +\nStep 2: -\nStep 3: (+)", 3, [T, F_, T], 0, "labelled"),
        ("Step 1: correct. Step 2: incorrect. Step 3: correct.", 3, [T, F_, T], 0, "labelled"),
        # the analysis mentions steps; the closing summary wins
        ("Step 2 looks wrong at first.\nOn reflection:\nStep 1: correct\nStep 2: correct", 2, [T, T], 0, "labelled"),
        ("Step 1: No errors here.\nStep 2: Not correct: the sign flips.", 2, [T, F_], 0, "labelled"),
        ("Step 1: The right triangle has legs 3 and 4; this is correct.", 1, [T], 0, "labelled"),
        ("1. Correct\n2. **Incorrect** - the sum is 7\n3. correct", 3, [T, F_, T], 0, "labelled"),
        ("| step | verdict |\n|---|---|\n| 1 | correct |\n| 2 | wrong |", 2, [T, F_], 0, "labelled"),
        (
            '```json\n{"steps": [{"step": 1, "verdict": "correct"}, {"step": 2, "verdict": "incorrect"}]}\n```',
            2,
            [T, F_],
            0,
            "json",
        ),  # fmt: skip
        ('Here you go: {"1": "correct", "2": "incorrect", "3": "correct"}', 3, [T, F_, T], 0, "json"),
        ("[1, -1, 1, 1]", 3, [T, F_, T], 1, "json"),
        ('{"verdicts": [true, false]}', 3, [T, F_, N], 0, "json"),
        ("- correct\n- incorrect\n- correct", 3, [T, F_, T], 0, "list"),
        ("* Correct.\n* Correct.", 3, [T, T, N], 0, "list"),
        ("+ + - +", 4, [T, T, F_, T], 0, "sequence"),
        ("++-", 3, [T, T, F_], 0, "sequence"),
        ("correct, correct, wrong", 3, [T, T, F_], 0, "sequence"),
        ("Step 1: correct\nStep 3: incorrect", 3, [T, N, F_], 0, "labelled"),  # a missing step
        ("Step 1: correct\nStep 2: correct\nStep 5: incorrect", 2, [T, T], 1, "labelled"),  # a step that isn't
        ("I cannot judge this.", 2, [N, N], 0, "none"),
        ("", 2, [N, N], 0, "none"),
    ],
)
def test_parse_verdicts(reply, n, verdicts, extra, fmt):
    got = parse_verdicts(reply, n)
    assert got["verdicts"] == verdicts
    assert got["missing"] == sum(v is None for v in verdicts)
    assert got["extra"] == extra
    assert got["format"] == fmt


def test_parse_spec():
    assert parse_spec("openai:gpt-4o@http://127.0.0.1:9000") == ("gpt-4o", "http://127.0.0.1:9000")
    from visualprm.schema import InputError

    with pytest.raises(InputError, match="openai:MODEL@URL"):
        parse_spec("hf:/some/model")


# ---------------------------------------------------------------------------------------------------------------
# A local OpenAI-compatible judge server

REPLIES = {
    "md": "Let me check.\n\n- **Step 1**: correct\n- **Step 2**: incorrect — 3*4 is 12, not 11\n- **Step 3**: correct",
    "json": '```json\n[{"step": 1, "verdict": "correct"}, {"step": 2, "verdict": "correct"}, '
    '{"step": 3, "verdict": "incorrect"}]\n```',
    "lines": "Step 1 reads the chart.\nStep 1: correct\nStep 2: correct\nStep 3: incorrect",
    "missing": "Step 1: incorrect\nStep 3: correct",
    "extra": "Step 1: correct\nStep 2: correct\nStep 3: correct\nStep 4: incorrect",
    "signs": "+ - -",
}
# what each reply becomes as step scores (missing verdict -> 0.5)
EXPECTED_SCORES = {
    "md": [1.0, 0.0, 1.0],
    "json": [1.0, 1.0, 0.0],
    "lines": [1.0, 1.0, 0.0],
    "missing": [0.0, 0.5, 1.0],
    "extra": [1.0, 1.0, 1.0],
    "signs": [1.0, 0.0, 0.0],
    "refuse": [0.5, 0.5, 0.5],
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "judge-1", "object": "model"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.bodies.append(body)
        user = body["messages"][-1]["content"]
        text = "".join(c.get("text", "") for c in user if c["type"] == "text")
        key = text.split("FMT:")[1].split()[0]
        if key == "refuse":
            return self._send(400, {"error": {"message": "image too large"}})
        if key == "flaky":
            with srv.lock:
                srv.flaky += 1
                first = srv.flaky == 1
            if first:
                return self._send(503, {"error": "busy"})
            key = "md"
        reply = REPLIES[key]
        self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                      "finish_reason": "stop"}]})  # fmt: skip


@pytest.fixture
def judge_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.lock, srv.bodies, srv.flaky = threading.Lock(), [], 0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _vpb(tmp_path, keys):
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "img.png")
    lines = []
    for k in keys:
        rec = {"image": ["img.png"], "question": f"Read the chart. FMT:{k} end", "answer": "1",
               "response": {"steps": ["The bar is 3.", "3*4 = 11.", "So the answer is 11."],
                            "process_correctness": [1, -1, -1]},
               "policy_model": "P", "data_source": "S"}  # fmt: skip
        lines.append(json.dumps(rec))
    p = tmp_path / "vpb.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_bench_judge_against_local_server(tmp_path, judge_server):
    keys = ["md", "json", "lines", "missing", "extra", "signs", "refuse", "flaky"]
    bench_path = _vpb(tmp_path, keys)
    url = f"http://127.0.0.1:{judge_server.server_address[1]}"
    out = tmp_path / "out"
    rc = main(["bench", "--bench", str(bench_path), "--judge", f"openai:judge-1@{url}", "--out", str(out),
               "--bootstrap", "0", "--concurrency", "3"])  # fmt: skip
    assert rc == 0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    want = dict(EXPECTED_SCORES, flaky=EXPECTED_SCORES["md"])
    assert [s["step_scores"] for s in samples] == [want[k] for k in keys]
    assert [s["judge"]["format"] for s in samples] == ["labelled", "json", "labelled", "labelled", "labelled",
                                                       "sequence", "error", "labelled"]  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    jp = res["judge_parse"]
    assert jp["solutions"] == 8 and jp["missing_verdicts"] == 1 + 3 and jp["extra_verdicts"] == 1
    assert jp["refused_requests"] == 1
    # the prompt: the image as a data URL, the question, the numbered steps as given
    body = judge_server.bodies[0]
    user = body["messages"][-1]["content"]
    assert user[0]["type"] == "image_url" and user[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = user[-1]["text"]
    assert "Step 1: The bar is 3." in text and "Step 3: So the answer is 11." in text
    assert body["model"] == "judge-1" and body["temperature"] == 0.0
    assert judge_server.flaky == 2  # the 503 was retried
    # steps judged correct: gold [1, -1, -1] per record; pooled metric is computed from these scores
    assert 0.0 <= res["overall"]["macro_f1"] <= 1.0


def test_bench_judge_unreachable_server_exits_1(tmp_path, capsys):
    bench_path = _vpb(tmp_path, ["md"])
    rc = main(["bench", "--bench", str(bench_path), "--judge", "openai:j@http://127.0.0.1:9", "--out",
               str(tmp_path / "o")])  # fmt: skip
    assert rc == 1
    assert "cannot reach" in capsys.readouterr().err


def test_judge_as_best_of_n_scorer(judge_server):
    url = f"http://127.0.0.1:{judge_server.server_address[1]}"
    j = Judge.from_spec(f"openai:judge-1@{url}")
    groups = [{"question": "FMT:md q", "images": [], "solutions": [["a", "b", "c"], ["d", "e", "f"]]},
              {"question": "FMT:signs q", "images": [], "solutions": [["a", "b", "c"]]}]  # fmt: skip
    scores = j.score_groups(groups)
    assert scores == [[[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]]
    from visualprm.scoring import aggregate

    assert aggregate(scores[0][0], "mean") == pytest.approx(2 / 3)  # fraction of steps judged correct
