"""Step scores from a PRM in one forward pass per solution, aggregation, and `visualprm score`.

Every assistant turn holds `+` as a placeholder (REFERENCE.md §4); at each label position the logits of the
label tokens alone are read from the position just before it, softmaxed over those 2 (value PRM: score =
P(`+`)) or 3 tokens (advantage PRM: score = P(`+`) - P(`-`)). Only those rows of the output layer are computed,
so a 150k-word vocabulary costs nothing extra. Batches are padded on the right by default (left works too,
tested); solutions are sorted by length inside `score_steps` so that batches pad little, and results come back
in input order.

`score_per_prefix` is the plain slow reference: one forward pass per step prefix, reading the next-token
distribution at the end of the prefix with the generation prompt. Tests check that both agree.

This module does not split responses (steps.py) or pick Best-of-N answers (bon.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from .jobs import append_rows, input_stamp, resume_rows
from .model import (
    ADVANTAGE_LABELS,
    SENTINEL,
    TESTED_TYPES,
    VALUE_LABELS,
    Encoded,
    collate,
    encode,
    get_tokenizer,
    is_multimodal,
)
from .schema import InputError, Loc, check_image, load_image, read_jsonl, resolve_images, solution, write_jsonl
from .steps import prm_messages

AGGREGATES = ("mean", "min", "max", "last", "prod")


def aggregate(step_scores: list[float], how: str = "mean") -> float:
    """One score for a solution from its step scores: mean (paper default), min, max, last or prod."""
    if how not in AGGREGATES:
        raise InputError(f"unknown aggregate {how!r} (expected one of {', '.join(AGGREGATES)})", field="aggregate")
    if not step_scores:
        raise ValueError("no step scores to aggregate")
    if how == "mean":
        return sum(step_scores) / len(step_scores)
    if how == "min":
        return min(step_scores)
    if how == "max":
        return max(step_scores)
    if how == "last":
        return step_scores[-1]
    return math.prod(step_scores)


_aggregate = aggregate  # for functions whose `aggregate` argument shadows it


def set_max_tiles(processor, n: int) -> None:
    """At most `n` image tiles (InternVL's `max_dynamic_patch`; the paper's Best-of-N used 6)."""
    ip = getattr(processor, "image_processor", None)
    if ip is None or not hasattr(ip, "max_patches") or not getattr(ip, "crop_to_patches", False):
        raise InputError("--max-tiles applies to InternVL (tiled) image processors only", field="max_tiles")
    if n < getattr(ip, "min_patches", 1):
        raise InputError(f"--max-tiles {n} is below the processor's min_patches {ip.min_patches}", field="max_tiles")
    ip.max_patches = n


class Scorer:
    """Scores the steps of solutions with a PRM. Engine-agnostic callers use `score_steps` / `score_groups`."""

    def __init__(
        self,
        model,
        processor,
        label_mode: str = "value",
        system_prompt: bool | str = True,
        batch_size: int = 8,
        max_length: int | None = None,
        padding_side: str = "right",
        share_prefix: bool = True,
        max_batch_tokens: int | None = None,
    ):
        from .model import label_prefix, label_token_ids

        if label_mode not in ("value", "advantage"):
            raise InputError(f"unknown label mode {label_mode!r} (expected value or advantage)", field="label_mode")
        self.model, self.processor = model, processor
        self.label_mode = label_mode
        self.labels = VALUE_LABELS if label_mode == "value" else ADVANTAGE_LABELS
        self.system_prompt = system_prompt
        self.label_prefix = label_prefix(processor, system_prompt)  # " " where the template merges it, else ""
        self.label_ids = label_token_ids(processor, self.labels, self.label_prefix)
        self.placeholder = self.labels[0]
        self.batch_size = batch_size
        self.max_length = max_length
        self.padding_side = padding_side
        self.share_prefix = share_prefix  # score_groups: run each group's shared prompt once (sharing.py)
        self.max_batch_tokens = max_batch_tokens  # score_groups: bound on rows x (prefix + suffix) per batch
        tok = get_tokenizer(processor)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.multimodal = is_multimodal(processor)
        self.forward_count = 0  # number of forward passes, for tests and benchmarks

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | None = None,
        dtype: str | None = None,
        label_mode: str = "auto",
        system_prompt: bool | str | None = None,
        **kwargs,
    ) -> Scorer:
        """Load a PRM folder. `label_mode="auto"` and `system_prompt=None` take what `train` (or `convert`)
        recorded. `max_tiles` caps an InternVL model's image tiles."""
        from .model import load_model, read_prm_config

        max_tiles = kwargs.pop("max_tiles", None)

        saved = read_prm_config(path) if Path(path).exists() else {}
        if label_mode == "auto":
            label_mode = saved.get("label_mode", "value")
        if system_prompt is None:
            system_prompt = saved.get("system_prompt", True)
        model, processor = load_model(path, device=device, dtype=dtype)
        if max_tiles is not None:
            set_max_tiles(processor, max_tiles)
        return cls(model, processor, label_mode=label_mode, system_prompt=system_prompt, **kwargs)

    # -- encoding ------------------------------------------------------------------------------------------

    def messages(self, item: dict, labels: list[str]) -> list[dict]:
        n_images = len(item.get("images") or []) if self.multimodal else 0
        return prm_messages(item["question"], item["steps"], labels, n_images, self.system_prompt)

    def encode_item(self, item: dict) -> Encoded:
        """Encode one solution `{question, images: [PIL], steps}` with `+` in every assistant turn."""
        if item.get("images") and not self.multimodal:
            raise InputError("this model is text-only but the record has images", field="images")
        n = len(item["steps"])
        msgs = self.messages(item, [SENTINEL] * n)
        enc = encode(self.processor, msgs, [self.placeholder] * n, item.get("images") or None, self.max_length)
        if enc.label_prefix != self.label_prefix:
            raise InputError(f"label token {enc.label_prefix + self.placeholder!r} differs from the probe's", "label")
        return enc

    # -- forward -------------------------------------------------------------------------------------------

    def _label_logits(self, batch: dict, rows: list[list[int]]):
        """Logits of the label tokens at the given positions: returns a list (per item) of [n, n_labels]."""
        import torch

        device = self.model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in batch and batch["pixel_values"].is_floating_point():
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        if (
            self.padding_side == "right"
            and len(rows) > 1
            and getattr(self.model.config, "model_type", None) in TESTED_TYPES
        ):
            # Right padding under a causal mask: pads come after every real token, so no real token ever sees
            # one and the padding mask changes nothing; without it CPU attention takes its fused causal kernel
            # (tests: equal to one-by-one within 1e-5 on every tiny architecture).
            batch.pop("attention_mask", None)
        with torch.inference_mode():
            self.forward_count += 1
            backbone = getattr(self.model, "model", None)
            head = self.model.get_output_embeddings()
            idx_b = torch.tensor([b for b, r in enumerate(rows) for _ in r], device=device)
            idx_t = torch.tensor([p for r in rows for p in r], device=device)
            if (
                backbone is not None
                and head is not None
                and not getattr(self.model.config, "final_logit_softcapping", None)
            ):
                hidden = backbone(**batch, use_cache=False).last_hidden_state
                logits = self._label_head(hidden[idx_b, idx_t])
            else:  # plain path for models whose head does more than a linear map
                logits = self.model(**batch, use_cache=False).logits[idx_b, idx_t][:, self.label_ids]
        logits = logits.float().cpu()
        out, k = [], 0
        for r in rows:
            out.append(logits[k : k + len(r)])
            k += len(r)
        return out

    def _label_head(self, h):
        """Label-token logits from final hidden states [n, hidden]: only those rows of the output layer."""
        head = self.model.get_output_embeddings()
        logits = h @ head.weight[self.label_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.label_ids]
        return logits

    def _scores_from_logits(self, logits) -> list[float]:
        import torch

        p = torch.softmax(logits, dim=-1)
        s = p[:, 0] if self.label_mode == "value" else p[:, 0] - p[:, -1]
        return [float(x) for x in s]

    def score_encoded(self, encoded: list[Encoded]) -> list[list[float]]:
        """Score already-encoded solutions in batches of `batch_size` (length-sorted), in input order."""
        order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
        out: list[list[float] | None] = [None] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch, positions = collate([encoded[i] for i in idx], self.pad_id, self.padding_side)
            rows = [[p - 1 for p in pos] for pos in positions]  # the logits predicting a label sit just before it
            for i, lg in zip(idx, self._label_logits(batch, rows)):
                out[i] = self._scores_from_logits(lg)
        return out  # type: ignore[return-value]

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        """Step scores of solutions `{question, images: [PIL.Image], steps: [str]}`, one list per item."""
        return self.score_encoded([self.encode_item(it) for it in items])

    def score_groups(self, groups: list[dict]) -> list[list[list[float]]]:
        """Step scores for groups `{question, images, solutions: [[steps], ..]}` sharing a prompt (Best-of-N).

        Each group's shared prefix (system prompt, images, question) runs once and its key/value cache serves
        all candidates (sharing.py); models where that is not possible fall back to one full pass per solution.
        """
        from .sharing import score_groups

        return score_groups(self, groups)

    def score_steps_grouped(self, items: list[dict]) -> list[list[float]]:
        """`score_steps`, but items that share their question and image objects (one problem's candidates, as
        a server request brings them) run as one prefix-shared group (`score_groups`)."""
        keys: dict[tuple, int] = {}
        groups: list[dict] = []
        where = []
        for it in items:
            key = (it["question"], tuple(id(im) for im in it.get("images") or []))
            if key not in keys:
                keys[key] = len(groups)
                groups.append({"question": it["question"], "images": it.get("images") or [], "solutions": []})
            g = keys[key]
            where.append((g, len(groups[g]["solutions"])))
            groups[g]["solutions"].append(it["steps"])
        scored = self.score_groups(groups)
        return [scored[g][k] for g, k in where]

    def score_per_prefix(self, item: dict) -> list[float]:
        """Reference: one forward pass per step prefix, next-token label distribution after the prompt."""
        import torch

        scores = []
        n_images = len(item.get("images") or []) if self.multimodal else 0
        tok = get_tokenizer(self.processor)
        for k in range(len(item["steps"])):
            msgs = prm_messages(
                item["question"], item["steps"][: k + 1], [SENTINEL] * (k + 1), n_images, self.system_prompt
            )
            msgs = msgs[:-1]  # the last assistant turn becomes the generation prompt
            text = self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            text = text.replace(SENTINEL, self.placeholder)
            if self.label_prefix and text.endswith(self.label_prefix):
                text = text[: -len(self.label_prefix)]  # the label's own token carries this whitespace
            if n_images:
                inputs = self.processor(
                    text=[text], images=[item["images"]], add_special_tokens=False, return_tensors="pt"
                )
            else:
                inputs = tok([text], add_special_tokens=False, return_tensors="pt")
            inputs = {k2: v for k2, v in inputs.items() if torch.is_tensor(v)}
            last = int(inputs["input_ids"].shape[1]) - 1
            scores.extend(self._scores_from_logits(self._label_logits(inputs, [[last]])[0]))
        return scores


# ---------------------------------------------------------------------------------------------------------------
# visualprm score


def load_solutions(
    input_path: str, image_root: str | None = None, max_steps: int = 12, splitter=None
) -> list[tuple[Loc, dict]]:
    """Read and validate every solution record (images resolved, not opened) before any model work."""
    base = Path(input_path).parent
    out = []
    for loc, rec in read_jsonl(input_path):
        sol = solution(rec, loc, max_steps=max_steps, splitter=splitter)
        sol["_image_paths"] = resolve_images(sol["images"], loc, base, image_root)
        for path in sol["_image_paths"]:
            check_image(path, loc)
        out.append((loc, sol))
    if not out:
        raise InputError("no records", input_path)
    return out


def item_from(sol: dict, loc: Loc) -> dict:
    """The scorer's input for a validated solution: images opened as RGB."""
    return {
        "question": sol["question"],
        "images": [load_image(p, loc) for p in sol["_image_paths"]],
        "steps": sol["steps"],
    }


def score_records(scorer: Scorer, records: list[tuple[Loc, dict]], progress: bool = True, done: int = 0):
    """Yield one chunk of `(record, step_scores)` pairs at a time, in input order (a few batches per chunk).

    `done`: records already scored by an earlier run (skipped; a multiple of the chunk size when they came from
    chunks, so the remaining records fall into the same batches, and the same scores, as in one run)."""
    from .jobs import bar as progress_bar

    chunk = max(1, scorer.batch_size) * 4
    with progress_bar(len(records), "scoring", "sol", enabled=progress, initial=done) as bar:
        for start in range(done, len(records), chunk):  # the bar ends its line before an error shows
            part = records[start : start + chunk]
            if not hasattr(scorer, "score_encoded"):  # a scorer without a model here (remote_prm.OpenAIScorer)
                scores = scorer.score_steps([item_from(sol, loc) for loc, sol in part])
            else:
                encoded = []
                for loc, sol in part:
                    try:
                        encoded.append(scorer.encode_item(item_from(sol, loc)))
                    except InputError as e:
                        if e.path is None:
                            raise InputError(e.message, loc.path, loc.line, e.field) from None
                        raise
                scores = scorer.score_encoded(encoded)
            yield [(sol, s) for (_, sol), s in zip(part, scores)]
            bar.update(len(part))


def scored_record(sol: dict, step_scores: list[float], how: str) -> dict:
    """The output line of `visualprm score`: the input record (without our private fields) plus `step_scores`,
    `score` and `aggregate`, rounded to 6 places."""
    rec = {k: v for k, v in sol.items() if not k.startswith("_")}
    rec["step_scores"] = [round(x, 6) for x in step_scores]
    rec["score"] = round(_aggregate(step_scores, how), 6)
    rec["aggregate"] = how
    return rec


def score_file(
    prm: str,
    input_path: str,
    out_path: str,
    aggregate: str = "mean",
    batch_size: int = 8,
    image_root: str | None = None,
    system_prompt: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    max_steps: int = 12,
    max_length: int | None = None,
    label_mode: str = "auto",
    splitter: str | None = None,
    api_key: str | None = None,
    engine_options: dict | None = None,
) -> int:
    """`visualprm score`: every input record written back with `step_scores`, `score`, `aggregate` added.

    `prm`: a folder, or `openai:MODEL@URL` (`engine_options` for it, see `load_prm`). `system_prompt`: True (the
    PRM's recorded default), False (none) or the text."""
    from .schema import load_splitter

    t0 = time.time()
    if aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r} (expected one of {', '.join(AGGREGATES)})")
    split_fn = load_splitter(splitter) if splitter else None
    records = load_solutions(input_path, image_root, max_steps, split_fn)
    scorer = load_prm(
        prm,
        api_key=api_key,
        device=device,
        dtype=dtype,
        label_mode=label_mode,
        system_prompt=None if system_prompt is True else system_prompt,
        batch_size=batch_size,
        max_length=max_length,
        **(engine_options or {}),
    )
    t_load = time.time() - t0
    # Resume: finished chunks of a killed run with the same command are kept in OUT.partial.
    header = {"input": input_stamp(input_path), "prm": str(prm), "aggregate": aggregate, "batch_size": batch_size}
    header |= {"image_root": image_root, "system_prompt": system_prompt, "max_steps": max_steps, "splitter": splitter}
    header |= {"max_length": max_length, "label_mode": label_mode, "chunk": max(1, scorer.batch_size) * 4}
    header |= {"engine_options": engine_options}
    partial = Path(str(out_path) + ".partial")
    out = resume_rows(partial, header)
    whole_chunks = len(out) % header["chunk"] == 0 or len(out) == len(records)  # same batches as in one run
    if (
        not whole_chunks
        or len(out) > len(records)
        or any(r.get("id") != sol.get("id") for r, (_, sol) in zip(out, records))
    ):
        out = resume_rows(partial, header, fresh=True)  # does not match the input: start over
    n_resumed = len(out)
    if n_resumed:
        print(f"resume: kept {n_resumed} scored records of {partial}", file=sys.stderr)
    t1 = time.time()
    for part in score_records(scorer, records, done=n_resumed):
        rows = [scored_record(sol, s, aggregate) for sol, s in part]
        append_rows(partial, rows)
        out += rows
    write_jsonl(out_path, out)
    partial.unlink()
    dt = time.time() - t1
    n_new, n_steps = len(out) - n_resumed, sum(len(r["step_scores"]) for r in out[n_resumed:])
    rate = n_new / max(dt, 1e-9)
    resumed = f" ({n_resumed} resumed)" if n_resumed else ""
    line = (
        f"scored {n_new} records{resumed}, {n_steps} steps in {dt:.1f}s ({rate:.1f} records/s; model loaded in "
        f"{t_load:.1f}s) -> {out_path}"
    )
    if hasattr(scorer, "engine_counts"):
        from .remote_prm import counts_line

        line += f"; {counts_line(scorer.engine_counts())}"
    print(line)
    return 0


def load_prm(spec: str, *, api_key: str | None = None, **scorer_options):
    """The scorer a PRM spec names, for every command that takes `--prm`:

    - a folder (or a hub id where online): the in-process `Scorer.from_pretrained(spec, **scorer_options)`;
    - `openai:MODEL@URL[,URL2...]`: `remote_prm.OpenAIScorer` (a PRM behind OpenAI-compatible servers) with the
      options it takes (`remote_prm.ENGINE_OPTIONS`; in-process ones such as device or batch_size are ignored);
      `api_key` default $OPENAI_API_KEY;
    - `http(s)://HOST:PORT`: the `visualprm serve` client scorer (`client.RemoteScorer`), `api_key` its key.

    Options of one kind that the other does not take are dropped, so a command passes all of its options."""
    from .remote_prm import ENGINE_OPTIONS, OpenAIScorer, is_engine_spec

    if is_engine_spec(spec):
        kw = {k: v for k, v in scorer_options.items() if k in ENGINE_OPTIONS and v is not None}
        return OpenAIScorer.from_spec(spec, api_key=api_key, **kw)
    if spec.startswith(("http://", "https://")):
        from .client import RemoteScorer

        return RemoteScorer(spec, api_key=api_key)
    engine_only = set(ENGINE_OPTIONS) - {"system_prompt", "label_mode", "max_tiles"}
    kw = {k: v for k, v in scorer_options.items() if k not in engine_only}
    if kw.get("max_tiles") is None:
        kw.pop("max_tiles", None)  # only checkpoints whose loader takes it (converted InternVL) get it
    return Scorer.from_pretrained(spec, **kw)
