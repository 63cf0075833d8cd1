"""Tiny random-weight PRMs of real architectures, built offline (`visualprm make-tiny-model`).

Each is a real `transformers` model class (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA) with hidden size 64
and 2 layers, a byte-level BPE tokenizer trained here on a small corpus (so any text encodes, and `+`, `-`, `=`
are single tokens), the architecture's special tokens and a chat template written after the real model's. The
folder is saved with `save_pretrained` and loads with the same code path as a real checkpoint (`model.load_model`).

They are for tests, the demo and benchmarks: their scores are meaningless until trained. This module does not
download anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from .steps import PRM_SYSTEM_PROMPT

ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava", "idefics3")

# Chat templates after the real models' (content lists with image items; plain-string content allowed too).
_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if not (continue_final_message and loop.last) %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_INTERNVL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if not (continue_final_message and loop.last) %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set prefix = '' %}"
    "{% else %}{% set prefix = message['role'].upper() + ':\n' %}{% endif %}{{ prefix }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if not (continue_final_message and loop.last) %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %}\n{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}"
)

# Idefics3 / SmolVLM: "User: ... Assistant: +", so " +" is the label token (see model.label_prefix).
_IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}"
    "{% if not (continue_final_message and loop.last) %}<end_of_utterance>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_SPECIALS = {
    "qwen": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    + ["<|image_pad|>", "<|video_pad|>"],
    "internvl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "llava": ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
    "idefics3": ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    + ["<global-img>"],
}

_CORPUS = [
    PRM_SYSTEM_PROMPT,
    "### Question:\nHow many red circles are in the image? ### Solution Process:\nThere are 3 red circles.",
    "Step 1: count the shapes. 3 + 4 = 7. 12 - 5 = 7. 6 * 7 = 42. 9 / 3 = 3. x^2 + y^2 = z^2.",
    "Final answer: 42. Answer: \\boxed{\\frac{1}{2}}. The answer is (B). Therefore, the total is 15.",
    "The bar for blue reaches 8, the bar for green reaches 5. So the difference is 8 - 5 = 3.",
    "triangle square circle red green blue yellow purple orange black white large small left right top bottom",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100 + - = * / ( ) [ ] { } , . :",
    "the of and to in is are a that for it with as on be by this at from or an which has how many what",
]


def build_tokenizer(family: str, vocab_size: int = 640, corpus: list[str] | None = None, repeats: int = 4):
    """A byte-level BPE tokenizer trained on a small corpus (`corpus`, default a generic one, `repeats` times),
    with the family's special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # The Qwen2 pre-tokenizer pattern: punctuation runs and single digits split from letters.
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = _SPECIALS[family]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_CORPUS if corpus is None else corpus) * repeats, trainer=trainer)
    return tok


def _fast_tokenizer(family: str, chat_template: str):
    from transformers import PreTrainedTokenizerFast

    raw = build_tokenizer(family)
    if family == "qwen":
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    elif family == "internvl":
        kw = dict(
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
        )
    elif family == "idefics3":
        kw = dict(eos_token="<end_of_utterance>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    else:
        kw = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
        kw["extra_special_tokens"] = {"image_token": "<image>"}
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=chat_template, **kw)
    return tok


def _text_config(vocab_size: int, **extra) -> dict:
    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    cfg.update(extra)
    return cfg


def build_tiny(arch: str = "qwen2_vl", seed: int = 0, image_size: int = 56):
    """Return `(model, processor)` of a tiny random-weight model of `arch`."""
    import torch
    import transformers as tf

    from .model import image_only_processor_class

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (expected one of {', '.join(ARCHS)})")
    torch.manual_seed(seed)
    if arch in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        tok = _fast_tokenizer("qwen", _QWEN_TEMPLATE)
        ids = {t: tok.convert_tokens_to_ids(t) for t in _SPECIALS["qwen"]}
        patch = 16 if arch == "qwen3_vl" else 14
        pixels = image_size * image_size
        image_processor = tf.Qwen2VLImageProcessorPil(
            size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=patch, merge_size=2
        )
        rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        tokens = dict(
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
        text = _text_config(
            len(tok),
            rope_parameters=rope,
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        )
        if arch == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=patch, mlp_ratio=2)
            config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
            model = tf.Qwen2VLForConditionalGeneration(config)
        elif arch == "qwen2_5_vl":
            vision = dict(
                depth=2,
                hidden_size=32,
                out_hidden_size=64,
                intermediate_size=64,
                num_heads=2,
                patch_size=patch,
                window_size=56,
                fullatt_block_indexes=[1],
            )
            config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
            model = tf.Qwen2_5_VLForConditionalGeneration(config)
        else:
            text["head_dim"] = 16
            text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
            vision = dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                patch_size=patch,
                out_hidden_size=64,
                num_position_embeddings=64,
                deepstack_visual_indexes=[0],
            )
            config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
            model = tf.Qwen3VLForConditionalGeneration(config)
        proc_cls = image_only_processor_class(arch)
        processor = proc_cls(image_processor=image_processor, tokenizer=tok, chat_template=_QWEN_TEMPLATE)
    elif arch == "internvl":
        tok = _fast_tokenizer("internvl", _INTERNVL_TEMPLATE)
        patch = 14
        side = max(28, (image_size // 28) * 28)
        seq = (side // patch) ** 2 // 4  # pixel shuffle with downsample ratio 0.5
        vision = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=[side, side],
            patch_size=[patch, patch],
        )
        text = _text_config(
            len(tok),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        )
        config = tf.InternVLConfig(
            text_config={"model_type": "qwen2", **text},
            vision_config=vision,
            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
            image_seq_length=seq,
        )
        model = tf.InternVLForConditionalGeneration(config)
        image_processor = tf.GotOcr2ImageProcessorPil(
            size={"height": side, "width": side}, crop_to_patches=False, max_patches=1
        )
        proc_cls = image_only_processor_class("internvl")
        processor = proc_cls(
            image_processor=image_processor, tokenizer=tok, image_seq_length=seq, chat_template=_INTERNVL_TEMPLATE
        )
    elif arch == "idefics3":
        tok = _fast_tokenizer("idefics3", _IDEFICS3_TEMPLATE)
        patch = 14
        side = max(28, (image_size // 28) * 28)
        vision = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=side,
            patch_size=patch,
        )
        text = _text_config(
            len(tok),
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
            eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
        )
        config = tf.Idefics3Config(
            text_config={"model_type": "llama", **text},
            vision_config=vision,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            scale_factor=2,
        )
        model = tf.Idefics3ForConditionalGeneration(config)
        image_processor = tf.Idefics3ImageProcessorPil(
            do_image_splitting=False, size={"longest_edge": side}, max_image_size={"longest_edge": side}
        )
        processor = tf.Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tok,
            image_seq_len=(side // patch) ** 2 // 4,
            chat_template=_IDEFICS3_TEMPLATE,
        )
    else:  # llava
        tok = _fast_tokenizer("llava", _LLAVA_TEMPLATE)
        patch = 14
        side = max(28, (image_size // 14) * 14)
        vision = dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=side,
            patch_size=patch,
            projection_dim=32,
        )
        text = _text_config(
            len(tok),
            pad_token_id=tok.convert_tokens_to_ids("<pad>"),
            bos_token_id=tok.convert_tokens_to_ids("<s>"),
            eos_token_id=tok.convert_tokens_to_ids("</s>"),
        )
        config = tf.LlavaConfig(
            text_config={"model_type": "llama", **text},
            vision_config=vision,
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            image_seq_length=(side // patch) ** 2,
            vision_feature_layer=-1,
        )
        model = tf.LlavaForConditionalGeneration(config)
        image_processor = tf.CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
        processor = tf.LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=patch,
            vision_feature_select_strategy="default",
            chat_template=_LLAVA_TEMPLATE,
            num_additional_image_tokens=1,
        )
    model.eval()
    return model, processor


def make_tiny_model(out: str | os.PathLike, arch: str = "qwen2_vl", seed: int = 0, image_size: int = 56) -> Path:
    """Build and save a tiny model + processor folder; returns the folder."""
    from .model import save_processor
    from .schema import share_modes

    model, processor = build_tiny(arch, seed=seed, image_size=image_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(processor, out)
    share_modes(out)  # safetensors writes 0600
    return out
