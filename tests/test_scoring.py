"""Scoring: single pass vs per-step prefixes, batched vs one-by-one, padding sides, label positions."""

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from visualprm.model import SENTINEL, encode, label_token_ids, load_model  # noqa: E402
from visualprm.schema import InputError  # noqa: E402
from visualprm.scoring import Scorer, aggregate  # noqa: E402
from visualprm.steps import prm_messages  # noqa: E402
from visualprm.tiny import ARCHS, build_tiny, make_tiny_model  # noqa: E402


def _sharpen(model):
    # Random tiny models give nearly the same score everywhere; larger weights spread scores over (0, 1), so
    # that a wrong position or a wrong label token shows as a large difference.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model


ITEMS = [
    {
        "question": "How many red circles are there?",
        "images": [Image.new("RGB", (80, 60), (200, 10, 10))],
        "steps": ["There are 3 red circles.", "3 + 2 = 5.", "Final answer: 5"],
    },
    {
        "question": "What colour is the square? Answer briefly.",
        "images": [Image.new("RGB", (56, 56), (0, 10, 200))],
        "steps": ["It is blue.", "Final answer: blue +"],
    },
    {"question": "Text only: 2+2?", "images": [], "steps": ["2+2=4-", "Final answer: 4\n\nmore", "\\frac{1}{2}"]},
    {
        "question": "Two images.",
        "images": [Image.new("RGB", (56, 56), (0, 200, 0)), Image.new("RGB", (84, 56), (9, 9, 9))],
        "steps": ["Left is green.", "Right is dark.", "Done: 7"],
    },
]


@pytest.fixture(scope="module", params=ARCHS)
def scorer(request):
    model, processor = build_tiny(request.param, seed=1)
    return Scorer(_sharpen(model), processor, batch_size=3)


def _maxdiff(a, b):
    assert [len(x) for x in a] == [len(x) for x in b]
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def test_single_pass_equals_per_prefix(scorer):
    single = scorer.score_steps(ITEMS)
    per_prefix = [scorer.score_per_prefix(it) for it in ITEMS]
    assert _maxdiff(single, per_prefix) < 1e-4
    spread = [s for row in single for s in row]
    assert max(spread) - min(spread) > 0.3  # the check above is not vacuous


def test_batched_equals_one_by_one_and_padding_sides(scorer):
    batched = scorer.score_steps(ITEMS)
    one = [scorer.score_steps([it])[0] for it in ITEMS]
    assert _maxdiff(batched, one) < 1e-5
    scorer.padding_side = "left"
    try:
        left = scorer.score_steps(ITEMS)
    finally:
        scorer.padding_side = "right"
    assert _maxdiff(batched, left) < 1e-4


def test_score_groups_matches_flat(scorer):
    groups = [{"question": ITEMS[0]["question"], "images": ITEMS[0]["images"], "solutions": [ITEMS[0]["steps"]] * 2}]
    groups.append({"question": ITEMS[2]["question"], "images": [], "solutions": [ITEMS[2]["steps"]]})
    out = scorer.score_groups(groups)
    flat = scorer.score_steps([ITEMS[0], ITEMS[0], ITEMS[2]])
    assert [len(g) for g in out] == [2, 1]
    assert _maxdiff(out[0] + out[1], flat) < 1e-4  # prefix sharing (sharing.py): equal within float error


def test_advantage_mode_is_p_plus_minus_p_minus():
    model, processor = build_tiny("qwen2_vl", seed=2)
    _sharpen(model)
    value = Scorer(model, processor, label_mode="value")
    adv = Scorer(model, processor, label_mode="advantage")
    enc = value.encode_item(ITEMS[0])
    rows = [[p - 1 for p in enc.label_positions]]
    batch = {k: v for k, v in enc.inputs.items()}
    logits = model(**batch).logits[0, rows[0]]
    ids = label_token_ids(processor, ("+", "=", "-"))
    p = torch.softmax(logits[:, ids], dim=-1)
    expected = (p[:, 0] - p[:, 2]).tolist()
    got = adv.score_steps([ITEMS[0]])[0]
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-5
    p2 = torch.softmax(logits[:, ids[:1] + ids[2:]], dim=-1)[:, 0].tolist()
    assert max(abs(a - b) for a, b in zip(value.score_steps([ITEMS[0]])[0], p2)) < 1e-5


def test_aggregates():
    s = [0.5, 0.25, 1.0]
    assert aggregate(s, "mean") == pytest.approx(0.5833333333)
    assert aggregate(s, "min") == 0.25
    assert aggregate(s, "max") == 1.0
    assert aggregate(s, "last") == 1.0
    assert aggregate(s, "prod") == 0.125
    with pytest.raises(InputError, match="unknown aggregate"):
        aggregate(s, "median")


def test_saved_folder_loads_with_same_path_and_scores_identically(tmp_path):
    model, processor = build_tiny("internvl", seed=3)
    _sharpen(model)
    before = Scorer(model, processor).score_steps(ITEMS[:2])
    model.save_pretrained(tmp_path)
    from visualprm.model import save_processor

    save_processor(processor, tmp_path)
    m2, p2 = load_model(tmp_path)
    assert type(p2).__name__ == "InternVLImageOnlyProcessor" and p2.image_seq_length == processor.image_seq_length
    after = Scorer(m2, p2).score_steps(ITEMS[:2])
    assert _maxdiff(before, after) < 1e-6


def test_make_tiny_model_cli_folder(tmp_path):
    out = make_tiny_model(tmp_path / "m", arch="qwen2_5_vl")
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "processor_config.json" in names and "tokenizer.json" in names
    scorer = Scorer.from_pretrained(out)
    assert len(scorer.score_steps(ITEMS[:1])[0]) == 3


def test_label_must_be_one_token():
    model, processor = build_tiny("qwen2_vl")
    with pytest.raises(InputError, match="'\\+\\+' is 2 tokens"):
        label_token_ids(processor, ("++", "-"))


ROLE_COLON_TEMPLATE = (  # "Role: reply", as the Idefics3 / SmolVLM / LLaVA-1.5 templates write it
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def test_label_merged_with_template_space_is_read_as_its_token():
    model, processor = build_tiny("qwen2_vl", seed=1)
    processor.chat_template = ROLE_COLON_TEMPLATE
    scorer = Scorer(_sharpen(model), processor)
    assert scorer.label_prefix == " "  # " +" is one token in this vocabulary
    tok = processor.tokenizer
    assert [tok.decode([i]) for i in scorer.label_ids] == [" +", " -"]
    single = scorer.score_steps(ITEMS)
    assert _maxdiff(single, [scorer.score_per_prefix(it) for it in ITEMS]) < 1e-4


def test_merged_label_fails_loudly():
    model, processor = build_tiny("qwen2_vl")
    # A template that quotes the reply in bold: the vocabulary has a token ' **"+"**', label and markup in one.
    processor.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: **\"{% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "{{ c['text'] }}{% endif %}{% endfor %}\"**\n{% endfor %}"
    )
    msgs = prm_messages("q", ["a"], [SENTINEL], 0)
    with pytest.raises(InputError, match="not a token of its own"):
        encode(processor, msgs, ["+"])


def test_max_length_is_enforced():
    model, processor = build_tiny("qwen2_vl")
    scorer = Scorer(model, processor, max_length=50)
    with pytest.raises(InputError, match="longer than max_length 50"):
        scorer.score_steps(ITEMS[:1])
