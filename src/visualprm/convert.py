"""`visualprm convert SRC DST`: an original InternVL chat checkpoint (VisualPRM-8B, VisualPRM-8B-v1_1, InternVL2.5
/ InternVL3 chat) to a transformers-native `InternVLForConditionalGeneration` folder that scores like the
official code (REFERENCE.md §11).

What DST holds: the weights under transformers' InternVL names (InternLM2's `wqkv` split per key/value group into
Llama's q/k/v), a config with untied embeddings where the LLM's are untied and `image_token_id` read from the
tokenizer, the project's image-only InternVL processor (GotOcr2 PIL image processor: 448-pixel tiles,
1..`max_dynamic_patch`, thumbnail, BICUBIC, ImageNet mean/std; 256 `<IMG_CONTEXT>` per tile inside
`<img>`..`</img>`), a fast tokenizer, an `internvl2_5` chat template (with the BOS the official slow tokenizer
adds), and `visualprm.json` recording the model's own system message (the config's `system_message`, else the
template's default), so every command uses it by default.

Before the weights are written, the staged processor encodes rendered PRM conversations with an image and the
ids are compared with the official tokenization of the official prompt string (InternLM2: the sentencepiece
model through the slow tokenizer's rules, re-implemented in `reference_encoder`; Qwen2: the folder's own
tokenizer); any difference stops the conversion with one line naming the first differing token. Weights go
shard by shard (one input shard and its converted copy in memory at a time). Everything is written to a
staging folder beside DST and renamed into place at the end: no partial DST.

It does not run or import the official model code, and does not convert the other way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .model import is_original  # noqa: F401  (re-exported: convert.is_original)
from .schema import InputError

# The internvl2_5 template's default system message (used when the config has no `system_message`).
INTERNVL_DEFAULT_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
LLM_TYPES = {"InternLM2ForCausalLM": "internlm2", "Qwen2ForCausalLM": "qwen2"}
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

# `internvl2_5` (MPT separator style): every turn "<|im_start|>{role}\n{text}<|im_end|>\n"; the image item renders
# as the processor's placeholder, which it expands to <img> + 256 x tiles <IMG_CONTEXT> + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if not (continue_final_message and loop.last) %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------------------------
# The original folder


def read_original(src: str | os.PathLike) -> dict:
    """The original config, checked: an InternVL chat checkpoint we can convert exactly, else `InputError`."""
    src = Path(src)
    p = src / "config.json"
    if not src.is_dir() or not p.is_file():
        raise InputError("not a model folder (no config.json)", src, field="src")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", p) from None
    if "InternVLChatModel" not in (cfg.get("architectures") or []):
        got = cfg.get("architectures") or cfg.get("model_type")
        raise InputError(f"not an InternVL chat checkpoint (architectures {got!r})", p, field="architectures")
    if cfg.get("ps_version", "v1") != "v2":
        raise InputError(
            f"ps_version {cfg.get('ps_version', 'v1')!r} is not supported (only v2: v1 transposes the image)",
            p,
            field="ps_version",
        )
    llm = cfg.get("llm_config") or {}
    arch = (llm.get("architectures") or [None])[0]
    if arch not in LLM_TYPES:
        raise InputError(
            f"unknown LLM type {arch!r} (expected one of {', '.join(LLM_TYPES)})", p, field="llm_config.architectures"
        )
    vis = cfg.get("vision_config") or {}
    if cfg.get("template", "internvl2_5") != "internvl2_5":
        raise InputError(f"template {cfg.get('template')!r} is not supported (only internvl2_5)", p, field="template")
    size = cfg.get("force_image_size") or vis.get("image_size")
    if size != vis.get("image_size"):
        raise InputError(f"force_image_size {size} differs from the vision tower's {vis.get('image_size')}", p)
    if cfg.get("downsample_ratio", 0.5) != 0.5:
        raise InputError(f"downsample_ratio {cfg['downsample_ratio']} is not supported (only 0.5)", p)
    if vis.get("qk_normalization") or vis.get("norm_type", "rms_norm") != "layer_norm":
        raise InputError("only InternViT with layer norm and no q/k norm (InternViT-300M) is supported", p)
    cfg["_llm_kind"] = LLM_TYPES[arch]
    return cfg


def shard_files(src: Path) -> list[Path]:
    """The safetensors files of a folder (all present), else `InputError`."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise InputError("not a safetensors index (no weight_map)", index) from None
    elif (src / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        raise InputError("no safetensors weights (model.safetensors or its index) in the folder", src, field="src")
    for n in names:
        if not (src / n).is_file():
            raise InputError(f"missing shard {n} (named in model.safetensors.index.json)", src / n, field="weights")
    return [src / n for n in names]


def system_message_of(cfg: dict) -> str:
    """The message the official code puts in the system turn (REFERENCE.md §11)."""
    msg = cfg.get("system_message")
    return msg if isinstance(msg, str) else INTERNVL_DEFAULT_SYSTEM


# ---------------------------------------------------------------------------------------------------------------
# Weights


def native_config(cfg: dict, image_token_id: int):
    """The transformers `InternVLConfig` of an original config."""
    import transformers as tf

    v, t = cfg["vision_config"], dict(cfg["llm_config"])
    size, patch = v["image_size"], v["patch_size"]
    vision = dict(
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_hidden_layers=v["num_hidden_layers"],
        num_attention_heads=v["num_attention_heads"],
        num_channels=v.get("num_channels", 3),
        image_size=[size, size],
        patch_size=[patch, patch],
        attention_bias=bool(v.get("qkv_bias", False)),
        use_qk_norm=False,
        norm_type="layer_norm",
        layer_norm_eps=v.get("layer_norm_eps", 1e-6),
        hidden_act=v.get("hidden_act", "gelu"),
    )
    scaling = t.get("rope_scaling") or None
    rope = {"rope_type": "default", "rope_theta": float(t.get("rope_theta", 10000.0))}
    if scaling:
        rope = {**{k: v for k, v in scaling.items() if k != "type"}, "rope_type": scaling.get("type"), **rope}
        rope["rope_type"] = scaling.get("rope_type") or scaling.get("type")
    tied = bool(t.get("tie_word_embeddings", False))
    text = dict(
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
        hidden_act=t.get("hidden_act", "silu"),
        max_position_embeddings=t.get("max_position_embeddings", 32768),
        rms_norm_eps=t.get("rms_norm_eps", 1e-6),
        rope_parameters=rope,
        tie_word_embeddings=tied,
        bos_token_id=t.get("bos_token_id"),
        eos_token_id=t.get("eos_token_id"),
        pad_token_id=t.get("pad_token_id"),
    )
    if cfg["_llm_kind"] == "internlm2":
        text |= {"model_type": "llama", "attention_bias": bool(t.get("bias", False)), "mlp_bias": False}
    else:
        text |= {"model_type": "qwen2", "use_sliding_window": bool(t.get("use_sliding_window", False))}
        text |= {"sliding_window": t.get("sliding_window"), "max_window_layers": t.get("max_window_layers", 0)}
    return tf.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=(size // patch) ** 2 // 4,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=cfg.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=tied,  # transformers' default is True: left so, step scores were off by 0.34
    )


_VISION = [
    ("embeddings.class_embedding", "embeddings.cls_token"),
    ("embeddings.position_embedding", "embeddings.position_embeddings"),
    ("embeddings.patch_embedding.", "embeddings.patch_embeddings.projection."),
    ("encoder.layers.", "encoder.layer."),
    (".attn.proj.", ".attention.projection_layer."),
    (".ls1", ".lambda_1"),
    (".ls2", ".lambda_2"),
    (".norm1.", ".layernorm_before."),
    (".norm2.", ".layernorm_after."),
]
_INTERNLM2 = [
    ("tok_embeddings.", "embed_tokens."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
]
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def split_wqkv(w, heads: int, kv_heads: int):
    """InternLM2's fused `wqkv` (rows laid out `(h gs d)`, gs = heads/kv_heads + 2) into Llama's q, k, v."""
    groups = heads // kv_heads
    d = w.shape[0] // (kv_heads * (groups + 2))
    x = w.reshape(kv_heads, groups + 2, d, *w.shape[1:])
    q = x[:, :groups].reshape(heads * d, *w.shape[1:])
    k = x[:, -2].reshape(kv_heads * d, *w.shape[1:])
    v = x[:, -1].reshape(kv_heads * d, *w.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def map_tensor(key: str, t, cfg: dict) -> list[tuple[str, object]]:
    """One original tensor as [(native key, tensor)], else `InputError` for a key we do not know."""
    if key.startswith("vision_model."):
        k = key[len("vision_model.") :]
        if ".attn.qkv." in k:
            qkv = t.chunk(3, dim=0)
            base = "model.vision_tower." + k.replace("encoder.layers.", "encoder.layer.")
            return [(base.replace(".attn.qkv.", f".attention.{n}_proj."), x.contiguous()) for n, x in zip("qkv", qkv)]
        for a, b in _VISION:
            k = k.replace(a, b)
        return [("model.vision_tower." + k, t)]
    m = re.fullmatch(r"mlp1\.(\d)\.(weight|bias)", key)
    if m and m.group(1) in _MLP1:
        return [(f"model.multi_modal_projector.{_MLP1[m.group(1)]}.{m.group(2)}", t)]
    if key in ("language_model.output.weight", "language_model.lm_head.weight"):
        return [("lm_head.weight", t)]
    if key.startswith("language_model.model."):
        k = key[len("language_model.model.") :]
        if cfg["_llm_kind"] == "internlm2":
            if ".attention.wqkv." in k:
                llm = cfg["llm_config"]
                heads, kv = llm["num_attention_heads"], llm.get("num_key_value_heads", llm["num_attention_heads"])
                parts = split_wqkv(t, heads, kv)
                return [
                    ("model.language_model." + k.replace(".attention.wqkv.", f".self_attn.{n}_proj."), x)
                    for n, x in zip("qkv", parts)
                ]
            for a, b in _INTERNLM2:
                k = k.replace(a, b)
        return [("model.language_model." + k, t)]
    raise InputError(f"unknown weight {key!r} in an InternVL chat checkpoint", field="weights")


def convert_weights(shards: list[Path], out: Path, cfg: dict, dtype=None) -> dict:
    """Convert shard by shard into `out` (one input shard and its converted copy in memory at a time)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    total = 0
    n = len(shards)
    tied = bool(cfg["llm_config"].get("tie_word_embeddings", False))
    for i, shard in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {}
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                for nk, t in map_tensor(key, f.get_tensor(key), cfg):
                    if tied and nk == "lm_head.weight":
                        continue
                    part[nk] = t if dtype is None else t.to(dtype)
        save_file(part, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
        total += sum(t.numel() * t.element_size() for t in part.values())
        del part
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


# ---------------------------------------------------------------------------------------------------------------
# The whole conversion


def build_processor(src: Path, cfg: dict):
    """(DST processor, reference `text -> ids`): image-only InternVL processor with the converted tokenizer."""
    import transformers as tf

    from .convert_tokenizer import load_tokenizers
    from .model import image_only_processor_class

    extra = {
        "start_image_token": IMG_START,
        "end_image_token": IMG_END,
        "context_image_token": IMG_CONTEXT,
        "video_token": "<video>",  # the stock InternVL processor needs one; added when the vocabulary has none
    }
    fast, ref, bos = load_tokenizers(src, cfg["_llm_kind"], extra_special_tokens=extra)
    missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT, "<|im_start|>", "<|im_end|>") if t not in fast.get_vocab()]
    if missing:
        raise InputError(f"the tokenizer has no {', '.join(missing)} token", src / "tokenizer_config.json")
    if "<video>" not in fast.get_vocab():
        fast.add_tokens(["<video>"], special_tokens=True)
    fast.padding_side = "right"
    template = ("{{ bos_token }}" if bos else "") + CHAT_TEMPLATE
    fast.chat_template = template
    size = cfg["vision_config"]["image_size"]
    image_processor = tf.GotOcr2ImageProcessorPil(
        size={"height": size, "width": size},
        crop_to_patches=bool(cfg.get("dynamic_image_size", True)),
        min_patches=int(cfg.get("min_dynamic_patch", 1)),
        max_patches=int(cfg.get("max_dynamic_patch", 12)),
        resample=3,  # PIL BICUBIC
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    if not cfg.get("use_thumbnail", True):
        raise InputError("use_thumbnail false is not supported", src / "config.json", field="use_thumbnail")
    cls = image_only_processor_class("internvl")
    seq = (size // cfg["vision_config"]["patch_size"]) ** 2 // 4
    processor = cls(image_processor=image_processor, tokenizer=fast, image_seq_length=seq, chat_template=template)
    return processor, ref


def convert(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False, dtype: str | None = None) -> dict:
    """Convert SRC (original InternVL chat folder) into DST; returns a summary. Nothing is left at DST on failure."""
    from .model import PRM_CONFIG, load_processor, resolve_device_dtype, save_processor

    src, dst = Path(src), Path(dst)
    t0 = time.time()
    cfg = read_original(src)
    shards = shard_files(src)
    if dst.exists() and not overwrite:
        raise InputError("already exists (pass --overwrite to replace it)", dst, field="dst")
    if dst.resolve() == src.resolve():
        raise InputError("DST must differ from SRC", dst, field="dst")
    torch_dtype = resolve_device_dtype("cpu", dtype)[1] if dtype else None
    system = system_message_of(cfg)
    processor, reference = build_processor(src, cfg)
    stage = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        save_processor(processor, stage)
        staged = load_processor(stage, "internvl")
        from .convert_tokenizer import check_prompts

        name = "sentencepiece tokenizer.model" if cfg["_llm_kind"] == "internlm2" else "tokenizer.json"
        check_prompts(staged, reference, system, name)
        tok = staged.tokenizer
        config = native_config(cfg, tok.convert_tokens_to_ids(IMG_CONTEXT))
        if torch_dtype is not None:
            config.dtype = torch_dtype
        config.architectures = ["InternVLForConditionalGeneration"]
        config.save_pretrained(stage)
        prm = {"label_mode": "value", "labels": ["+", "-"], "system_prompt": system, "converted_from": str(src)}
        (stage / PRM_CONFIG).write_text(json.dumps(prm, indent=2, ensure_ascii=False) + "\n")
        convert_weights(shards, stage, cfg, torch_dtype)
        old = None
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{os.getpid()}"
            dst.rename(old)
        stage.rename(dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    seconds = time.time() - t0
    return {"src": str(src), "dst": str(dst), "llm": cfg["_llm_kind"], "shards": len(shards), "seconds": seconds}


def _cmd_convert(a: argparse.Namespace) -> int:
    s = convert(a.src, a.dst, overwrite=a.overwrite, dtype=a.dtype)
    print(
        f"converted {s['src']} ({s['llm']}, {s['shards']} shard(s)) to {s['dst']} in {s['seconds']:.1f}s; "
        f"score with: visualprm score --prm {s['dst']} ...",
        file=sys.stderr,
    )
    return 0


def add_convert_command(sub) -> None:
    """Add `visualprm convert` to the command's subparsers (cli.py)."""
    p = sub.add_parser("convert", help="convert a released VisualPRM / InternVL chat checkpoint to transformers")
    p.description = (
        "Convert an original InternVL chat checkpoint (config architectures InternVLChatModel, e.g. "
        "OpenGVLab/VisualPRM-8B) into a transformers-native InternVLForConditionalGeneration folder that every "
        "visualprm command loads and that scores like the official code. The tokenizer is checked on rendered PRM "
        "prompts before anything is written; DST appears only when complete."
    )
    p.add_argument("src", help="original-format folder (download it first, e.g. huggingface-cli download)")
    p.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--dtype", default=None, help="cast the weights (float32, bfloat16, float16; default: keep)")
    p.set_defaults(func=_cmd_convert)
