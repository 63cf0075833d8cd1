"""Prefix-shared scoring of Best-of-N groups: the shared prompt runs once, the candidates reuse its cache.

All N candidates of a Best-of-N problem share the system prompt, the image(s), the question and the first-turn
header (REFERENCE.md §9). For each group we encode every candidate as the plain path does (`model.encode`, with
the image processed once per group), take the longest common token prefix of the encodings, cut so that it ends
before the position predicting the first label and holds every image token, and run that prefix once with
`use_cache=True` (so the vision encoder runs once per image). The candidates' remaining tokens then run as one
right-padded batch on top of the prefix key/value cache, expanded along the batch dimension: attention mask =
ones over the prefix (zeros over the padding of shorter prefixes when groups share a batch) + the suffix mask;
position ids are explicit: for multimodal-rope models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) they come from the model's
own `get_rope_index` on each candidate's full sequence, for the others they continue from the prefix length.
Rows are sorted by suffix length (then prefix length) inside windows of about four batches of candidates, so
batches pad little and small groups share batches (a padded suffix token costs a whole token, a padded prefix
key only attention); a batch holds at most `batch_size` rows and, when `max_batch_tokens` is set, at most
that many (prefix + suffix) token slots, so a large group is split into several batches over the same prefix.

Scores equal the plain path's within float error (tests/test_sharing.py, every architecture of tiny.ARCHS, fp32,
1e-4). Where the shared path is not possible (no backbone/linear head, logit soft-capping, sliding-window
layers, a forward without a cache argument) the scorer falls back to the plain path and logs why, once. For a
model type not covered by the tests, the first group is also scored the plain way and compared; on a mismatch
the scorer falls back for good.

This module does not load models, read files or aggregate scores (scoring.py).
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass

from .model import TESTED_TYPES, Encoded

log = logging.getLogger(__name__)

VERIFIED = TESTED_TYPES  # model types whose shared path the tests check against the plain path
_WARNED: set[str] = set()
_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


# ---------------------------------------------------------------------------------------------------------------
# Whether the shared path applies to a model


def unsupported_reason(model) -> str | None:
    """Why prefix sharing cannot run on this model, or None when it can."""
    backbone = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if backbone is None or head is None or not hasattr(head, "weight"):
        return f"{type(model).__name__} has no `.model` backbone with a linear output layer"
    cfg = model.config
    text_cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    if getattr(cfg, "final_logit_softcapping", None) or getattr(text_cfg, "final_logit_softcapping", None):
        return "the model soft-caps its logits"
    types = getattr(text_cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in types) or getattr(text_cfg, "use_sliding_window", False):
        return "the model has sliding-window or non-attention layers"
    if _cache_kwarg(backbone) is None:
        return f"{type(backbone).__name__}.forward takes no key/value cache"
    return None


def _cache_kwarg(backbone) -> str | None:
    params = inspect.signature(backbone.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def _check_state(scorer) -> str | None:
    """The scorer's sharing state: None (share), "check" (share after a plain comparison) or a reason not to."""
    if not getattr(scorer, "share_prefix", True):
        return "switched off"
    state = getattr(scorer, "_share_state", "unset")
    if state == "unset":
        state = unsupported_reason(scorer.model)
        if state is None and getattr(scorer.model.config, "model_type", None) not in VERIFIED:
            state = "check"
        scorer._share_state = state
    return state


# ---------------------------------------------------------------------------------------------------------------
# Encoding a group (images processed once) and planning its prefix


class _OnceImages:
    """Wraps an image processor so that a group's images are processed once for all its candidates."""

    def __init__(self, inner):
        self._inner, self._memo = inner, {}

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, images=None, *args, **kwargs):
        key = (_image_key(images), repr(args), repr(sorted(kwargs.items(), key=lambda kv: kv[0])))
        if key not in self._memo:
            self._memo[key] = self._inner(images, *args, **kwargs)
        return copy.copy(self._memo[key])  # a fresh dict each time: some processors pop keys from it (Idefics3)


def _image_key(images) -> tuple:
    if isinstance(images, (list, tuple)):
        return tuple(_image_key(x) for x in images)
    return (id(images),)


def encode_group(scorer, group: dict) -> list[Encoded]:
    """Encode every solution of a group exactly as `Scorer.encode_item` does, processing its images once."""
    processor = scorer.processor
    images = group.get("images") or []
    items = [{"question": group["question"], "images": images, "steps": s} for s in group["solutions"]]
    if not (images and scorer.multimodal and hasattr(processor, "image_processor")) or len(items) == 1:
        return [scorer.encode_item(it) for it in items]
    # Shallow copies: the scorer and its processor are never changed (other threads may be using them).
    once = copy.copy(scorer)
    once.processor = copy.copy(processor)
    once.processor.image_processor = _OnceImages(processor.image_processor)
    return [once.encode_item(it) for it in items]


def _media_token_ids(model) -> set[int]:
    ids = set()
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
            v = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(v, int):
                ids.add(v)
    return ids


def prefix_length(encoded: list[Encoded], media_ids: set[int] = frozenset()) -> int:
    """Length of the prefix the encodings share: their longest common token prefix, ending before the position
    that predicts any label, with every image token inside it. 0 when no such prefix exists."""
    import torch

    ids = [e.inputs["input_ids"][0] for e in encoded]
    p = min(min(e.label_positions) for e in encoded) - 1  # the logits predicting a label sit just before it
    for other in ids[1:]:
        n = min(p, len(ids[0]), len(other))
        diff = (ids[0][:n] != other[:n]).nonzero()
        p = int(diff[0, 0]) if len(diff) else n
    if p < 1:
        return 0
    for e, x in zip(encoded, ids):
        mm = e.inputs.get("mm_token_type_ids")
        if mm is not None and bool(mm[0, p:].any()):
            return 0
        if media_ids and bool(torch.isin(x[p:], torch.tensor(sorted(media_ids))).any()):
            return 0
    return p


def full_positions(backbone, enc: Encoded):
    """Multimodal-rope position ids [3, 1, L] of one full sequence from the model's `get_rope_index`, or None
    where positions are plain 0..L-1."""
    inp = enc.inputs
    if not hasattr(backbone, "get_rope_index") or "mm_token_type_ids" not in inp:
        return None
    if inp.get("image_grid_thw") is None and inp.get("video_grid_thw") is None:
        return None
    kw = {k: inp[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if inp.get(k) is not None}
    pos, _ = backbone.get_rope_index(
        input_ids=inp["input_ids"], mm_token_type_ids=inp["mm_token_type_ids"], attention_mask=None, **kw
    )
    return pos


@dataclass
class _Group:
    encoded: list[Encoded]
    prefix: int
    positions: list  # per candidate: [3, 1, L] tensor or None
    kv: list | None = None  # per layer (keys, values) of the prefix, each [1, heads, prefix, dim]


# ---------------------------------------------------------------------------------------------------------------
# Forward passes


def _to_device(scorer, inputs: dict) -> dict:
    dev = scorer.model.device
    out = {k: v.to(dev) for k, v in inputs.items()}
    if "pixel_values" in out and out["pixel_values"].is_floating_point():
        out["pixel_values"] = out["pixel_values"].to(scorer.model.dtype)
    return out


def run_prefix(scorer, g: _Group) -> None:
    """Run a group's shared prefix once (images included) and keep its key/value cache in `g.kv`."""
    import torch
    from transformers import DynamicCache

    backbone = scorer.model.model
    e, p = g.encoded[0], g.prefix
    inputs = {}
    for k, v in e.inputs.items():
        if not torch.is_tensor(v):
            continue
        per_token = k in _PER_TOKEN or (v.dim() == 2 and tuple(v.shape) == (1, e.length) and "pixel" not in k)
        inputs[k] = v[:, :p] if per_token else v
    inputs = _to_device(scorer, inputs)
    if g.positions[0] is not None:
        inputs["position_ids"] = g.positions[0][:, :, :p].to(scorer.model.device)
    cache = DynamicCache()
    with torch.inference_mode():
        scorer.forward_count += 1
        backbone(**inputs, use_cache=True, **{_cache_kwarg(backbone): cache})
    g.kv = [(layer.keys, layer.values) for layer in cache.layers]


def run_suffixes(scorer, rows: list[tuple[_Group, int]]) -> list[list[float]]:
    """Score candidates `(group, index)` as one right-padded batch on top of their groups' prefix caches."""
    import torch
    from transformers import DynamicCache

    backbone = scorer.model.model
    dev = scorer.model.device
    mrope = hasattr(backbone, "get_rope_index")
    pmax = max(g.prefix for g, _ in rows)
    lens = [g.encoded[c].length - g.prefix for g, c in rows]
    smax, b = max(lens), len(rows)
    ids = torch.full((b, smax), scorer.pad_id, dtype=torch.long)
    mask = torch.zeros((b, pmax + smax), dtype=torch.long)
    pos = torch.zeros((3, b, smax) if mrope else (b, smax), dtype=torch.long)
    idx_b, idx_t = [], []
    for r, ((g, c), n) in enumerate(zip(rows, lens)):
        e, p = g.encoded[c], g.prefix
        ids[r, :n] = e.inputs["input_ids"][0, p:]
        mask[r, :p] = 1
        mask[r, pmax : pmax + n] = 1
        if g.positions[c] is not None:
            full = g.positions[c][:, 0, p:]
            pos[:, r, :n] = full
            pos[:, r, n:] = full[:, -1:] + 1 + torch.arange(smax - n)
        else:
            pos[..., r, :] = p + torch.arange(smax)
        idx_b += [r] * len(e.label_positions)
        idx_t += [q - 1 - p for q in e.label_positions]
    # The prefix cache of each row, padded to pmax; rows of one group are consecutive and share one expanded view.
    runs: list[list] = []
    for g, _ in rows:
        if runs and runs[-1][0] is g:
            runs[-1][1] += 1
        else:
            runs.append([g, 1])
    layers = []
    for li in range(len(rows[0][0].kv)):
        kv = []
        for t in range(2):
            parts = []
            for g, n in runs:
                x = g.kv[li][t]
                if x.shape[-2] < pmax:
                    x = torch.nn.functional.pad(x, (0, 0, 0, pmax - x.shape[-2]))
                parts.append(x.expand(n, *x.shape[1:]))
            kv.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
        layers.append(tuple(kv))
    cache = DynamicCache(ddp_cache_data=layers)
    with torch.inference_mode():
        scorer.forward_count += 1
        out = backbone(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos.to(dev),
            use_cache=True,
            **{_cache_kwarg(backbone): cache},
        )
        h = out.last_hidden_state[torch.tensor(idx_b, device=dev), torch.tensor(idx_t, device=dev)]
        logits = scorer._label_head(h).float().cpu()
    res, k = [], 0
    for g, c in rows:
        n = len(g.encoded[c].label_positions)
        res.append(scorer._scores_from_logits(logits[k : k + n]))
        k += n
    return res


# ---------------------------------------------------------------------------------------------------------------
# Driver


def _batches(rows: list[tuple[_Group, int]], batch_size: int, max_tokens: int | None) -> list[list]:
    out: list[list] = []
    cur: list = []
    pmax = smax = 0
    for g, c in rows:
        s = g.encoded[c].length - g.prefix
        p2, s2 = max(pmax, g.prefix), max(smax, s)
        full = len(cur) >= batch_size or (max_tokens is not None and (len(cur) + 1) * (p2 + s2) > max_tokens)
        if cur and full:
            out.append(cur)
            cur, p2, s2 = [], g.prefix, s
        cur.append((g, c))
        pmax, smax = p2, s2
    if cur:
        out.append(cur)
    return out


def _flat_groups(scorer, groups: list[dict]) -> list[list[list[float]]]:
    items = [
        {"question": g["question"], "images": g.get("images") or [], "steps": s}
        for g in groups
        for s in g["solutions"]
    ]
    flat = scorer.score_steps(items)
    out, k = [], 0
    for g in groups:
        out.append(flat[k : k + len(g["solutions"])])
        k += len(g["solutions"])
    return out


def score_groups(scorer, groups: list[dict]) -> list[list[list[float]]]:
    """Step scores per candidate per group, with prefix sharing where possible (else the plain path)."""
    state = _check_state(scorer)
    if state not in (None, "check"):
        if state != "switched off":
            _warn_once(f"prefix sharing off, scoring candidates one full sequence each: {state}")
        return _flat_groups(scorer, groups)
    backbone = scorer.model.model
    media = _media_token_ids(scorer.model)
    out: list[list] = [[None] * len(g["solutions"]) for g in groups]
    window = max(1, scorer.batch_size) * 4
    start = 0
    while start < len(groups):
        end, n = start, 0
        while end < len(groups) and (n == 0 or n + len(groups[end]["solutions"]) <= window):
            n += len(groups[end]["solutions"])
            end += 1
        shared: list[tuple[int, _Group]] = []
        plain: list[tuple[int, int, Encoded]] = []
        for gi in range(start, end):
            if not groups[gi]["solutions"]:
                continue
            enc = encode_group(scorer, groups[gi])
            p = prefix_length(enc, media)
            if p == 0:
                plain += [(gi, c, e) for c, e in enumerate(enc)]
                continue
            shared.append((gi, _Group(enc, p, [full_positions(backbone, e) for e in enc])))
        for _, g in shared:
            run_prefix(scorer, g)
        rows = sorted(
            ((gi, g, c) for gi, g in shared for c in range(len(g.encoded))),
            key=lambda r: (r[1].encoded[r[2]].length - r[1].prefix, r[1].prefix, r[0]),
        )
        gidx = {id(g): gi for gi, g in shared}
        for batch in _batches([(g, c) for _, g, c in rows], scorer.batch_size, scorer.max_batch_tokens):
            for (g, c), s in zip(batch, run_suffixes(scorer, batch)):
                out[gidx[id(g)]][c] = s
        if plain:
            for (gi, c, _), s in zip(plain, scorer.score_encoded([e for _, _, e in plain])):
                out[gi][c] = s
        if _check_state(scorer) == "check" and shared:
            gi, g = shared[0]
            if not _agrees(scorer, g.encoded[0], out[gi][0]):
                return _flat_groups(scorer, groups)
            scorer._share_state = None
        for _, g in shared:
            g.kv = None
        start = end
    return out


def _agrees(scorer, enc: Encoded, shared_scores: list[float]) -> bool:
    """For a model type the tests do not cover: compare one candidate with the plain path once."""
    import torch

    plain = scorer.score_encoded([enc])[0]
    tol = 1e-3 if scorer.model.dtype == torch.float32 else 3e-2
    diff = max(abs(a - b) for a, b in zip(plain, shared_scores))
    if diff > tol:
        mt = getattr(scorer.model.config, "model_type", "?")
        scorer._share_state = f"shared and plain scores differ by {diff:.2g} on model type {mt}"
        _warn_once(f"prefix sharing off, scoring candidates one full sequence each: {scorer._share_state}")
        return False
    return True
