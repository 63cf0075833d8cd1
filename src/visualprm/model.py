"""Load a PRM (model + processor) and encode PRM conversations with their label positions.

This is the only module that knows token ids. It loads any Hugging Face vision-language model through
`AutoModelForImageTextToText` with its processor, without torchvision: the Qwen-VL, InternVL and SmolVLM
processors build a video processor that needs torchvision, so for those we use image-only subclasses that drop
the video part (registered with `AutoProcessor`, and chosen here explicitly, because an unknown saved processor
class would silently load as a bare tokenizer). Text-only causal LMs load through `AutoModelForCausalLM`.

Label positions (REFERENCE.md §4): the conversation is rendered by the model's own chat template with a private
sentinel character in place of every label, the sentinels are located in the rendered text and replaced by the
labels, and each label's character offset is mapped to its token through the tokenizer's offset mapping. The
token must span exactly the label's characters and decode to the label, else we fail loudly: a BPE merge of the
label with its neighbours would silently train or read the wrong position. The processor then expands image
placeholders into image tokens; that happens before the first label, so positions are shifted by the growth
in length, which is verified token by token.

It does not score (scoring.py) or train (train.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import InputError

SENTINEL = "\ue000"  # a private-use character no chat template or tokenizer treats specially
# Model types that tests/test_scoring.py and tests/test_sharing.py check against the plain one-by-one path
# (text-only ones included): prefix sharing (sharing.py) and unmasked right padding (scoring.py) rely on it.
TESTED_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava", "idefics3", "qwen2", "llama")
VALUE_LABELS = ("+", "-")
ADVANTAGE_LABELS = ("+", "=", "-")
PRM_CONFIG = "visualprm.json"  # written beside a trained PRM: label mode, labels, system prompt switch


# ---------------------------------------------------------------------------------------------------------------
# Image-only processors (no torchvision)


def _image_only(cls):
    """A subclass of a processor class whose sub-processors are only the image processor and the tokenizer."""

    class ImageOnly(cls):
        # Sub-processors are read off get_attributes(). The parent's __init__ still passes (image_processor,
        # tokenizer, video_processor) positionally; ProcessorMixin pairs them with our two attributes and drops
        # the third, so no video processor is ever built. The parent's signature (and so its saved settings,
        # such as InternVL's image_seq_length) is kept.
        @classmethod
        def get_attributes(cls_):  # noqa: N805 - classmethod of a generated class
            return [a for a in super().get_attributes() if a != "video_processor"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{cls.__name__.removesuffix('Processor')}ImageOnlyProcessor"
    return ImageOnly


_IMAGE_ONLY: dict[str, Any] = {}


def image_only_processor_class(model_type: str):
    """Our image-only processor class for a model type, or None where the stock processor needs no video part."""
    if model_type in _IMAGE_ONLY:
        return _IMAGE_ONLY[model_type]
    import transformers as tf

    stock = {
        "qwen2_vl": "Qwen2VLProcessor",
        "qwen2_5_vl": "Qwen2_5_VLProcessor",
        "qwen3_vl": "Qwen3VLProcessor",
        "internvl": "InternVLProcessor",
        "smolvlm": "SmolVLMProcessor",
    }.get(model_type)
    if stock is None:
        return None
    cls = _image_only(getattr(tf, stock))
    config_cls = tf.AutoConfig.for_model(model_type).__class__
    tf.AutoProcessor.register(config_cls, cls, exist_ok=True)
    _IMAGE_ONLY[model_type] = cls
    return cls


def save_processor(processor, out: str | os.PathLike) -> None:
    """Save a processor under its stock class name, so that other tools (transformers, vLLM) load the folder too."""
    processor.save_pretrained(out)
    p = Path(out) / "processor_config.json"
    if p.is_file():
        cfg = json.loads(p.read_text())
        name = cfg.get("processor_class", "")
        if name.endswith("ImageOnlyProcessor"):
            stock = type(processor).__mro__[1].__name__
            cfg["processor_class"] = stock
            p.write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Loading


def resolve_device_dtype(device: str | None = None, dtype: str | None = None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    names.update({"float16": torch.float16, "fp16": torch.float16})
    if dtype not in names:
        raise InputError(f"unknown dtype {dtype!r} (expected one of {', '.join(names)})", field="dtype")
    return torch.device(device), names[dtype]


def read_prm_config(path: str | os.PathLike) -> dict:
    """The PRM settings saved by `train` (label mode, labels, system prompt); {} for other checkpoints."""
    p = Path(path) / PRM_CONFIG
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg})", p) from None
    return {}


def load_processor(path: str | os.PathLike, model_type: str | None = None):
    """The processor of a model folder (image-only where the stock one needs torchvision), or its tokenizer for a
    text-only model. A folder without processor or tokenizer files raises `InputError`."""
    import transformers as tf

    p = Path(path)
    if p.is_dir() and not any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise InputError("no tokenizer or processor files in the model folder", path, field="processor")
    if model_type is None:
        model_type = tf.AutoConfig.from_pretrained(path).model_type
    cls = image_only_processor_class(model_type)
    try:
        if cls is not None:
            return cls.from_pretrained(path)
        proc = tf.AutoProcessor.from_pretrained(path)
    except OSError as e:
        raise InputError(f"cannot load the processor: {e}", path, field="processor") from None
    return proc


def is_multimodal(processor) -> bool:
    return hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")


def get_tokenizer(processor):
    return processor.tokenizer if hasattr(processor, "tokenizer") else processor


def is_original(path: str | os.PathLike) -> bool:
    """True for a folder whose config.json says `InternVLChatModel` (the original layout)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return "InternVLChatModel" in (cfg.get("architectures") or [])


def load_model(path: str | os.PathLike, device: str | None = None, dtype: str | None = None):
    """Load `(model, processor)` for inference: model in eval mode on the device, in the dtype.

    Vision-language models load with `AutoModelForImageTextToText`, text-only ones with `AutoModelForCausalLM`.
    """
    import transformers as tf

    p = Path(path)
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise InputError("model folder not found (and HF_HUB_OFFLINE=1, so no hub download)", path, field="prm")
    if is_original(p):
        raise InputError(
            "an original InternVL chat checkpoint (InternVLChatModel): convert it first with "
            "`visualprm convert SRC DST`, then pass DST",
            path,
            field="prm",
        )
    try:
        config = tf.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise InputError(f"not a model folder: {str(e).splitlines()[0]}", path, field="prm") from None
    processor = load_processor(path, config.model_type)
    tf.utils.logging.disable_progress_bar()  # our own bars say what is happening
    dev, dt = resolve_device_dtype(device, dtype)
    auto = tf.AutoModelForImageTextToText if is_multimodal(processor) else tf.AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=dt)
    model.to(dev).eval()
    return model, processor


# ---------------------------------------------------------------------------------------------------------------
# Label tokens and encoding


def label_token_ids(processor, labels: tuple[str, ...] = VALUE_LABELS, prefix: str = "") -> list[int]:
    """The token id of each label (after `prefix`, see `label_prefix`); a label that is not exactly one token,
    or an unknown character that encodes as the unknown token, raises `InputError`."""
    tok = get_tokenizer(processor)
    ids = []
    for lab in labels:
        enc = tok(prefix + lab, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 and tok.convert_tokens_to_ids(prefix + lab) not in (None, tok.unk_token_id):
            # sentencepiece vocabularies (converted InternLM2) put "▁" before a text that starts a piece, so
            # "+" alone encodes as "▁", "+"; the token itself is in the vocabulary (encode checks it in context).
            enc = [tok.convert_tokens_to_ids(prefix + lab)]
        if len(enc) != 1:
            raise InputError(
                f"label {prefix + lab!r} is {len(enc)} tokens in this vocabulary (must be exactly one)", field="label"
            )
        if tok.decode(enc) != prefix + lab:
            got = tok.decode(enc)
            raise InputError(f"label {lab!r} is not in the vocabulary (it encodes as {got!r})", field="label")
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise InputError(f"labels {labels} share a token id", field="label")
    return ids


def label_prefix(processor, system_prompt: bool | str = True) -> str:
    """The whitespace this model's chat template merges into the label token ("" for most templates; " " for
    templates that write `Assistant: ` before the reply with a vocabulary that has a " +" token)."""
    from .steps import prm_messages

    msgs = prm_messages("q", ["a"], [SENTINEL], 0, system_prompt)
    try:
        return encode(processor, msgs, [VALUE_LABELS[0]]).label_prefix
    except InputError:
        label_token_ids(processor, VALUE_LABELS)  # says so plainly when a label is not in the vocabulary at all
        raise


@dataclass
class Encoded:
    """One encoded conversation: processor outputs (batch dimension 1) and the label token positions."""

    inputs: dict  # input_ids, attention_mask, pixel_values, ... each with a leading batch dimension of 1
    label_positions: list[int]  # index of each label token in input_ids
    label_prefix: str = ""  # whitespace the chat template puts before a label, merged into its token (" +")

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def render_with_labels(processor, messages: list[dict], labels: list[str]) -> tuple[str, list[int]]:
    """Render messages whose assistant turns hold `SENTINEL`, put the labels in, return (text, char offsets)."""
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if isinstance(text, list):
        text = text[0]
    parts = text.split(SENTINEL)
    if len(parts) - 1 != len(labels):
        raise InputError(
            f"the chat template rendered {len(parts) - 1} label slots for {len(labels)} labels", field="chat_template"
        )
    out, offsets = parts[0], []
    for lab, part in zip(labels, parts[1:]):
        offsets.append(len(out))
        out += lab + part
    return out, offsets


def encode(
    processor,
    messages: list[dict],
    labels: list[str],
    images: list | None = None,
    max_length: int | None = None,
) -> Encoded:
    """Encode a conversation whose k-th assistant turn holds `SENTINEL`, with `labels[k]` put there.

    Returns the processor's tensors and the verified token index of every label.
    """
    text, char_offsets = render_with_labels(processor, messages, labels)
    tok = get_tokenizer(processor)
    plain = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = plain["input_ids"], plain["offset_mapping"]
    ends = {e: i for i, (s, e) in enumerate(spans) if e > s}
    positions, prefixes = [], []
    for lab, off in zip(labels, char_offsets):
        # The label's token must end where the label ends and hold nothing but the label, or the label after
        # whitespace that the template put before it (" +" is one token in many BPE vocabularies).
        i = ends.get(off + len(lab))
        dec = tok.decode([ids[i]]) if i is not None else ""
        prefix = dec[: len(dec) - len(lab)]
        if i is None or spans[i][0] > off or not dec.endswith(lab) or prefix.strip():
            got = repr(text[spans[i][0] : spans[i][1]]) if i is not None else "no token ending there"
            raise InputError(
                f"label {lab!r} at character {off} is not a token of its own (the tokenizer gives {got}); "
                "this tokenizer merges the label with its neighbours",
                field="label",
            )
        positions.append(i)
        prefixes.append(prefix)
    if len(set(prefixes)) > 1:
        raise InputError(f"labels are merged with different whitespace {sorted(set(prefixes))}", field="label")
    if images and is_multimodal(processor):
        inputs = processor(text=[text], images=[images], add_special_tokens=False, return_tensors="pt")
    else:
        inputs = tok([text], add_special_tokens=False, return_tensors="pt")
    inputs = dict(inputs)
    full = inputs["input_ids"][0].tolist()
    shift = len(full) - len(ids)
    # Image expansion happens in the first user turn, before every label: everything from the first label on
    # must be identical token by token.
    first = positions[0]
    if shift < 0 or full[first + shift :] != ids[first:]:
        raise InputError("the processor's tokens disagree with the tokenizer's after the image", field="processor")
    positions = [p + shift for p in positions]
    if max_length is not None and len(full) > max_length:
        raise InputError(f"sequence of {len(full)} tokens is longer than max_length {max_length}", field="max_length")
    inputs.pop("offset_mapping", None)
    return Encoded(inputs=inputs, label_positions=positions, label_prefix=prefixes[0] if prefixes else "")


def collate(encoded: list[Encoded], pad_token_id: int, padding_side: str = "right") -> tuple[dict, list[list[int]]]:
    """Pad a batch. Per-token tensors (shape [1, L, ...]) are padded; others (pixel values, grids) concatenated.

    Returns the batch and each item's label positions shifted for left padding.
    """
    import torch

    lmax = max(e.length for e in encoded)
    batch: dict[str, Any] = {}
    keys = [k for k in encoded[0].inputs if all(k in e.inputs for e in encoded)]
    keys += [k for e in encoded for k in e.inputs if k not in keys]  # image tensors present in some items only
    positions = []
    for e in encoded:
        pad = lmax - e.length
        positions.append([p + pad for p in e.label_positions] if padding_side == "left" else list(e.label_positions))
    for k in keys:
        vals = [e.inputs.get(k) for e in encoded]
        present = [v for v in vals if v is not None]
        if not present or not torch.is_tensor(present[0]):
            continue
        per_token = all(
            v.dim() >= 2 and v.shape[0] == 1 and v.shape[1] == e.length for v, e in zip(vals, encoded) if v is not None
        )
        if per_token:
            # A per-token tensor missing from an item (say, mm_token_type_ids of a text-only one) is all zeros.
            fill = pad_token_id if k == "input_ids" else 0
            rows = []
            for v, e in zip(vals, encoded):
                if v is None:
                    v = torch.zeros((1, e.length, *present[0].shape[2:]), dtype=present[0].dtype)
                pad_t = torch.full((1, lmax - e.length, *v.shape[2:]), fill, dtype=v.dtype)
                rows.append(torch.cat([v, pad_t] if padding_side == "right" else [pad_t, v], dim=1))
            batch[k] = torch.cat(rows, dim=0)
        elif k == "pixel_attention_mask" or present[0].dim() == 5:
            # Per-item image stacks [1, n_images, ...] (Idefics3): pad to the most images with all-zero images,
            # which the model drops, and give text-only items zeros too.
            n_max = max(v.shape[1] for v in present)
            rows = []
            for v in vals:
                shape = (1, n_max, *present[0].shape[2:])
                row = torch.zeros(shape, dtype=present[0].dtype)
                if v is not None:
                    row[:, : v.shape[1]] = v
                rows.append(row)
            batch[k] = torch.cat(rows, dim=0)
        else:
            batch[k] = torch.cat(present, dim=0)
    return batch, positions
