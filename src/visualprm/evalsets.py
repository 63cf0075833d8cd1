"""The seven reasoning benchmarks of the paper's Table 2 (REFERENCE.md §9): readers for their files as the authors
publish them (field names unchanged), a per-answer check, and each benchmark's own metric.

A benchmark is read into items `{"id", "benchmark", "question", "images", "answer", "options", "group", "meta"}`
(`question` is the text the policy sees, options included the way the benchmark shows them; `images` absolute
paths; `group` ties items a metric scores together: a DynaMath seed question, a WeMath composite problem).
`check(name, response, item)` -> `{"correct", "extracted"}`; `metric(name, items, correct)` -> `{"score", ...}`
where `score` is the number the paper reports (a fraction) and `correct` is one bool (or, for the expected
value of a random pick, a fraction) per item.

How each answer is checked. The policy answers in the paper's chain-of-thought format ("Final answer: .."), which
the benchmarks' own extractors do not look for, so the final answer is first taken from the response with
`answers.extract_answer` (boxed, "Final answer:", "Answer:", ...; the whole response when none is found) and then
handed to the benchmark's own rules, reimplemented here from the authors' code (not copied):

- MathVision (mathllm/MATH-V @a1f5cc3 `evaluation/evaluate.py`, `utils.py`): its answer extraction (trailing
  letters, "the answer is", boxed), its LaTeX normalisation, then equality: lower-cased strings, tuples element by
  element, else both sides as LaTeX evaluated to numbers and rounded to 2 decimals; a choice question is also right
  when the answer equals the gold option's text. Metric: accuracy. The authors use `latex2sympy2`; this uses
  `latex2sympy2_extended` (math-verify's), which parses the same answers in the recorded fixtures.
- MathVista (lupantech/MathVista @53d5258 `evaluation/calculate_score.py`): a choice extraction is mapped to an
  option (a letter, "(B)", else the option nearest by edit distance); integers via int(float(x)); floats rounded
  to the record's `precision`; lists as strings; then exact equality with the gold. Metric: accuracy. The
  authors extract with GPT-4; the fixtures check the normalisation and equality on their recorded extractions.
- LogicVista (Yijia-Xiao/LogicVista @e5795f1 `eval/extract_accuracy.py`): the chosen letters (the authors ask
  GPT-4 for them; here they are read from the final answer: "A, C", "AC", "A and C"), lower-cased and sorted,
  must equal the gold letters exactly; a lone character that is not a-e or a digit counts as no answer.
- DynaMath (its scorer lives in open-compass/VLMEvalKit `vlmeval/dataset/dynamath.py`; the DynaMath repo
  @598c3c3 has data and the variant generator, no scorer): float answers right within 0.001 (a trailing π
  multiplies), choice answers by letter, text answers when the answer is a substring of the gold. Metrics:
  average accuracy over all variants and worst-case accuracy (a seed question counts only if every variant is
  right; the paper's Table 2 number).
- WeMath (We-Math/We-Math @a57a0e8 `evaluation/four_dimensional_metrics.py`): the letter after the last
  "Answer" (A-H), exact; then over composite problems (`2steps_*`, `3steps_*` with their sub-problems `_1.._k`
  and the composite `_multi`): IK, IG, CM, RM (strict: all sub-problems right; loose: any), and the scores
  (total - 0.5 IG - RM - IK) / total. The authors' `total` is fixed at 525 (testmini); here it is the number of
  composite problems read (525 on the full testmini). The paper's number: the strict score.
- MathVerse (vision-only) and MMMU: readers for their published field names; checked with `answers.check`
  (choice letters, numbers, math-verify). NOT compared with the authors' scorers (no public copy with images
  could be fetched here; MathVerse's official scorer is GPT-4 based).

This module does not sample, score or select (see `boneval.py`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from .evalrules import (  # noqa: F401  (the rules are part of this module's interface)
    check_mathvision_official,
    dynamath_metrics,
    dynamath_verdict,
    logicvista_letters,
    logicvista_match,
    mathvision_equal,
    mathvision_extract,
    mathvista_normalize,
    mathvista_verdict,
    wemath_letter,
    wemath_metrics,
)
from .schema import InputError

BENCHMARKS = ("mmmu", "mathvista", "mathvision", "mathverse", "dynamath", "wemath", "logicvista")
HEADLINE = {
    "mmmu": "accuracy",
    "mathvista": "accuracy",
    "mathvision": "accuracy",
    "mathverse": "accuracy (vision only)",
    "dynamath": "worst-case accuracy",
    "wemath": "score (strict)",
    "logicvista": "accuracy",
}
TESTED_AGAINST_AUTHORS = ("mathvision", "mathvista", "logicvista", "dynamath", "wemath")
LETTERS = "ABCDEFGHIJ"


# ---------------------------------------------------------------------------------------------------------------
# Reading


def _load_json_any(path: Path) -> Any:
    try:
        if path.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"bad JSON: {e.msg}", path, i) from None
            return rows
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"bad JSON: {e.msg}", path, e.lineno) from None


def _records(path: Path) -> list[tuple[str, dict]]:
    """(key, record) pairs from a JSON dict keyed by id, a JSON list or JSONL."""
    data = _load_json_any(path)
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items() if isinstance(v, dict)]
    if isinstance(data, list):
        return [(str(i), v) for i, v in enumerate(data) if isinstance(v, dict)]
    raise InputError("expected a JSON object or list of records", path)


def _need(rec: dict, path: Path, key: str, *fields: str) -> None:
    for f in fields:
        if f not in rec:
            raise InputError(f"record {key}: missing field", path, field=f)


def _image(base: Path, rel: Any, path: Path, key: str, field: str) -> list[str]:
    if not rel:
        return []
    p = Path(str(rel))
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise InputError(f"record {key}: image not found: {p}", path, field=field)
    return [str(p.resolve())]


def _letter_options(options: list[str]) -> str:
    return "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def read_mathvision(path: Path) -> list[dict]:
    """MATH-V `test.jsonl` / `testmini.jsonl`: id, question, options, answer, image, level, subject."""
    items = []
    for key, r in _records(path):
        _need(r, path, key, "id", "question", "answer")
        opts = [str(o) for o in (r.get("options") or [])]
        q = re.sub(r"<image\d*>", "", str(r["question"])).strip()
        if opts:
            q += "\n\nChoices: " + _letter_options(opts).replace("\n", " ")
        items.append(
            {
                "id": str(r["id"]),
                "question": q,
                "images": _image(path.parent, r.get("image"), path, key, "image"),
                "answer": str(r["answer"]),
                "options": opts,
                "meta": {"level": r.get("level"), "subject": r.get("subject")},
            }
        )
    return items


def read_mathvista(path: Path) -> list[dict]:
    """MathVista `testmini.json` (pid -> question, image, choices, unit, precision, answer, question_type,
    answer_type, query). The policy sees `query` (the benchmark's own prompt with its hint) when present."""
    items = []
    for key, r in _records(path):
        _need(r, path, key, "question", "answer", "question_type", "answer_type")
        images = []
        if r.get("image"):
            p = path.parent / str(r["image"])
            images = [str(p.resolve())] if p.is_file() else []
            if not images:
                raise InputError(f"record {key}: image not found: {p}", path, field="image")
        items.append(
            {
                "id": str(r.get("pid", key)),
                "question": str(r.get("query") or r["question"]),
                "images": images,
                "answer": r["answer"],
                "options": [str(c) for c in r.get("choices") or []],
                "meta": {k: r.get(k) for k in ("question_type", "answer_type", "precision", "unit", "choices")},
            }
        )
    return items


def read_logicvista(path: Path) -> list[dict]:
    """LogicVista `dataset.json` (v1_N -> imagename, question, answer "A, C", skill, ...); images in `images/`
    beside it (or `../images/`)."""
    items = []
    for key, r in _records(path):
        _need(r, path, key, "question", "answer")
        name = r.get("imagename")
        img_dir = next((d for d in (path.parent / "images", path.parent.parent / "images") if d.is_dir()), path.parent)
        items.append(
            {
                "id": key,
                "question": str(r["question"]),
                "images": _image(img_dir, name, path, key, "imagename"),
                "answer": str(r["answer"]),
                "options": [],
                "meta": {"skill": r.get("skill")},
            }
        )
    return items


def read_dynamath(path: Path) -> list[dict]:
    """DynaMath: `dataset.json` as its generator writes it (qid -> question, answer, image, answer_type, subject,
    level; one variant per file) or several such files (`a.json,b.json`: variant k = k-th file), or records with
    VLMEvalKit's `qid` / `varid` fields."""
    items = []
    parts = [Path(p) for p in str(path).split(",")]
    for varid, part in enumerate(parts, 1):
        for key, r in _records(part):
            _need(r, part, key, "question", "answer", "answer_type")
            qid = str(r.get("qid", key))
            v = int(r.get("varid", varid))
            q = str(r["question"])
            items.append(
                {
                    "id": f"{qid}-v{v}",
                    "question": q,
                    "images": _image(part.parent, r.get("image"), part, key, "image"),
                    "answer": str(r["answer"]),
                    "options": [],
                    "group": qid,
                    "meta": {"answer_type": r["answer_type"], "varid": v, "subject": r.get("subject")},
                }
            )
    return items


def read_wemath(path: Path) -> list[dict]:
    """We-Math `testmini.json` (list: ID, key, question, option "A. ..;B. ..", answer, image_path, ...)."""
    items = []
    for key, r in _records(path):
        _need(r, path, key, "ID", "key", "question", "answer")
        opt = str(r.get("option") or "")
        items.append(
            {
                "id": f"{r['ID']}/{r['key']}",
                "question": str(r["question"]) + (f"\nOptions: {opt}" if opt else ""),
                "images": _image(path.parent, r.get("image_path"), path, key, "image_path"),
                "answer": str(r["answer"]),
                "options": [],
                "group": str(r["ID"]),
                "meta": {"ID": str(r["ID"]), "key": str(r["key"])},
            }
        )
    return items


def read_mathverse(path: Path) -> list[dict]:
    """MathVerse `testmini.json` (sample_index, problem_version, question, query_cot, image, answer,
    question_type): only the "Vision Only" version (the paper's setting). Untested against the authors' data."""
    items = []
    for key, r in _records(path):
        _need(r, path, key, "question", "answer", "problem_version")
        if str(r["problem_version"]).lower().replace("-", " ") != "vision only":
            continue
        items.append(
            {
                "id": str(r.get("sample_index", key)),
                "question": str(r.get("query_cot") or r["question"]),
                "images": _image(path.parent, r.get("image"), path, key, "image"),
                "answer": str(r["answer"]),
                "options": [],
                "meta": {"question_type": r.get("question_type")},
            }
        )
    return items


def read_mmmu(path: Path) -> list[dict]:
    """MMMU validation records (id, question, options (a list or its string form), answer, question_type,
    image_1..image_7 as paths). Untested against the authors' data."""
    import ast

    items = []
    for key, r in _records(path):
        _need(r, path, key, "id", "question", "answer")
        opts = r.get("options") or []
        if isinstance(opts, str):
            try:
                opts = ast.literal_eval(opts)
            except (ValueError, SyntaxError):
                raise InputError(f"record {key}: options is not a list", path, field="options") from None
        opts = [str(o) for o in opts]
        images = []
        for i in range(1, 8):
            images += _image(path.parent, r.get(f"image_{i}"), path, key, f"image_{i}")
        q = re.sub(r"<image \d+>", "<image>", str(r["question"]))
        if opts:
            q += "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
        items.append(
            {
                "id": str(r["id"]),
                "question": q,
                "images": images,
                "answer": r["answer"],
                "options": opts,
                "meta": {"question_type": r.get("question_type")},
            }
        )
    return items


READERS = {
    "mmmu": read_mmmu,
    "mathvista": read_mathvista,
    "mathvision": read_mathvision,
    "mathverse": read_mathverse,
    "dynamath": read_dynamath,
    "wemath": read_wemath,
    "logicvista": read_logicvista,
}


def read_benchmark(name: str, path: str, limit: int | None = None, sample: int | None = None, seed: int = 0):
    """Items of one benchmark. `limit`: the first K groups (seed questions / composite problems / items);
    `sample`: K groups drawn at random (seeded). A group's items stay together, so its metric stays defined."""
    if name not in READERS:
        raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", field="benchmark")
    items = READERS[name](Path(path))
    if not items:
        raise InputError(f"no {name} items", path)
    seen: dict[str, int] = {}
    for it in items:
        it["benchmark"] = name
        it.setdefault("group", it["id"])
        if it["id"] in seen:
            raise InputError(f"duplicate {name} id {it['id']!r}", path, field="id")
        seen[it["id"]] = 1
    groups = list(dict.fromkeys(it["group"] for it in items))
    if sample is not None and sample < len(groups):
        groups = sorted(random.Random(seed).sample(groups, sample), key=groups.index)
    if limit is not None:
        groups = groups[:limit]
    keep = set(groups)
    return [it for it in items if it["group"] in keep]


# ---------------------------------------------------------------------------------------------------------------
# One check and one metric per benchmark


def _final(response: str, options: list[str] | None = None) -> str:
    """The stated final answer (or the whole response when none is found)."""
    from .answers import extract_answer

    got = extract_answer(response, None, mode="exact")
    return got if got is not None else (response or "").strip()


def check(name: str, response: str, item: dict) -> dict:
    """`{"correct", "extracted"}` for one response to one item, by the benchmark's own rules (see above)."""
    response = response or ""
    if name == "mathvision":
        return check_mathvision_official(_final(response), item)
    if name == "mathvista":
        meta = item["meta"]
        ext = _final(response)
        if meta["question_type"] == "multi_choice":
            from .answers import extract_answer

            letter = extract_answer(response, meta.get("choices"), mode="choice")
            ext = letter if letter is not None else ext
        pred = mathvista_normalize(
            ext, meta.get("choices"), meta["question_type"], meta["answer_type"], meta.get("precision")
        )
        return {"correct": pred == item["answer"], "extracted": None if pred is None else str(pred)}
    if name == "logicvista":
        chosen = logicvista_letters(_final(response))
        return {"correct": logicvista_match(chosen, item["answer"]), "extracted": ",".join(chosen)}
    if name == "dynamath":
        return dynamath_verdict(_final(response), item["answer"], item["meta"]["answer_type"])
    if name == "wemath":
        got = wemath_letter(response)
        if got is None:  # "Final answer: B" has no "Answer": read the stated answer the same way
            got = wemath_letter("Answer: " + _final(response))
        return {"correct": got == item["answer"], "extracted": got}
    if name in ("mathverse", "mmmu"):
        from .answers import check as generic

        rec = {"answer": item["answer"], "options": item.get("options") or None}
        if name == "mathverse" and item["meta"].get("question_type") == "multi-choice":
            rec["mode"] = "exact"
        v = generic(response, rec)
        return {"correct": bool(v["correct"]), "extracted": v.get("extracted")}
    raise InputError(f"unknown benchmark {name!r}", field="benchmark")


def metric(name: str, items: list[dict], correct: list) -> dict:
    """The benchmark's own metric; `score` is the number of the paper's Table 2. Per-item fractions (the
    expectation of a random pick) are allowed only where the metric is linear (accuracy, DynaMath average)."""
    if not items:
        return {"score": float("nan"), "items": 0}
    if name == "dynamath":
        return dynamath_metrics(items, correct)
    if name == "wemath":
        return wemath_metrics(items, correct)
    return {"score": sum(map(float, correct)) / len(correct), "items": len(items)}


def linear(name: str) -> bool:
    """Whether the metric is an average of per-item values (then a random pick's expectation is meaningful)."""
    return name not in ("dynamath", "wemath")
