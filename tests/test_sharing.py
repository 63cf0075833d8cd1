"""Prefix-shared Best-of-N scoring equals the plain path on every architecture; splitting, fallbacks, prefix cut."""

import json
import logging

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from test_scoring import _sharpen  # noqa: E402

from visualprm import sharing  # noqa: E402
from visualprm.scoring import Scorer  # noqa: E402
from visualprm.tiny import ARCHS, build_tiny  # noqa: E402

RED = Image.new("RGB", (112, 112), (200, 10, 10))
BLUE = Image.new("RGB", (112, 84), (0, 10, 200))
GROUPS = [
    {  # very different lengths: 1 short step, 3 steps, 6 steps with a long first one
        "question": "How many red circles are there?",
        "images": [RED],
        "solutions": [
            ["5"],
            ["There are 3 red circles.", "3 + 2 = 5.", "Final answer: 5"],
            ["Count the circles on the left: 1 2 3 4 5 6 7 8 9 10 11 12 then on the right", "a", "b", "c", "d", "5"],
        ],
    },
    {"question": "Text only: 2+2?", "images": [], "solutions": [["2+2=4-", "Final answer: 4"], ["\\frac{1}{2}"]]},
    {"question": "Two images.", "images": [BLUE, RED], "solutions": [["Left is blue.", "Right is red.", "Done: 7"]]},
    {"question": "What colour is it?", "images": [BLUE], "solutions": [["It is blue."], ["It is red.", "No, blue."]]},
]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a busy 2-core machine: one thread is ~5x faster than two fighting for the cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _flat(scorer, groups):
    items = [{"question": g["question"], "images": g["images"], "steps": s} for g in groups for s in g["solutions"]]
    return scorer.score_steps(items)


def _maxdiff(a, b):
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


@pytest.fixture(scope="module", params=ARCHS)
def scorer(request):
    # 112-pixel images: Qwen-VL multimodal rope positions then differ from 0..L-1 (a wrong position shows).
    model, processor = build_tiny(request.param, seed=1, image_size=112)
    return Scorer(_sharpen(model), processor, batch_size=3)


def test_shared_equals_plain_on_every_architecture(scorer):
    before = scorer.forward_count
    shared = scorer.score_groups(GROUPS)
    forwards = scorer.forward_count - before
    assert [len(g) for g in shared] == [3, 2, 1, 2]
    assert forwards == 4 + 3  # one prefix pass per group, 8 candidates in suffix batches of 3: the shared path ran
    flat = _flat(scorer, GROUPS)
    assert _maxdiff([s for g in shared for s in g], flat) < 1e-4
    spread = [x for row in flat for x in row]
    assert max(spread) - min(spread) > 0.3  # the check above is not vacuous


def test_each_group_alone_and_one_solution(scorer):
    for g in GROUPS:
        alone = scorer.score_groups([g])[0]
        assert _maxdiff(alone, _flat(scorer, [g])) < 1e-4
    single = {**GROUPS[0], "solutions": GROUPS[0]["solutions"][1:2]}
    assert _maxdiff(scorer.score_groups([single])[0], _flat(scorer, [single])) < 1e-4
    assert scorer.score_groups([]) == [] and scorer.score_groups([{**single, "solutions": []}]) == [[]]


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl"])
def test_wrong_mrope_positions_would_show(arch, monkeypatch):
    model, processor = build_tiny(arch, seed=1, image_size=112)
    s = Scorer(_sharpen(model), processor)
    monkeypatch.setattr(sharing, "full_positions", lambda backbone, enc: None)  # plain 0..L-1 positions
    assert _maxdiff(s.score_groups(GROUPS[:1])[0], _flat(s, GROUPS[:1])) > 1e-2


def test_max_batch_tokens_splits_a_group():
    model, processor = build_tiny("qwen2_5_vl", seed=2, image_size=112)
    s = Scorer(_sharpen(model), processor, batch_size=8)
    group = {**GROUPS[0], "solutions": GROUPS[0]["solutions"] + GROUPS[3]["solutions"]}  # 5 solutions
    enc = sharing.encode_group(s, group)
    p = sharing.prefix_length(enc, sharing._media_token_ids(s.model))
    longest = max(e.length for e in enc) - p
    s.max_batch_tokens = 2 * (p + longest)  # two rows per batch at most
    before = s.forward_count
    out = s.score_groups([group])[0]
    assert s.forward_count - before == 1 + 3  # one prefix pass, suffix batches of 2 + 2 + 1
    assert _maxdiff(out, _flat(s, [group])) < 1e-4


def test_prefix_length_cut_and_images_processed_once():
    model, processor = build_tiny("qwen2_vl", seed=0, image_size=112)
    s = Scorer(model, processor)
    calls = []
    inner = processor.image_processor

    class Counting:
        def __getattr__(self, name):
            return getattr(inner, name)

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)

    processor.image_processor = Counting()
    g = GROUPS[0]
    enc = sharing.encode_group(s, g)
    assert len(calls) == 1  # once for the three candidates
    plain = [s.encode_item({"question": g["question"], "images": g["images"], "steps": x}) for x in g["solutions"]]
    assert len(calls) == 4
    for a, b in zip(enc, plain):
        assert a.label_positions == b.label_positions
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in b.inputs)
    p = sharing.prefix_length(enc, sharing._media_token_ids(model))
    ids = [e.inputs["input_ids"][0] for e in enc]
    assert all(torch.equal(ids[0][:p], x[:p]) for x in ids)  # common to all
    assert len({int(x[p]) for x in ids}) > 1 or p == min(e.label_positions[0] for e in enc) - 1
    assert p <= min(e.label_positions[0] for e in enc) - 1  # the logits predicting the first label are not in it
    image_id = model.config.image_token_id
    assert all(int((x[p:] == image_id).sum()) == 0 for x in ids) and int((ids[0][:p] == image_id).sum()) == 16
    # One candidate: the prefix ends just before the position that predicts its first label.
    one = sharing.encode_group(s, {**g, "solutions": g["solutions"][1:2]})
    assert sharing.prefix_length(one) == one[0].label_positions[0] - 1


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_text_only_causal_lm(family):
    import transformers as tf

    _, processor = build_tiny("qwen2_vl" if family == "qwen2" else "llava", seed=0)
    tok = processor.tokenizer
    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    shape.update(num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    if family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**shape))
    else:
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**shape))
    s = Scorer(_sharpen(model.eval()), tok, batch_size=2)
    groups = [{**g, "images": []} for g in GROUPS]
    before = s.forward_count
    out = s.score_groups(groups)
    assert s.forward_count - before == 4 + 4
    assert _maxdiff([x for g in out for x in g], _flat(s, groups)) < 1e-4


def test_fallbacks_log_once_and_match_plain(caplog):
    model, processor = build_tiny("llava", seed=3)
    s = Scorer(_sharpen(model), processor)
    flat = _flat(s, GROUPS)
    s.share_prefix = False
    with caplog.at_level(logging.WARNING, logger="visualprm.sharing"):
        assert [x for g in s.score_groups(GROUPS) for x in g] == flat
    assert not caplog.records  # switched off on purpose: nothing to warn about
    s.share_prefix = True
    model.config.final_logit_softcapping = 30.0  # a model whose head is not a plain linear map
    flat = _flat(s, GROUPS)
    sharing._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="visualprm.sharing"):
        for _ in range(2):
            assert [x for g in s.score_groups(GROUPS) for x in g] == flat
    assert [r.getMessage() for r in caplog.records] == [
        "prefix sharing off, scoring candidates one full sequence each: the model soft-caps its logits"
    ]


def test_unverified_model_type_is_checked_against_plain(monkeypatch, caplog):
    model, processor = build_tiny("qwen2_vl", seed=4, image_size=112)
    s = Scorer(_sharpen(model), processor, batch_size=4)
    monkeypatch.setattr(sharing, "VERIFIED", ())
    out = s.score_groups(GROUPS)
    assert s._share_state is None  # the check passed: shared from now on
    assert _maxdiff([x for g in out for x in g], _flat(s, GROUPS)) < 1e-4
    # A shared path that is wrong for some model (here: positions broken on purpose) is caught and switched off.
    s2 = Scorer(model, processor, batch_size=4)
    monkeypatch.setattr(sharing, "full_positions", lambda backbone, enc: None)
    sharing._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="visualprm.sharing"):
        out2 = s2.score_groups(GROUPS)
    assert [x for g in out2 for x in g] == _flat(s2, GROUPS)
    assert "shared and plain scores differ" in s2._share_state and len(caplog.records) == 1


def test_benchmark_smoke(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scoring.py"
    spec = importlib.util.spec_from_file_location("bench_scoring", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = "--hidden-size 64 --intermediate-size 128 --layers 1 --image-grid 4 --prefix-tokens 300 --suffix-tokens 80"
    assert bench.main((args + " --n 3 --steps 2 --repeat 1").split()) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["prefix_tokens"], out["suffix_tokens"], out["n"], out["steps"]) == (300, 80, 3, 2)
    assert out["token_bound"] == round(3 * 380 / (300 + 3 * 80), 3)
    assert out["shared_vs_sequential"] > 0 and out["shared_vs_per_step"] > 0 and out["max_score_diff"] < 1e-4
