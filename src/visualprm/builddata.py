"""Training conversations: `build-data` (annotated solutions -> VisualPRM400K layout) and their reader for `train`.

The training layout is the released VisualPRM400K one, so `train` reads the official files unchanged:

    {"id", "image": [paths], "conversations": [{"from": "system"|"human"|"gpt", "value"}], "mc"?: [..]}

The first human turn is `### Question:\\n<image>\\n{question}\\n\\n### Solution Process:\\n{step_1}` (one
`<image>` per image, side by side), every gpt turn is one label, every later human turn is the text of the next
step (REFERENCE.md §2). We add `problem_id` (so the held-out split of `train` keeps the solutions of a problem
together) and, for soft labels, `mc` (one value per gpt turn).

Labels (REFERENCE.md §3), from the Monte-Carlo estimates `mc_i` of the steps:
- `value`: `+` iff `mc_i > threshold` (default 0), else `-`.
- `advantage`: the sign of `mc_i - mc_{i-1}`: `+` (up), `=` (equal), `-` (down). The paper leaves `mc_{-1}`
  undefined; we take the pass rate of the sampled solutions of the same problem (problems grouped by
  `problem_id`, else by question + images; a solution counts as passed by its `correct` field, or where that is
  absent, by its last step's mc, which is its verdict in `annotate`'s output). So the first step is judged
  against what the policy achieves from the bare question.
- `soft`: the gpt turns hold the value labels and `mc` keeps the estimates, which `train` uses as soft targets.
- `--orm`: one human turn with all steps joined by blank lines and one label from the last step's mc.

Steps annotated by an adaptive strategy may be bounds (`mc_bound`, `mc_range`; sequential.py): value labels use
them where the threshold lies outside the range (always at the annotate run's threshold); soft and advantage
labels, which need the mc of all K rollouts, refuse them with one line.

Image paths are written relative to the output file's folder (as `annotate` does), so the output folder can be
moved with its images. Records whose question or steps contain the literal text `<image>` are dropped (it would
be read as an image slot); with `dedup`, so are exact repeats (same question, images and steps: sampling repeats
short solutions; the paper keeps them, so we do by default). The summary says how many were dropped and why.

`read_conversations` validates training conversations for `train` (structure, labels, `mc` in [0, 1], image files)
and raises `InputError` naming file, line and field; `split_problems`, `check_label_mode` and `step_metrics` are
the held-out split, the label-mode check and the held-out metrics of `train`; `encode_example` and
`collate_items` turn conversations into model inputs with the masked label rows (`supervised_labels`). Building
and reading need no torch (it is imported inside the encoding functions only).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from .model import SENTINEL, encode, is_multimodal
from .schema import InputError, Loc, annotated, image_list, read_jsonl, resolve_images, write_jsonl
from .steps import (
    IMAGE_PLACEHOLDER,
    PRM_SYSTEM_PROMPT,
    QUESTION_HEADER,
    SOLUTION_HEADER,
    conversation_to_turns,
    join_steps,
    turns_to_messages,
)

LABEL_KINDS = ("value", "advantage", "soft")
VALUE_SET = ("+", "-")
ADVANTAGE_SET = ("+", "=", "-")


# ---------------------------------------------------------------------------------------------------------------
# Labels


def value_labels(mcs: list[float], threshold: float = 0.0) -> list[str]:
    """`+` iff mc > threshold."""
    return ["+" if mc > threshold else "-" for mc in mcs]


def advantage_labels(mcs: list[float], mc_before: float, eps: float = 1e-9) -> list[str]:
    """Sign of mc_i - mc_{i-1} with mc_{-1} = `mc_before`: `+` up, `=` equal (within eps), `-` down."""
    out, prev = [], mc_before
    for mc in mcs:
        d = mc - prev
        out.append("+" if d > eps else "-" if d < -eps else "=")
        prev = mc
    return out


def first_human_turn(question: str, step_1: str, n_images: int) -> str:
    return f"{QUESTION_HEADER}{IMAGE_PLACEHOLDER * n_images}\n{question}{SOLUTION_HEADER}{step_1}"


def conversation(
    question: str, steps: list[str], labels: list[str], n_images: int, system_prompt: bool | str = True
) -> list[dict]:
    """The VisualPRM400K `conversations` list: system?, human (question + step 1), gpt label, human step 2, ..."""
    conv = []
    if system_prompt:
        conv.append({"from": "system", "value": PRM_SYSTEM_PROMPT if system_prompt is True else system_prompt})
    for k, (step, label) in enumerate(zip(steps, labels)):
        conv.append({"from": "human", "value": first_human_turn(question, step, n_images) if k == 0 else step})
        conv.append({"from": "gpt", "value": label})
    return conv


# ---------------------------------------------------------------------------------------------------------------
# build-data


def _group_key(rec: dict) -> str:
    if rec.get("problem_id") is not None:
        return f"id:{rec['problem_id']}"
    return "q:" + rec["question"] + "\x00" + "\x00".join(rec["images"])


def _passed(rec: dict) -> float:
    if isinstance(rec.get("correct"), bool):
        return 1.0 if rec["correct"] else 0.0
    return rec["steps"][-1]["mc"]


def build_records(
    items: list[tuple[Loc, dict]],
    out_dir: str | os.PathLike,
    labels: str = "value",
    threshold: float = 0.0,
    orm: bool = False,
    system_prompt: bool | str = True,
    image_root: str | os.PathLike | None = None,
    dedup: bool = False,
) -> tuple[list[dict], dict]:
    """Training conversations from annotated records (already read with their `Loc`). Returns (records, summary)."""
    if labels not in LABEL_KINDS:
        raise InputError(f"unknown label kind {labels!r} (expected one of {', '.join(LABEL_KINDS)})", field="labels")
    if orm and labels == "advantage":
        raise InputError("advantage labels need steps; with --orm use --labels value or soft", field="labels")
    from .sequential import check_bounds

    recs = []
    for loc, raw in items:
        rec = annotated(raw, loc)
        check_bounds(raw.get("steps") or [], labels, threshold, loc, orm)  # adaptive annotation (sequential.py)
        base = Path(loc.path).parent if loc.path else None
        rec["_abs_images"] = resolve_images(rec["images"], loc, base, image_root)
        recs.append((loc, rec))
    pass_rate: dict[str, list[float]] = {}
    for _, rec in recs:
        pass_rate.setdefault(_group_key(rec), []).append(_passed(rec))
    out, dropped, seen = [], Counter(), set()
    balance: Counter = Counter()
    n_steps, mc_sum = 0, 0.0
    out_dir = Path(out_dir)
    for _loc, rec in recs:
        texts = [s["text"] for s in rec["steps"]]
        mcs = [s["mc"] for s in rec["steps"]]
        if IMAGE_PLACEHOLDER in rec["question"] or any(IMAGE_PLACEHOLDER in t for t in texts):
            dropped[f"question or a step contains the text {IMAGE_PLACEHOLDER}"] += 1
            continue
        key = (rec["question"], tuple(rec["_abs_images"]), tuple(texts))
        if key in seen and dedup:
            dropped["duplicate of an earlier solution (same question, images and steps)"] += 1
            continue
        seen.add(key)
        if orm:
            texts, mcs = [join_steps(texts)], [mcs[-1]]
        if labels == "advantage":
            rates = pass_rate[_group_key(rec)]
            labs = advantage_labels(mcs, sum(rates) / len(rates))
        else:
            labs = value_labels(mcs, threshold)
        images = []
        for p in rec["_abs_images"]:
            try:
                images.append(os.path.relpath(p, out_dir.resolve()))
            except ValueError:  # another drive (Windows)
                images.append(p)
        new = {
            "id": str(rec["id"]),
            "image": images,
            "conversations": conversation(rec["question"], texts, labs, len(images), system_prompt),
        }
        if rec.get("problem_id") is not None:
            new["problem_id"] = str(rec["problem_id"])
        if labels == "soft":
            new["mc"] = mcs
            mc_sum += sum(mcs)
        out.append(new)
        balance.update(labs)
        n_steps += len(labs)
    summary = {
        "records_in": len(recs),
        "records_out": len(out),
        "steps": n_steps,
        "labels": labels,
        "threshold": threshold,
        "orm": orm,
        "label_counts": {k: balance[k] for k in ADVANTAGE_SET if balance[k] or k != "="},
        "dropped": dict(dropped),
    }
    if labels == "soft" and n_steps:
        summary["mean_mc"] = mc_sum / n_steps
    return out, summary


def build_data_file(
    annotated_path: str,
    out_path: str,
    labels: str = "value",
    threshold: float = 0.0,
    orm: bool = False,
    system_prompt: bool = True,
    image_root: str | None = None,
    dedup: bool = False,
) -> dict:
    """`visualprm build-data`: read annotated solutions, write training conversations (atomically), print a summary."""
    if not 0.0 <= threshold < 1.0:  # mc lies in [0, 1]: at 1 or above every label would be '-'
        raise InputError(f"--threshold must be in [0, 1), got {threshold:g}", field="threshold")
    items = list(read_jsonl(annotated_path))
    if not items:
        raise InputError("no records", annotated_path)
    out_dir = Path(out_path).parent
    records, summary = build_records(items, out_dir, labels, threshold, orm, system_prompt, image_root, dedup)
    if not records:
        raise InputError(f"every record was dropped ({summary['dropped']})", annotated_path)
    write_jsonl(out_path, records)
    kind = f"{labels} labels" + (f", threshold {threshold}" if labels != "advantage" else ", mc_-1 = pass rate")
    print(
        f"build-data: {summary['records_in']} records -> {summary['records_out']} conversations, "
        f"{summary['steps']} {'solutions' if orm else 'steps'} ({kind}{', ORM' if orm else ''}) -> {out_path}"
    )
    n = max(summary["steps"], 1)
    parts = [f"{k} {v} ({100 * v / n:.1f}%)" for k, v in summary["label_counts"].items()]
    line = "label balance: " + ", ".join(parts)
    if "mean_mc" in summary:
        line += f"; mean mc {summary['mean_mc']:.3f}"
    print(line)
    n_drop = sum(summary["dropped"].values())
    print(f"dropped {n_drop} records" + "".join(f"; {v}: {k}" for k, v in summary["dropped"].items()))
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Reading training conversations (for `train`)


def read_conversations(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, limit: int | None = None
) -> list[dict]:
    """Read and validate training conversations (our output or the official VisualPRM400K files as they are).

    Returns plain dicts `{id, loc, images (absolute paths), system, turns, labels, mc, group}`: `turns` are
    `{role, text}` with user/assistant alternating and every assistant turn a label; `mc` is None or one value in
    [0, 1] per label; `group` keys the problem for the held-out split. Labels are checked against the union of
    value and advantage labels here; `train` checks them against its label mode and the model's vocabulary.
    """
    out = []
    base = Path(path).parent
    for loc, rec in read_jsonl(path):
        if limit is not None and len(out) >= limit:
            break
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise loc.error("missing or not a non-empty list of turns", "conversations")
        try:
            system, turns = conversation_to_turns(conv)
        except ValueError as e:
            raise loc.error(str(e), "conversations") from None
        labels = []
        for i, t in enumerate(turns):
            expect = "user" if i % 2 == 0 else "assistant"
            if t["role"] != expect:
                raise loc.error(
                    f"turn {i} is {t['role']}, expected {expect} (human and gpt turns alternate)", "conversations"
                )
            if expect == "assistant":
                lab = t["text"].strip()
                if lab not in ADVANTAGE_SET:
                    raise loc.error(
                        f"gpt turn {len(labels)} is {t['text'][:40]!r}, not a label (+, - or =)", "conversations"
                    )
                labels.append(lab)
        if not labels:
            raise loc.error("no label turns (no gpt turn after a human turn)", "conversations")
        if len(turns) % 2:
            raise loc.error("the last human turn has no gpt label after it", "conversations")
        mc = rec.get("mc")
        if mc is not None:
            if not isinstance(mc, list) or len(mc) != len(labels):
                raise loc.error(f"expected a list of {len(labels)} numbers (one per gpt turn)", "mc")
            for i, v in enumerate(mc):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise loc.error(f"mc[{i}] is not a number", "mc")
                if not 0.0 <= float(v) <= 1.0:
                    raise loc.error(f"mc[{i}] = {v} is outside [0, 1]", "mc")
            mc = [float(v) for v in mc]
        images = resolve_images(image_list(rec, loc), loc, base, image_root)
        n_ph = turns[0]["text"].count(IMAGE_PLACEHOLDER)
        if n_ph > len(images):
            raise loc.error(f"{n_ph} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images", "conversations")
        if any(IMAGE_PLACEHOLDER in t["text"] for t in turns[1:]):
            raise loc.error(f"{IMAGE_PLACEHOLDER} outside the first human turn", "conversations")
        first = turns[0]["text"]
        question = first.split(SOLUTION_HEADER)[0] if SOLUTION_HEADER in first else first
        group = f"id:{rec['problem_id']}" if rec.get("problem_id") is not None else "q:" + question + "|".join(images)
        out.append(
            {
                "id": str(rec.get("id", f"line{loc.line}")),
                "loc": loc,
                "images": images,
                "system": system,
                "turns": turns,
                "labels": labels,
                "mc": mc,
                "group": group,
            }
        )
    if not out:
        raise InputError("no records", path)
    return out


def system_prompt_of(examples: list[dict]) -> bool | str:
    """What the data's system turn is, for the saved PRM config: True (the VisualPRM prompt), False (none) or the
    text of a custom one. Mixed data raises (a PRM is scored with one prompt)."""
    seen = Counter(ex["system"] for ex in examples)
    if len(seen) > 1:
        ex = next(e for e in examples if e["system"] != examples[0]["system"])
        raise ex["loc"].error(
            "records differ in their system turn (the PRM is scored with one system prompt)", "conversations"
        )
    system = examples[0]["system"]
    if system is None:
        return False
    return True if system == PRM_SYSTEM_PROMPT else system


def split_problems(examples: list[dict], frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): whole problems (groups) held out, round(frac * groups) of them, at least one when
    frac > 0 and there are two or more; seeded."""
    groups = sorted({ex["group"] for ex in examples})
    if frac <= 0 or len(groups) < 2:
        return examples, []
    random.Random(seed).shuffle(groups)
    n = min(max(1, round(frac * len(groups))), len(groups) - 1)
    held = set(groups[:n])
    return [e for e in examples if e["group"] not in held], [e for e in examples if e["group"] in held]


def check_label_mode(examples: list[dict], mode: str = "auto", soft_labels: bool = True) -> str:
    """The label mode (`auto`: advantage iff some label is `=`); every label must belong to it."""
    if mode == "auto":
        mode = "advantage" if any("=" in ex["labels"] for ex in examples) else "value"
    allowed = VALUE_SET if mode == "value" else ADVANTAGE_SET
    for ex in examples:
        bad = [lab for lab in ex["labels"] if lab not in allowed]
        if bad:
            raise ex["loc"].error(f"label {bad[0]!r} is not a {mode} label ({' '.join(allowed)})", "conversations")
        if mode == "advantage" and ex["mc"] is not None and soft_labels:
            raise ex["loc"].error("soft labels (mc) need value labels; set soft_labels: false", "mc")
    return mode


def step_metrics(probs, classes, mc=None, label_mode: str = "value") -> dict:
    """Step accuracy and macro-F1 from label-token probabilities [N, K] and gold class indices [N] (0 is `+`).

    value: a step is predicted correct when P(+) >= 0.5 (what `bench` does with the score); macro-F1 is the mean
    of the F1 with `+` as positive and the F1 with `-` as positive (as `bench` computes it; an F1 whose
    denominator is 0 counts 0). advantage: argmax over +, =, -; macro-F1 over the three classes. With `mc`
    (-1 where a step has none): the mean squared error of P(+) against it.
    """
    import numpy as np

    classes = np.asarray(classes, dtype=int)
    probs = np.asarray(probs, dtype=float).reshape(len(classes), -1)
    k = probs.shape[1]
    names = VALUE_SET if label_mode == "value" else ADVANTAGE_SET
    pred = np.where(probs[:, 0] >= 0.5, 0, k - 1) if label_mode == "value" else probs.argmax(1)
    f1s = {}
    for name, c in zip(names, [0, k - 1] if label_mode == "value" else range(k)):
        tp = int(((pred == c) & (classes == c)).sum())
        fp, fn = int(((pred == c) & (classes != c)).sum()), int(((pred != c) & (classes == c)).sum())
        f1s[name] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    out = {
        "steps": int(len(classes)),
        "step_accuracy": float((pred == classes).mean()) if len(classes) else 0.0,
        "macro_f1": float(np.mean(list(f1s.values()))),
    }
    out.update({f"f1_{name}": float(v) for name, v in f1s.items()})
    if mc is not None:
        mc = np.asarray(mc, dtype=float)
        m = mc >= 0
        if m.any():
            out["soft_mse"] = float(((probs[m, 0] - mc[m]) ** 2).mean())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Encoding and batching for `train` (torch is imported only inside)


def encode_example(
    processor,
    ex: dict,
    label_ids: dict[str, int],
    placeholder: str | None = None,
    max_length: int | None = None,
    eot: bool = False,
    with_images: bool = True,
) -> dict:
    """Encode one conversation with its labels (or `placeholder` in every assistant turn: the scoring view).

    Returns `{enc, targets, mc, eot}`: the `model.Encoded`, the true label token id per turn, mc per turn (-1:
    hard label) and whether the end-of-turn tokens are supervised too. `with_images=False` checks the text and
    its label positions only (image slots stay unexpanded, so no length check).
    """
    from .schema import load_image

    turns = [dict(t, text=SENTINEL) if t["role"] == "assistant" else t for t in ex["turns"]]
    n_images = len(ex["images"]) if is_multimodal(processor) else 0
    if ex["images"] and not n_images:
        raise ex["loc"].error("this model is text-only but the record has images", "image")
    messages = turns_to_messages(ex["system"], turns, n_images)
    shown = [placeholder] * len(ex["labels"]) if placeholder else ex["labels"]
    images = [load_image(p, ex["loc"]) for p in ex["images"]] if n_images and with_images else None
    try:
        enc = encode(processor, messages, shown, images, (max_length or None) if with_images else None)
    except InputError as e:
        raise InputError(e.message, ex["loc"].path, ex["loc"].line, e.field or "conversations") from None
    mc = ex["mc"] or [-1.0] * len(ex["labels"])
    return {"enc": enc, "targets": [label_ids[lab] for lab in ex["labels"]], "mc": mc, "eot": eot}


def supervised_labels(item: dict, length: int) -> tuple[list[int], list[float]]:
    """The masked label row of one item: the label token id at each label position, -100 elsewhere (and the
    end-of-turn token after each label when `item["eot"]`); plus the soft target (mc or -1) per position."""
    enc = item["enc"]
    ids = enc.inputs["input_ids"][0].tolist()
    labels, soft = [-100] * length, [-1.0] * length
    for pos, tgt, mc in zip(enc.label_positions, item["targets"], item["mc"]):
        labels[pos], soft[pos] = tgt, mc
        if item.get("eot") and pos + 1 < len(ids):
            labels[pos + 1] = ids[pos + 1]
    return labels, soft


def collate_items(items: list[dict], pad_id: int) -> dict:
    """A batch: the processor tensors (right padded by `model.collate`), `prm_labels` [B, L] (masked label rows)
    and `prm_soft` [B, L] (mc at soft label positions, -1 elsewhere)."""
    import torch

    from .model import collate

    batch, _ = collate([it["enc"] for it in items], pad_id, "right")
    length = int(batch["input_ids"].shape[1])
    rows = [supervised_labels(it, length) for it in items]
    batch["prm_labels"] = torch.tensor([r[0] for r in rows], dtype=torch.long)
    batch["prm_soft"] = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    return batch


class Examples:
    """A map-style dataset over encoded items, or over raw examples encoded on access (`preencode: false`).

    Encoded on access, a sequence over max_length is found only then: with `drop_long` the next item that fits
    takes its place (so the number of steps stays as planned; `n_long` counts them, per worker), else the error
    stops the run."""

    def __init__(self, items: list, encode_fn=None, drop_long: bool = False):
        self.items, self.encode_fn, self.drop_long, self.n_long = items, encode_fn, drop_long, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if not self.encode_fn:
            return self.items[i]
        for k in range(len(self.items)):
            try:
                return self.encode_fn(self.items[(i + k) % len(self.items)])
            except InputError as e:
                if not (self.drop_long and e.field == "max_length"):
                    raise
                self.n_long += 1
        raise InputError("every conversation is longer than max_length", field="max_length")
