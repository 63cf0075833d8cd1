"""A PRM behind an OpenAI-compatible server (`--prm openai:MODEL@URL`) against the in-process Scorer.

The fake server (fake_engine.py) renders each request with the tiny model's own processor and chat template and
returns real next-token logprobs, as vLLM does; one server serves every model for the whole module.
"""

import json
import socket

import pytest

torch = pytest.importorskip("torch")

from fake_engine import FakeEngine  # noqa: E402
from PIL import Image  # noqa: E402

from visualprm import scoring, search  # noqa: E402
from visualprm.cli import main  # noqa: E402
from visualprm.model import get_tokenizer, load_model, save_processor  # noqa: E402
from visualprm.openai_client import chat_completions  # noqa: E402
from visualprm.remote_prm import OpenAIScorer, parse_engine_spec, score_from_logprobs  # noqa: E402
from visualprm.rewards import prm_reward  # noqa: E402
from visualprm.schema import InputError  # noqa: E402
from visualprm.scoring import Scorer  # noqa: E402
from visualprm.tiny import ARCHS, build_tiny  # noqa: E402

ITEMS = [
    {
        "question": "How many red circles are there?",
        "images": [Image.new("RGB", (80, 60), (200, 10, 10))],
        "steps": ["There are 3 red circles.", "3 + 2 = 5.", "Final answer: 5"],
    },
    {"question": "Text only: 2+2?", "images": [], "steps": ["2+2=4-", "Final answer: 4\n\nmore", "\\frac{1}{2}"]},
    {
        "question": "Two images.",
        "images": [Image.new("RGB", (56, 56), (0, 200, 0)), Image.new("RGB", (84, 56), (9, 9, 9))],
        "steps": ["Left is green.", "Right is dark."],
    },
]
N_STEPS = sum(len(it["steps"]) for it in ITEMS)
FOLDER_PROMPT = "You are a PRM. Answer + or - for each step."


def _sharpen(model, seed=0):
    # Random tiny models score near 0.5 everywhere; larger weights spread the scores over (0, 1).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models = {}
    for arch in ARCHS:
        model, processor = build_tiny(arch, seed=1)
        models[arch] = (_sharpen(model), processor)
    folder = tmp_path_factory.mktemp("prm") / "tiny"
    model, processor = build_tiny("qwen2_vl", seed=3)
    _sharpen(model, seed=3).save_pretrained(folder)
    save_processor(processor, folder)
    (folder / "visualprm.json").write_text(json.dumps({"label_mode": "value", "system_prompt": FOLDER_PROMPT}))
    models[str(folder)] = load_model(folder, device="cpu", dtype="float32")  # as vLLM serves the folder's path
    models["tiny-prm"] = models[str(folder)]  # the same model under a plain name (no folder at hand)
    fake = FakeEngine(models, max_logprobs=100_000)
    url = fake.start()
    yield fake, url, models, folder
    fake.stop()


@pytest.fixture(autouse=True)
def _reset(served):
    served[0].reset()
    served[0].api_key = None
    served[0].max_logprobs = 100_000


def _maxdiff(a, b):
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_equals_in_process_scorer(served, arch):
    fake, url, models, _ = served
    model, processor = models[arch]
    for system_prompt in (True, False):
        want = Scorer(model, processor, system_prompt=system_prompt, batch_size=4).score_steps(ITEMS)
        # label token ids known (the processor is at hand): vLLM's logprob_token_ids gives them exactly
        eng = OpenAIScorer(arch, url, system_prompt=system_prompt, processor=processor, top_logprobs=1)
        got = eng.score_steps(ITEMS)
        assert _maxdiff(got, want) < 1e-5
        assert eng.counts["bounded_steps"] == 0 and eng.counts["requests"] == N_STEPS
        assert fake.bodies[-1]["logprob_token_ids"] == eng.label_token_ids
    # the plain top-k route: label tokens as strings, no ids, top_logprobs = the whole vocabulary
    vocab = len(get_tokenizer(processor))
    plain = OpenAIScorer(arch, url, label_tokens=eng.label_tokens, top_logprobs=vocab)
    assert plain.label_token_ids is None
    assert _maxdiff(plain.score_steps(ITEMS), Scorer(model, processor).score_steps(ITEMS)) < 1e-5
    assert plain.counts["bounded_steps"] == 0
    if arch == "idefics3":
        assert eng.label_tokens == [" +", " -"]  # "Assistant: +": the template's space is part of the label token


def test_request_shape_and_images_where_the_in_process_path_puts_them(served):
    fake, url, _, _ = served
    eng = OpenAIScorer("qwen2_vl", url, max_tiles=6, system_prompt="SYS", max_top_logprobs=20)  # never ask again
    eng.score_steps(ITEMS[:1])
    bodies = sorted(fake.bodies, key=lambda b: len(b["messages"]))
    assert [len(b["messages"]) for b in bodies] == [2, 4, 6]
    b = bodies[2]
    assert b["max_tokens"] == 1 and b["temperature"] == 0 and b["logprobs"] is True and b["top_logprobs"] == 20
    assert b["mm_processor_kwargs"] == {"max_dynamic_patch": 6}
    assert b["messages"][0] == {"role": "system", "content": "SYS"}
    first = b["messages"][1]["content"]
    assert [c["type"] for c in first] == ["text", "image_url", "text"]
    assert first[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [m["role"] for m in b["messages"][1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert b["messages"][2]["content"] == "+" and b["messages"][5]["content"] == "Final answer: 5"


def test_bound_used_and_counted_when_top_logprobs_is_too_small(served):
    fake, url, models, _ = served
    model, processor = models["qwen2_vl"]
    exact = OpenAIScorer("qwen2_vl", url, processor=processor).score_steps(ITEMS)
    # a server that allows more: bounded steps are asked again (2 -> 20 -> 200 -> 2000) and come out exact
    again = OpenAIScorer("qwen2_vl", url, label_tokens=["+", "-"], top_logprobs=2)
    assert _maxdiff(again.score_steps(ITEMS[:1]), exact[:1]) < 1e-5 and again.counts["bounded_steps"] == 0
    assert again.counts["requests"] > 3 and max(b["top_logprobs"] for b in fake.bodies) == 2000
    # a server whose maximum is 2: the first ask again is refused, the bound is used and counted
    fake.max_logprobs = 2
    fake.reset()
    eng = OpenAIScorer("qwen2_vl", url, label_tokens=["+", "-"], top_logprobs=2)
    got = eng.score_steps(ITEMS)
    assert eng.capped == [True] and sorted(set(fake.statuses)) == [200, 400]
    assert eng.counts["requests"] == N_STEPS + fake.statuses.count(400)
    # expected from the full distribution: a label outside the top 2 gets the 2nd-best logprob
    full = OpenAIScorer("qwen2_vl", url, label_tokens=["+", "-"])
    bodies = [full.body(m["messages"]) for m in fake.bodies[:N_STEPS]]
    fake.max_logprobs = 100_000
    vocab = len(get_tokenizer(processor))
    replies = chat_completions(url, "qwen2_vl", [{**b, "top_logprobs": vocab} for b in bodies])
    want, n_bounded = {}, 0
    for b, r in zip(bodies, replies):
        top = sorted(r["choices"][0]["logprobs"]["content"][0]["top_logprobs"], key=lambda t: -t["logprob"])
        floor = top[1]["logprob"]
        kept = {t["token"]: t["logprob"] for t in top[:2]}
        lps = [kept.get(lab, floor) for lab in ("+", "-")]
        n_bounded += any(lab not in kept for lab in ("+", "-"))
        want[json.dumps(b["messages"])] = score_from_logprobs(lps, "value")
    assert n_bounded > 0 and eng.counts["bounded_steps"] == n_bounded
    flat_got = [x for s in got for x in s]
    flat_exact = [x for s in exact for x in s]
    assert sorted(flat_got) == pytest.approx(sorted(want.values()), abs=1e-9)
    assert sum(abs(a - b) > 1e-5 for a, b in zip(flat_got, flat_exact)) == n_bounded  # only bounded ones differ
    fake.max_logprobs = 2
    off = OpenAIScorer("qwen2_vl", url, processor=processor, top_logprobs=2, send_token_ids=False)
    assert off.score_steps(ITEMS) == got and off.counts["bounded_steps"] == n_bounded
    assert "logprob_token_ids" not in fake.bodies[-1]


def test_429_and_5xx_are_retried(served):
    fake, url, _, _ = served
    _, processor = served[2]["llava"]
    want = OpenAIScorer("llava", url, processor=processor).score_steps(ITEMS[1:2])
    fake.reset()
    fake.fail = [429, 503, 500]
    got = OpenAIScorer("llava", url, processor=processor, retries=3, backoff=0.01).score_steps(ITEMS[1:2])
    assert got == want
    assert sorted(fake.statuses) == [200, 200, 200, 429, 500, 503]


def _solutions(tmp_path):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    recs = [
        {"id": "a", "images": ["red.png"], "question": "How many?", "steps": ["One red box.", "So 1."]},
        {"id": "b", "images": ["red.png"], "question": "Colour?", "response": "It is red.\n\nRed.\n\nDone."},
        {"id": "c", "images": [], "question": "2+2?", "steps": ["4"]},
    ]
    p = tmp_path / "sols.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _error_line(err: str) -> str:
    """The one error line on stderr (progress bars aside), and no traceback."""
    assert "Traceback" not in err
    lines = [x for x in err.replace("\r", "\n").splitlines() if "error:" in x]
    assert len(lines) == 1, lines
    return lines[0][lines[0].index("visualprm ") :]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_score_cli_equals_the_folder_and_takes_its_system_prompt(served, tmp_path, capsys):
    fake, url, _, folder = served
    inp = _solutions(tmp_path)
    assert main(["score", "--prm", str(folder), "--input", str(inp), "--out", str(tmp_path / "f.jsonl")]) == 0
    capsys.readouterr()
    args = ["score", "--prm", f"openai:{folder}@{url}", "--input", str(inp), "--out", str(tmp_path / "e.jsonl")]
    assert main(args) == 0
    out = capsys.readouterr().out
    want, got = _lines(tmp_path / "f.jsonl"), _lines(tmp_path / "e.jsonl")
    assert [r["id"] for r in got] == ["a", "b", "c"]
    assert _maxdiff([r["step_scores"] for r in got], [r["step_scores"] for r in want]) < 1e-5
    assert "6 requests (2.0 per solution)" in out and "0 of 6 steps bounded" in out
    assert f"{fake.prompt_total} prompt tokens ({fake.cached_total} cached" in out and fake.cached_total > 0
    assert {b["messages"][0]["content"] for b in fake.bodies} == {FOLDER_PROMPT}  # recorded in visualprm.json
    # a plain model name: no folder, so no label ids; bounded steps are asked again with more logprobs
    plain = ["score", "--prm", f"openai:tiny-prm@{url}", "--input", str(inp), "--out", str(tmp_path / "p.jsonl")]
    assert main(plain + ["--system-prompt", FOLDER_PROMPT]) == 0
    got = _lines(tmp_path / "p.jsonl")
    assert _maxdiff([r["step_scores"] for r in got], [r["step_scores"] for r in want]) < 1e-5
    assert "0 of 6 steps bounded" in capsys.readouterr().out
    fake.reset()
    assert main(args + ["--no-system-prompt"]) == 0
    assert {b["messages"][0]["role"] for b in fake.bodies} == {"user"}
    fake.reset()
    (tmp_path / "sys.txt").write_text("Judge each step.\nReply + or -.\n")
    assert main(args + ["--system-prompt", f"@{tmp_path / 'sys.txt'}", "--no-logprob-token-ids"]) == 0
    assert {b["messages"][0]["content"] for b in fake.bodies} == {"Judge each step.\nReply + or -."}
    assert not any("logprob_token_ids" in b for b in fake.bodies)


def test_cli_errors_are_one_line(served, tmp_path, capsys):
    fake, url, _, _ = served
    inp = _solutions(tmp_path)
    out = tmp_path / "o.jsonl"
    base = ["score", "--input", str(inp), "--out", str(out)]
    fake.api_key = "secret"
    assert main(base + ["--prm", f"openai:qwen2_vl@{url}", "--api-key", "wrong"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("visualprm score: error: the PRM server at") and "HTTP 401" in err
    assert url in err and "--api-key" in err
    assert main(base + ["--prm", f"openai:qwen2_vl@{url}", "--api-key", "secret"]) == 0
    fake.api_key = None
    fake.no_logprobs = True
    assert main(base + ["--prm", f"openai:qwen2_vl@{url}"]) == 2
    assert "without logprobs" in _error_line(capsys.readouterr().err)
    fake.no_logprobs = False
    assert main(base + ["--prm", f"openai:nope@{url}"]) == 2
    assert "does not exist" in _error_line(capsys.readouterr().err)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.unlink()
    assert main(base + ["--prm", f"openai:qwen2_vl@http://127.0.0.1:{port}", "--prm-retries", "1"]) == 1
    err = _error_line(capsys.readouterr().err)
    assert "unavailable" in err and "after 2 attempts" in err
    assert not out.exists()
    assert main(base + ["--prm", "openai:nourl"]) == 2
    assert "bad PRM spec" in _error_line(capsys.readouterr().err)


def _candidates(tmp_path):
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "blue.png")
    recs = [
        {"id": "p1", "images": ["blue.png"], "question": "2+3?", "answer": "5",
         "responses": ["We add.\n\nThe answer is 7.", "Add them.\n\nThe answer is 5.", "So \\boxed{5}."]},
        {"id": "p2", "images": [], "question": "2*3?", "answer": "6",
         "responses": [["Multiply.", "The answer is 6."], "Thus the answer is 5."]},
    ]  # fmt: skip
    p = tmp_path / "cands.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_bon_and_bench_with_openai_equal_the_folder(served, tmp_path):
    fake, url, _, folder = served
    spec = f"openai:{folder}@{url}"
    inp = _candidates(tmp_path)
    for name, prm in (("f", str(folder)), ("e", spec)):
        assert main(["bon", "--prm", prm, "--input", str(inp), "--out", str(tmp_path / name), "--subsets", "4"]) == 0
    fp, ep = _lines(tmp_path / "f" / "picks.jsonl"), _lines(tmp_path / "e" / "picks.jsonl")
    assert [p["best"] for p in ep] == [p["best"] for p in fp]
    assert _maxdiff([s for p in ep for s in p["step_scores"]], [s for p in fp for s in p["step_scores"]]) < 1e-5
    fr, er = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("f", "e"))
    assert er["accuracy"] == fr["accuracy"] and "prm_engine" not in fr
    assert er["prm_engine"]["requests"] == 8 and er["prm_engine"]["bounded_steps"] == 0

    steps = ["The box is blue.", "So 3 + 4 = 8.", "The answer is 8."]
    rec = {"image": ["blue.png"], "question": "How tall?", "answer": "7", "policy_model": "P", "data_source": "S",
           "response": {"steps": steps, "process_correctness": [1, -1, -1]}}  # fmt: skip
    (tmp_path / "v.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "question": "How wide?"}) + "\n")
    for name, prm in (("bf", str(folder)), ("be", spec)):
        args = ["bench", "--bench", str(tmp_path / "v.jsonl"), "--prm", prm, "--out", str(tmp_path / name)]
        assert main(args + ["--bootstrap", "10"]) == 0
    fs, es = _lines(tmp_path / "bf" / "samples.jsonl"), _lines(tmp_path / "be" / "samples.jsonl")
    assert _maxdiff([s["step_scores"] for s in es], [s["step_scores"] for s in fs]) < 1e-5
    assert [s["pred"] for s in es] == [s["pred"] for s in fs]
    fr, er = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("bf", "be"))
    assert er["overall"] == fr["overall"] and er["prm_engine"]["steps"] == 6


def test_search_with_openai_equals_the_folder(served, tmp_path):
    from visualprm.synthetic import make_problems

    fake, url, _, folder = served
    make_problems(tmp_path / "syn", n=4, seed=2)
    results = {}
    for name, prm in (("f", str(folder)), ("e", f"openai:{folder}@{url}")):
        args = ["search", "--policy", "synthetic", "--prm", prm, "--problems", str(tmp_path / "syn/problems.jsonl")]
        args += ["--out", str(tmp_path / name), "--method", "bon,beam", "--width", "2", "--expand", "2"]
        assert main(args + ["--limit", "1"]) == 0
        results[name] = _lines(tmp_path / name / "samples.jsonl")
    assert [s["response"] for s in results["e"]] == [s["response"] for s in results["f"]]
    assert _maxdiff([s["step_scores"] for s in results["e"]], [s["step_scores"] for s in results["f"]]) < 1e-5
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["prm_engine"]["bounded_steps"] == 0 and res["prm_engine"]["requests"] > 0


def test_load_prm_specs_rewards_and_several_servers(served):
    fake, url, models, _ = served
    model, processor = models["internvl"]
    assert parse_engine_spec("openai:org/m@http://a:1,b:2/v1") == ("org/m", ["http://a:1", "b:2/v1"])
    with pytest.raises(InputError, match="bad PRM spec"):
        parse_engine_spec("openai:m@")
    for load in (scoring.load_prm, search.load_prm):
        eng = load(f"openai:internvl@{url}", batch_size=3, device="cpu", label_tokens="+,-", concurrency=2)
        assert isinstance(eng, OpenAIScorer) and eng.label_tokens == ["+", "-"] and eng.concurrency == 2
    # a second server with the same models: each problem goes to one server, both get work, scores unchanged
    other = FakeEngine(models, max_logprobs=100_000)
    url2 = other.start()
    try:
        both = OpenAIScorer("internvl", [url, url2], processor=processor)
        items = [{**ITEMS[1], "question": f"Text only: {i}+2?"} for i in range(8)]
        got = both.score_steps(items)
        seen = [{b["messages"][1]["content"][-1]["text"].split("\n")[1] for b in f.bodies} for f in (fake, other)]
        assert seen[0] and seen[1] and not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8
        assert len(fake.bodies) + len(other.bodies) == 3 * 8
        assert got == OpenAIScorer("internvl", url, processor=processor).score_steps(items)
    finally:
        other.stop()
    # rewards: a spec string or an OpenAIScorer, the same rewards as the in-process scorer
    prompts = ["Text only: 2+2?"] * 2
    completions = ["2+2=4-\n\nFinal answer: 4", "It is 5."]
    want = prm_reward(Scorer(model, processor))(prompts, completions)
    assert prm_reward(f"openai:internvl@{url}", prm_options={"label_tokens": "+,-", "top_logprobs": 100_000})(
        prompts, completions
    ) == pytest.approx(want, abs=1e-5)
    assert prm_reward(OpenAIScorer("internvl", url, processor=processor))(prompts, completions) == pytest.approx(
        want, abs=1e-5
    )


def test_serve_fronts_the_engine(served):
    from fastapi.testclient import TestClient

    from visualprm.client import Client
    from visualprm.server import build_app

    fake, url, models, _ = served
    model, processor = models["qwen3_vl"]
    app = build_app(OpenAIScorer("qwen3_vl", url, processor=processor), max_wait_ms=1)
    steps = ITEMS[0]["steps"]
    with TestClient(app) as tc:
        res = Client(http=tc, retries=0).score(ITEMS[0]["question"], [steps], images=ITEMS[0]["images"])
    want = Scorer(model, processor).score_steps(ITEMS[:1])[0]
    assert res[0]["step_scores"] == pytest.approx(want, abs=1e-5) and len(fake.bodies) == 3


def test_a_folder_with_only_a_tokenizer_still_gives_ids_and_the_system_message(served, tmp_path):
    # as for an original InternVLChatModel release, which transformers cannot load natively
    fake, url, models, _ = served
    model, processor = models["qwen2_vl"]
    get_tokenizer(processor).save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "visualprm.json").write_text(json.dumps({"system_prompt": "Custom."}))
    eng = scoring.load_prm(f"openai:qwen2_vl@{url}", prm_folder=str(tmp_path / "tok"), top_logprobs=1)
    tok = get_tokenizer(processor)
    ids = [tok(lab, add_special_tokens=False)["input_ids"][0] for lab in ("+", "-")]
    assert eng.system_prompt == "Custom." and eng.label_token_ids == ids
    want = Scorer(model, processor, system_prompt="Custom.").score_steps(ITEMS[:1])
    assert _maxdiff(eng.score_steps(ITEMS[:1]), want) < 1e-5 and eng.counts["bounded_steps"] == 0
