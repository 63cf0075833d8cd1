"""Tiny random-weight checkpoints in the original InternVL chat layout (what `OpenGVLab/VisualPRM-8B` ships).

For tests and benchmarks of `visualprm convert` (convert.py): a folder with `config.json` (`InternVLChatModel`:
`vision_config`, `llm_config`, `template`, `ps_version`, ...), safetensors shards with the original key names
(`vision_model.*`, `mlp1.*`, `language_model.*`) and the LLM's tokenizer files: an InternLM2 folder gets a
sentencepiece `tokenizer.model` trained here (`add_dummy_prefix` either way) with the `InternLM2Tokenizer`
settings, a Qwen2 folder a byte-level BPE `tokenizer.json`. The geometry is the released one (448-pixel tiles,
patch 14, downsample 0.5 = 256 tokens per tile); widths and depths are tiny.

This module writes files only; it does not ship or import the official model code, and does not convert.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from .tiny import _CORPUS

LLM_KINDS = ("internlm2", "qwen2")
# Added tokens of InternVL2.5 after the LLM's own vocabulary (REFERENCE.md §11: 92544, 92545, 92546).
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def train_sentencepiece(
    add_dummy_prefix: bool = True, vocab_size: int = 520, normalization: str = "identity", strip_spaces: bool = False
) -> bytes:
    """A BPE sentencepiece model (byte fallback, ids unk 0 / bos 1 / eos 2, the chat tokens as user symbols)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        user_defined_symbols=[*CHAT_TOKENS, "+", "-"],
        add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name=normalization,
        remove_extra_whitespaces=strip_spaces,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    return buf.getvalue()


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}


def _write_internlm2_tokenizer(out: Path, add_dummy_prefix: bool, **sp_kw) -> tuple[int, dict[str, int]]:
    import sentencepiece as spm

    model = train_sentencepiece(add_dummy_prefix, **sp_kw)
    (out / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    ids = {t: sp.piece_to_id(t) for t in CHAT_TOKENS}
    ids |= {t: n + i for i, t in enumerate(IMAGE_TOKENS)}
    decoder = {str(i): _added(t) for t, i in sorted(ids.items(), key=lambda x: x[1])}
    cfg = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [*CHAT_TOKENS, *IMAGE_TOKENS],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}) + "\n"
    )
    return n + len(IMAGE_TOKENS), {"<s>": 1, "</s>": 2, **ids}


def _write_qwen2_tokenizer(out: Path) -> tuple[int, dict[str, int]]:
    from .tiny import build_tokenizer

    raw = build_tokenizer("internvl")  # byte-level BPE with <|endoftext|>, <|im_start|>, <|im_end|>, <img>, ...
    raw.save(str(out / "tokenizer.json"))
    vocab = raw.get_vocab(with_added_tokens=True)
    specials = ["<|endoftext|>", *CHAT_TOKENS, *IMAGE_TOKENS]
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "added_tokens_decoder": {str(vocab[t]): {**_added(t), "special": True} for t in specials},
    }
    for v in cfg["added_tokens_decoder"].values():
        v.setdefault("special", True)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return raw.get_vocab_size(with_added_tokens=True), {t: vocab[t] for t in specials}


def original_state_dict(config: dict, seed: int = 0) -> dict:
    """Random weights in the original key layout for `config` (an `InternVLChatModel` config dict)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    v, t = config["vision_config"], config["llm_config"]
    dv, dt = v["hidden_size"], t["hidden_size"]
    patch, side = v["patch_size"], v["image_size"]

    def w(*shape, scale=1.0):
        fan_in = shape[-1] if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g) * (scale / fan_in**0.5)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd = {
        "vision_model.embeddings.class_embedding": torch.randn(1, 1, dv, generator=g) * 0.5,
        "vision_model.embeddings.patch_embedding.weight": w(dv, 3, patch, patch) / (3 * patch) ** 0.5 * patch**0.5,
        "vision_model.embeddings.patch_embedding.bias": 0.1 * torch.randn(dv, generator=g),
        "vision_model.embeddings.position_embedding": 0.5 * torch.randn(1, (side // patch) ** 2 + 1, dv, generator=g),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        sd[p + "attn.qkv.weight"] = w(3 * dv, dv)
        sd[p + "attn.qkv.bias"] = 0.1 * torch.randn(3 * dv, generator=g)
        sd[p + "attn.proj.weight"] = w(dv, dv)
        sd[p + "attn.proj.bias"] = 0.1 * torch.randn(dv, generator=g)
        sd[p + "mlp.fc1.weight"] = w(v["intermediate_size"], dv)
        sd[p + "mlp.fc1.bias"] = 0.1 * torch.randn(v["intermediate_size"], generator=g)
        sd[p + "mlp.fc2.weight"] = w(dv, v["intermediate_size"])
        sd[p + "mlp.fc2.bias"] = 0.1 * torch.randn(dv, generator=g)
        for n in ("norm1", "norm2"):
            sd[p + f"{n}.weight"] = norm(dv)
            sd[p + f"{n}.bias"] = 0.1 * torch.randn(dv, generator=g)
        sd[p + "ls1"] = norm(dv)
        sd[p + "ls2"] = norm(dv)
    dm = dv * 4  # pixel shuffle with downsample ratio 0.5
    sd["mlp1.0.weight"], sd["mlp1.0.bias"] = norm(dm), 0.1 * torch.randn(dm, generator=g)
    sd["mlp1.1.weight"], sd["mlp1.1.bias"] = w(dt, dm), 0.1 * torch.randn(dt, generator=g)
    sd["mlp1.3.weight"], sd["mlp1.3.bias"] = w(dt, dt), 0.1 * torch.randn(dt, generator=g)
    vocab, inter = t["vocab_size"], t["intermediate_size"]
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    hd = dt // heads
    internlm2 = t["architectures"][0] == "InternLM2ForCausalLM"
    emb = torch.randn(vocab, dt, generator=g)
    lm = "language_model.model."
    sd[lm + ("tok_embeddings.weight" if internlm2 else "embed_tokens.weight")] = emb
    for i in range(t["num_hidden_layers"]):
        p = f"{lm}layers.{i}."
        if internlm2:
            sd[p + "attention.wqkv.weight"] = w((heads + 2 * kv) * hd, dt)
            sd[p + "attention.wo.weight"] = w(dt, dt)
            sd[p + "feed_forward.w1.weight"] = w(inter, dt)
            sd[p + "feed_forward.w3.weight"] = w(inter, dt)
            sd[p + "feed_forward.w2.weight"] = w(dt, inter)
            sd[p + "attention_norm.weight"] = norm(dt)
            sd[p + "ffn_norm.weight"] = norm(dt)
        else:
            for n, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
                sd[p + f"self_attn.{n}_proj.weight"] = w(rows, dt)
                sd[p + f"self_attn.{n}_proj.bias"] = 0.1 * torch.randn(rows, generator=g)
            sd[p + "self_attn.o_proj.weight"] = w(dt, dt)
            sd[p + "mlp.gate_proj.weight"] = w(inter, dt)
            sd[p + "mlp.up_proj.weight"] = w(inter, dt)
            sd[p + "mlp.down_proj.weight"] = w(dt, inter)
            sd[p + "input_layernorm.weight"] = norm(dt)
            sd[p + "post_attention_layernorm.weight"] = norm(dt)
    sd[lm + "norm.weight"] = norm(dt)
    head = "language_model.output.weight" if internlm2 else "language_model.lm_head.weight"
    sd[head] = w(vocab, dt, scale=2.0)  # untied, and different from the embeddings (REFERENCE.md §11 pitfall)
    return {k: x.contiguous() for k, x in sd.items()}


def write_shards(sd: dict, out: Path, n_shards: int = 2) -> None:
    """Save a state dict as `n_shards` safetensors files with a `model.safetensors.index.json`."""
    from safetensors.torch import save_file

    keys = list(sd)
    if n_shards <= 1:
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(keys) // n_shards)
    weight_map, total = {}, 0
    for s in range(n_shards):
        name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s * per : (s + 1) * per]}
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
        total += sum(x.numel() * x.element_size() for x in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_original(
    out: str | os.PathLike,
    llm: str = "qwen2",
    seed: int = 0,
    add_dummy_prefix: bool = True,
    system_message: str | None = None,
    max_dynamic_patch: int = 12,
    n_shards: int = 2,
    vision_hidden: int = 16,
    vision_layers: int = 1,
    **sp_kw,
) -> Path:
    """Write a tiny original-format InternVL chat checkpoint folder; returns it."""
    if llm not in LLM_KINDS:
        raise ValueError(f"unknown llm {llm!r} (expected one of {', '.join(LLM_KINDS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if llm == "internlm2":
        vocab, ids = _write_internlm2_tokenizer(out, add_dummy_prefix, **sp_kw)
        llm_config = {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
            "bias": False,
            "rope_theta": 1000000,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
            "rms_norm_eps": 1e-5,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["</s>"],
        }
    else:
        vocab, ids = _write_qwen2_tokenizer(out)
        llm_config = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "use_sliding_window": False,
            "sliding_window": 4096,
            "max_window_layers": 2,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        }
    llm_config |= {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 16384,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
        "torch_dtype": "float32",
    }
    vision_config = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision_hidden,
        "intermediate_size": 2 * vision_hidden,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": 2,
        "image_size": 448,
        "patch_size": 14,
        "num_channels": 3,
        "qkv_bias": True,
        "qk_normalization": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "initializer_factor": 1.0,
        "use_flash_attn": False,
        "torch_dtype": "float32",
    }
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        },
        "template": "internvl2_5",
        "select_layer": -1,
        "force_image_size": 448,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": max_dynamic_patch,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": "float32",
        "vision_config": vision_config,
        "llm_config": llm_config,
    }
    if system_message is not None:
        config["system_message"] = system_message
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_shards(original_state_dict(config, seed), out, n_shards)
    return out
