"""The tokenizer of a converted InternVL checkpoint (convert.py), and the check that it tokenizes exactly as the
official code does.

InternLM2 folders ship a sentencepiece `tokenizer.model` read by the slow `InternLM2Tokenizer`: it splits the text
on the added/special tokens, encodes every other piece with sentencepiece on its own (so with `add_dummy_prefix`
each piece starts with `▁`, also after a special token) and puts BOS first. `reference_encoder` does exactly that
with the `sentencepiece` package; `internlm2_fast` builds a `tokenizers` BPE from the model's pieces and scores
with the same per-piece rule (a `Prepend("▁")` normalizer, applied to each piece between added tokens). Qwen2
folders ship `tokenizer.json`: the folder's own tokenizer is both the reference and the fast one.

`check_prompts` encodes PRM conversations with an image through the staged DST processor and compares the ids
with the reference encoding of the official prompt string (`official_prompt`), first differing token named.
It does not load the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .schema import InputError

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

# Probe conversations: spaces (double, leading), newlines, digits, LaTeX, non-ASCII and full-width characters.
PROBES = [
    ("How many red circles are in the image?", ["There are 3 red circles.", "So the answer is 3."]),
    (
        "Find x if  2x + 3 = 11.\nAnswer with a number.",
        ["Subtract 3:  2x = 8.", "Divide by 2:\nx = 4", "Final answer: \\boxed{4}"],
    ),
    (" 线段AB的长度是多少？ (A) 3 (B) 4", ["由图可知 AB = 4。", "答案：B ① ½ Ａ ﬁ", "  indented\tline"]),
]


# ---------------------------------------------------------------------------------------------------------------
# InternLM2: sentencepiece


def _added_tokens(src: Path) -> list[dict]:
    cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    out = []
    for i, d in sorted((cfg.get("added_tokens_decoder") or {}).items(), key=lambda x: int(x[0])):
        out.append({"id": int(i), **d})
    return out


def _sp_settings(src: Path) -> dict:
    cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}

    def content(x, default):
        x = cfg.get(x, default)
        return x.get("content") if isinstance(x, dict) else x

    return {
        "bos": content("bos_token", "<s>"),
        "eos": content("eos_token", "</s>"),
        "unk": content("unk_token", "<unk>"),
        "pad": content("pad_token", "</s>"),
        "add_bos": bool(cfg.get("add_bos_token", True)),
        "add_eos": bool(cfg.get("add_eos_token", False)),
    }


def reference_encoder(src: Path):
    """`text -> ids` as the official slow `InternLM2Tokenizer` encodes it (`tokenizer(query)`)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    s = _sp_settings(src)
    added = {d["content"]: d for d in _added_tokens(src)}
    for t in (s["bos"], s["eos"], s["unk"]):  # special tokens are split off like added ones
        if t:
            added.setdefault(t, {"content": t, "id": sp.piece_to_id(t), "lstrip": False, "rstrip": False})
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))

    def encode(text: str) -> list[int]:
        ids = [sp.piece_to_id(s["bos"])] if s["add_bos"] else []
        pieces, pos = [], 0
        for m in pattern.finditer(text):
            pieces += [text[pos : m.start()], added[m.group()]]
            pos = m.end()
        pieces.append(text[pos:])
        for i, p in enumerate(pieces):
            if isinstance(p, dict):
                ids.append(p["id"])
                continue
            if i > 0 and pieces[i - 1].get("rstrip"):
                p = p.lstrip()
            if i + 1 < len(pieces) and pieces[i + 1].get("lstrip"):
                p = p.rstrip()
            if p:
                ids += sp.encode(p)
        if s["add_eos"]:
            ids.append(sp.piece_to_id(s["eos"]))
        return ids

    return encode


def internlm2_fast(src: Path, **extra):
    """A `PreTrainedTokenizerFast` built from the folder's sentencepiece BPE model and added tokens."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    proto = pb.ModelProto()
    proto.ParseFromString((src / "tokenizer.model").read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise InputError("only BPE sentencepiece models can be converted", src / "tokenizer.model", field="tokenizer")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    plain = {p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL}
    merges = []
    for piece in plain:
        for j in range(1, len(piece)):
            a, b = piece[:j], piece[j:]
            if a in vocab and b in vocab:
                merges.append((vocab[piece], vocab[a], vocab[b], a, b))
    merges = [(a, b) for *_, a, b in sorted(merges)]
    unk = next(p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.UNKNOWN)
    tok = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback)
    )
    norm = [normalizers.Replace(" ", "▁")]
    if proto.normalizer_spec.add_dummy_prefix:
        norm.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    s = _sp_settings(src)
    specials = [
        AddedToken(t, special=True, normalized=False) for t in dict.fromkeys((s["unk"], s["bos"], s["eos"])) if t
    ]
    tok.add_special_tokens(specials)
    for d in _added_tokens(src):
        at = AddedToken(
            d["content"],
            special=bool(d.get("special", True)),
            lstrip=bool(d.get("lstrip")),
            rstrip=bool(d.get("rstrip")),
            normalized=False,
            single_word=bool(d.get("single_word")),
        )
        tok.add_special_tokens([at]) if at.special else tok.add_tokens([at])
        got = tok.token_to_id(d["content"])
        if got != d["id"]:
            raise InputError(
                f"added token {d['content']!r} gets id {got} in the fast tokenizer, {d['id']} in the original",
                src / "tokenizer_config.json",
                field="added_tokens_decoder",
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=s["bos"], eos_token=s["eos"], unk_token=s["unk"], pad_token=s["pad"], **extra
    )


# ---------------------------------------------------------------------------------------------------------------
# Both kinds


def load_tokenizers(src: Path, kind: str, **extra):
    """(fast tokenizer for DST, reference `text -> ids`, whether the official tokenization starts with BOS);
    `extra` goes to the fast tokenizer's constructor."""
    if kind == "internlm2":
        if not (src / "tokenizer.model").is_file():
            raise InputError("no sentencepiece tokenizer.model in an InternLM2 folder", src, field="tokenizer")
        fast = internlm2_fast(src, **extra)
        ref = reference_encoder(src)
        bos = _sp_settings(src)["add_bos"]
        return fast, ref, bos
    if not (src / "tokenizer.json").is_file():
        raise InputError("no tokenizer.json in a Qwen2 folder", src, field="tokenizer")
    import transformers as tf

    # The folder's own tokenizer class when transformers has it (Qwen2Tokenizer), never the folder's code.
    cfg = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    cls = getattr(tf, str(cfg.get("tokenizer_class") or ""), None)
    if not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedTokenizerBase)):
        cls = tf.PreTrainedTokenizerFast
    fast = cls.from_pretrained(str(src), **extra)
    ref = cls.from_pretrained(str(src))
    bos_probe = ref("a")["input_ids"]
    bos = ref.bos_token_id is not None and bos_probe[:1] == [ref.bos_token_id]
    return fast, (lambda text: ref(text)["input_ids"]), bos


def official_prompt(system_message: str, question: str, steps: list[str], tiles: int, seq: int = 256) -> str:
    """The prompt string the official PRM scoring builds (internvl2_5 template, `+` in every assistant turn)."""
    out = f"<|im_start|>system\n{system_message}<|im_end|>\n"
    for k, step in enumerate(steps):
        text = f"### Question:\n<image>\n{question}\n\n### Solution Process:\n{step}" if k == 0 else step
        out += f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n+<|im_end|>\n"
    return out.replace("<image>", IMG_START + IMG_CONTEXT * seq * tiles + IMG_END, 1)


def check_prompts(processor, reference, system_message: str, name: str, image=None) -> None:
    """Encode the probe conversations (with one image) through `processor` as `visualprm score` does, and compare
    with `reference(official_prompt(...))`; `InputError` naming the first differing token."""
    from PIL import Image

    from .model import SENTINEL, encode, get_tokenizer
    from .steps import prm_messages

    tok = get_tokenizer(processor)
    image = image if image is not None else Image.new("RGB", (448, 448), (120, 30, 200))
    for question, steps in PROBES:
        msgs = prm_messages(question, steps, [SENTINEL] * len(steps), 1, system_message)
        enc = encode(processor, msgs, ["+"] * len(steps), [image])
        ours = enc.inputs["input_ids"][0].tolist()
        tiles = int(enc.inputs["pixel_values"].shape[0])
        theirs = reference(official_prompt(system_message, question, steps, tiles, processor.image_seq_length))
        if ours != theirs:
            k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            a = tok.convert_ids_to_tokens(ours[k]) if k < len(ours) else "(end)"
            b = tok.convert_ids_to_tokens(theirs[k]) if k < len(theirs) else "(end)"
            raise InputError(
                f"the converted tokenizer differs from the original ({name}) at token {k} of a rendered PRM "
                f"prompt: {a!r} instead of {b!r}; refusing to write a folder that scores differently",
                field="tokenizer",
            )
