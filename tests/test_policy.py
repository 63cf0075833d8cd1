"""Policy backends: spec parsing, prompts, the OpenAI-compatible client, fake vLLM, hf with a tiny model."""

import sys
import types

import pytest
from fake_openai import FakeOpenAI

from visualprm.openai_client import RequestError, ServerUnavailable, api_base, chat_completions, probe
from visualprm.policy import (
    GenRequest,
    OpenAIPolicy,
    load_policy,
    parse_policy_spec,
    policy_prompt,
    strip_short_answer_instructions,
)
from visualprm.schema import InputError
from visualprm.synthetic import SyntheticPolicy, make_problems


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    recs = make_problems(d, n=6, seed=3)
    for r in recs:
        r["images"] = [str(d / p) for p in r["images"]]
    return recs


def test_parse_policy_spec():
    assert parse_policy_spec("synthetic") == ("synthetic", "", None)
    assert parse_policy_spec("hf:/models/x") == ("hf", "/models/x", None)
    assert parse_policy_spec("vllm:OpenGVLab/InternVL2_5-8B") == ("vllm", "OpenGVLab/InternVL2_5-8B", None)
    assert parse_policy_spec("openai:Qwen/Qwen2.5-VL-7B@http://h:8000/v1") == (
        "openai",
        "Qwen/Qwen2.5-VL-7B",
        "http://h:8000/v1",
    )
    for bad in ("", "gpt4", "openai:model", "openai:@http://h:1", "hf:", "vllm:  "):
        with pytest.raises(InputError, match="expected one of: synthetic.*hf:PATH.*openai:MODEL@URL.*vllm:"):
            parse_policy_spec(bad)
    with pytest.raises(InputError, match="bad synthetic policy option"):
        load_policy("synthetic:speed=3")
    assert load_policy("synthetic:perception=0.1").perception == 0.1


def test_api_base():
    assert api_base("localhost:8000") == "http://localhost:8000/v1"
    assert api_base("http://h:1/v1/") == "http://h:1/v1"
    assert api_base("https://h/v1/chat/completions") == "https://h/v1"


def test_prompts():
    s = strip_short_answer_instructions
    assert s("What is X?\nAnswer the question using a single word or phrase.") == "What is X?"
    assert s("Pick one.\nA. x\nB. y\nAnswer with the option's letter from the given choices directly.") == (
        "Pick one.\nA. x\nB. y"
    )
    assert s("Is it red? Please answer Yes or No.") == "Is it red?"
    # a question that merely contains the words is kept
    q = "Look.\nAnswer the following: how many circles are directly above the square?"
    assert s(q) == q
    p = policy_prompt({"question": "<image>\nHow many? Answer with a single number.", "options": ["1", "2"]})
    assert p.endswith('"Final answer: .."\n\nQuestion:\n\nHow many?\nOptions:\nA. 1\nB. 2')
    b = policy_prompt({"question": "How many?"}, "boxed")
    assert b.startswith("How many?\nAnswer the preceding question.") and "'Answer: \\boxed{$FINAL_ANSWER}'" in b
    assert policy_prompt({"question": "q", "prompt": "exact text"}) == "exact text"
    with pytest.raises(InputError, match="unknown prompt"):
        policy_prompt({"question": "q"}, "json")


def test_openai_policy_bodies_and_results(problems):
    fake = FakeOpenAI(problems)
    url = fake.start()
    try:
        pol = load_policy(f"openai:syn@{url}", concurrency=3)
        p = problems[0]
        reqs = [GenRequest(p, "", n=3, seed=11), GenRequest(p, "There are 2 red shapes.", n=5, seed=12, top_k=None)]
        out = pol.generate(reqs)
        assert out == SyntheticPolicy().generate(reqs)  # n, seed and the prefix reach the server intact
        fresh, cont = sorted(fake.bodies, key=lambda b: b["seed"])
        assert fresh["n"] == 3 and fresh["seed"] == 11 and fresh["top_k"] == 50 and fresh["model"] == "syn"
        assert "continue_final_message" not in fresh and len(fresh["messages"]) == 1
        img = fresh["messages"][0]["content"][0]
        assert img["type"] == "image_url" and img["image_url"]["url"].startswith("data:image/png;base64,")
        assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
        assert cont["messages"][-1] == {"role": "assistant", "content": "There are 2 red shapes."}
        assert "top_k" not in cont and cont["n"] == 5
    finally:
        fake.stop()


def test_openai_retries_500_and_timeouts(problems):
    fake = FakeOpenAI(problems, fail_every=3, hang_every=4, hang_s=2.0)
    url = fake.start()
    try:
        pol = OpenAIPolicy("syn", url, concurrency=4, retries=8, timeout=0.8, backoff=0.01)
        reqs = [GenRequest(p, "", n=2, seed=i) for i, p in enumerate(problems)] * 2
        assert pol.generate(reqs) == SyntheticPolicy().generate(reqs)
        assert fake.injected["500"] >= 2 and fake.injected["hang"] >= 1
        assert fake.max_in_flight > 1
    finally:
        fake.stop()


def test_openai_errors(problems):
    fake = FakeOpenAI(problems, refuse=problems[1]["id"], fail_every=1)
    url = fake.start()
    try:
        with pytest.raises(InputError, match="model 'other' is not served at .*; it serves: syn"):
            probe(url, "other")
        pol = OpenAIPolicy("syn", url, retries=2, backoff=0.01)
        with pytest.raises(ServerUnavailable, match="failed after 3 attempts; last error: HTTP 500"):
            pol.generate([GenRequest(problems[0])])
        fake.fail_every = 0
        with pytest.raises(RequestError, match="HTTP 400") as e:
            pol.generate([GenRequest(problems[0]), GenRequest(problems[1])])
        assert e.value.index == 1
        # return_exceptions keeps the good answers
        bodies = [pol.body(GenRequest(problems[0])), pol.body(GenRequest(problems[1]))]
        res = chat_completions(url, None, bodies, return_exceptions=True)
        assert res[0]["choices"] and isinstance(res[1], RequestError)
    finally:
        fake.stop()
    with pytest.raises(ServerUnavailable, match="cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1"):
        load_policy("openai:syn@http://127.0.0.1:9")


def test_fake_vllm(monkeypatch, problems):
    calls = []

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, model, **kw):
            calls.append(("init", model, kw))

        def chat(self, messages, sampling_params, use_tqdm, add_generation_prompt, continue_final_message):
            calls.append(("chat", messages, [p.kw for p in sampling_params], add_generation_prompt,
                          continue_final_message))  # fmt: skip
            outs = []
            for m, p in zip(messages, sampling_params):
                texts = [f"{m[-1]['role']}-{p.kw['seed']}-{j}" for j in range(p.kw["n"])]
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts]))
            return outs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    pol = load_policy("vllm:/models/policy", engine_kwargs={"tensor_parallel_size": 2})
    assert calls[0] == ("init", "/models/policy", {"tensor_parallel_size": 2})
    p = problems[0]
    reqs = [GenRequest(p, "step 1", n=2, seed=5), GenRequest(p, "", n=3, seed=7, stop=["\n\n"])]
    assert pol.generate(reqs) == [["assistant-5-0", "assistant-5-1"], ["user-7-0", "user-7-1", "user-7-2"]]
    (_, m1, sp1, agp1, cont1), (_, m2, sp2, agp2, cont2) = calls[1:]
    assert (agp1, cont1, agp2, cont2) == (True, False, False, True)  # fresh solutions first, then continuations
    assert sp1 == [{"n": 3, "temperature": 1.0, "max_tokens": 4096, "seed": 7, "top_k": 50, "stop": ["\n\n"]}]
    assert sp2 == [{"n": 2, "temperature": 1.0, "max_tokens": 4096, "seed": 5, "top_k": 50}]
    assert m2[0][-1] == {"role": "assistant", "content": "step 1"}
    assert m1[0][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_vllm_missing_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(InputError, match="needs vLLM"):
        load_policy("vllm:x")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from visualprm.tiny import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", arch="qwen2_vl", seed=0)
    return load_policy(f"hf:{path}", batch_size=2)


def test_hf_tiny_generate(tiny_policy, problems):
    p = problems[0]
    reqs = [GenRequest(p, "", n=3, seed=1, max_tokens=6), GenRequest(p, "There are 2", n=2, seed=2, max_tokens=6)]
    a = tiny_policy.generate(reqs)
    assert [len(x) for x in a] == [3, 2] and all(isinstance(t, str) for x in a for t in x)
    # seeded per request: the same request gives the same texts alone or in another batch
    assert tiny_policy.generate(reqs[1:]) == a[1:]
    assert tiny_policy.generate([GenRequest(p, "", n=3, seed=1, max_tokens=6)]) == a[:1]
    # the continuation is rendered after the prefix with continue_final_message
    text = tiny_policy.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "q"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "There are 2"}]}],
        tokenize=False, continue_final_message=True,
    )  # fmt: skip
    assert text.endswith("<|im_start|>assistant\nThere are 2")


def test_py_policy_spec_loads_your_own_policy(tmp_path):
    """`py:MODULE:FACTORY` (or `py:file.py:FACTORY`) names a policy object of your own."""
    from visualprm.policy import GenRequest, load_policy
    from visualprm.schema import InputError

    (tmp_path / "mypol.py").write_text(
        "class P:\n    name = 'echo'\n"
        "    def generate(self, requests):\n        return [['x' * r.n] * r.n for r in requests]\n"
        "    def close(self):\n        pass\n"
    )
    pol = load_policy(f"py:{tmp_path}/mypol.py:P")
    assert pol.name == "echo" and pol.generate([GenRequest(problem={}, n=2)]) == [["xx", "xx"]]
    with pytest.raises(InputError, match="no generate"):
        load_policy("py:builtins:dict")
