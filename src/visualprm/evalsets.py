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
import math
import random
import re
from pathlib import Path
from typing import Any

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
# MathVision


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _mv_fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p[:1] == "{":
            out += p
            continue
        if len(p) < 2:
            return s
        a, b, rest = p[0], p[1], p[2:]
        out += "{" + a + "}" + ("{" + b + "}" if b != "{" else b) + rest
    return out


def _mv_fix_slash(s: str) -> str:
    a, sep, b = s.partition("/")
    if not sep or "/" in b:
        return s
    try:
        x, y = int(a), int(b)
    except ValueError:
        return s
    return f"\\frac{{{x}}}{{{y}}}" if s == f"{x}/{y}" else s


def _mv_fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    return parts[0] + "".join("\\sqrt{" + p[0] + "}" + p[1:] if p and p[0] != "{" else "\\sqrt" + p for p in parts[1:])


def _mv_strip(s: str) -> str:
    for a, b in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", "")):
        s = s.replace(a, b)
    for a in ("\\right", "^{\\circ}", "^\\circ", "\\$", "$"):
        s = s.replace(a, "")
    s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1:
        s = s.split("=")[-1]
    if s.count("\\approx") == 1:
        s = s.split("\\approx")[-1]
    if "sqrt" in s:
        s = _mv_fix_sqrt(s)
    s = s.replace(" ", "")
    if "sqrt" in s:  # (the authors fix fractions only when a square root is present)
        s = _mv_fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _mv_fix_slash(s)


def _mv_math_answer(s: str) -> str:
    s = s.lower().replace("{}", "")
    m = re.search(r"oxed\{(.*)\}", s, flags=re.S)
    ans = m.group(1) if m else s
    close, open_ = ans.find("}"), ans.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        ans = ans.split("}")[0]
    ans = ans.split("=")[-1].split("\\approx")[-1]
    for a, b in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", "")):
        ans = ans.replace(a, b)
    for a, b in (("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", "")):
        ans = ans.replace(a, b)
    for a in ("^{\\circ}", "^\\circ", "{m}^3", "m^3", "{units}", "units", "{km}", "km"):
        ans = ans.replace(a, "")
    return _mv_strip(ans)


_MV_FLAGS = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


def mathvision_extract(response: str) -> str:
    """MATH-V's own answer extraction from a response."""
    a = response.strip()
    for c in "ABCDE":
        if a.endswith((f" {c}.", f" ({c}).")) or a.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n")):
            a = c
    tail = a.split("is ")[-1].rstrip(".")
    if _is_float(tail):
        a = tail
    if "oxed{" not in a:
        for flag in _MV_FLAGS:
            for f in (flag, flag.replace("the", "The")):
                had = f in a
                a = a.split(f)[-1].strip()
                if had:
                    a = a.split("\n")[0].split(". ")[0]
    elif a.count("oxed{") > 1:
        a = "\\boxed{" + a.split("oxed{")[-1]
    a = _mv_math_answer(a)
    for c in "abcde":
        a = a.replace(f"({c})", c)
    for c in "abcde":
        a = a.replace(f"{{{c}}}", c)
    return a.rstrip(".").lstrip(":").strip()


_MATH_NAMES = {k: getattr(math, k) for k in dir(math) if not k.startswith("_")}


def _latex_number(s: str) -> float:
    """A LaTeX string evaluated to a number the way MATH-V does (parse, print, evaluate with `math`); raises."""
    import sympy
    from latex2sympy2_extended import latex2sympy

    expr = latex2sympy(s)
    # decimals as exact rationals, as latex2sympy2 parses them ("3.0" prints as 3, "4.80" as 24/5)
    expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
    return eval(str(expr), {"__builtins__": {}}, dict(_MATH_NAMES))  # noqa: S307 (printed sympy only)


def _mv_tuple(s: str) -> str:
    try:
        inner = s[1:-1].split(",")
        if len(inner) > 1 and (s[0], s[-1]) in (("(", ")"), ("[", "]")):
            vals = [x if "infty" in x or x in ("a", "-a") else str(round(_latex_number(x), 2)) for x in inner]
            return s[0] + ",".join(vals) + s[-1]
    except Exception:
        return s
    return s


def mathvision_equal(a: str, b: str) -> bool:
    """MATH-V's equality of two answer strings."""
    a, b = a.lower(), b.lower()
    if not a.replace(" ", "") or not b.replace(" ", ""):
        return False
    if a.strip() == b.strip():
        return True
    a, b = _mv_tuple(a), _mv_tuple(b)
    if a == b:
        return True
    try:
        return round(_latex_number(a), 2) == round(_latex_number(b), 2)
    except Exception:
        return False


def check_mathvision_official(response: str, item: dict) -> dict:
    """MATH-V's verdict on a raw response (the authors' pipeline end to end)."""
    got = mathvision_extract(response)
    gold = str(item["answer"])
    opts = item.get("options") or []
    value = opts[ord(gold) - 65] if opts and len(gold) == 1 and 0 <= ord(gold) - 65 < len(opts) else ""
    return {"correct": mathvision_equal(gold, got) or mathvision_equal(value, got), "extracted": got}


# ---------------------------------------------------------------------------------------------------------------
# MathVista


def mathvista_normalize(extraction: Any, choices, question_type: str, answer_type: str, precision) -> Any:
    """MathVista's normalisation of an extracted answer (None when it cannot be read)."""
    from .answers import levenshtein

    if question_type == "multi_choice":
        e = extraction.strip() if isinstance(extraction, str) else str(extraction)
        m = re.findall(r"\(([a-zA-Z])\)", e)
        if m:
            e = m[0].upper()
        letters = [chr(65 + i) for i in range(len(choices))]
        if e in letters:
            return choices[letters.index(e)]
        dist = [levenshtein(e, c) for c in choices]
        return choices[dist.index(min(dist))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
        if answer_type == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def mathvista_verdict(extraction: Any, record: dict) -> bool:
    """MathVista's true_false for an extraction and a record with its official fields."""
    pred = mathvista_normalize(
        extraction, record.get("choices"), record["question_type"], record["answer_type"], record.get("precision")
    )
    return pred == record["answer"]


# ---------------------------------------------------------------------------------------------------------------
# LogicVista, DynaMath, WeMath


def logicvista_letters(answer: str) -> list[str]:
    """The letters an extracted answer chooses: "A, C", "AC", "(A) and (C)", "A". A lone character that is not
    a-e or a digit is no answer (["zzzzz"], as the authors)."""
    s = answer.strip()
    if len(s) == 1 and ((s.isalpha() and s.lower() not in "abcde") or (not s.isalpha() and not s.isnumeric())):
        return ["zzzzz"]
    if re.fullmatch(r"[A-Ea-e]{1,5}", s):
        return sorted(set(s.lower()))
    found = re.findall(r"(?<![A-Za-z])\(?([A-E])\)?(?![A-Za-z])", s)
    return sorted({x.lower() for x in found}) or [s.lower()]


def logicvista_match(chosen: list[str], gold: str) -> bool:
    """The authors' rule: lower-cased, sorted lists equal."""
    return sorted(x.lower() for x in chosen) == sorted(x.lower() for x in gold.split(", "))


def _dyna_preprocess(s: str) -> str:
    s = str(s)
    if 0 <= s.find("{") < s.rfind("}"):
        s = s[s.find("{") : s.rfind("}") + 1]
    return s.replace("\\", "").replace("\\n", "\n")


def _dyna_parse(answer: str, answer_type: str) -> tuple[bool, Any]:
    if answer_type == "float":
        if answer.isdigit():
            return True, float(answer)
        head = answer.split(" ")[0]
        try:
            return True, float(head.split("\u03c0")[0]) * math.pi if "\u03c0" in head else float(head)
        except ValueError:
            return False, None
    if answer_type == "multiple choice":
        if len(answer) == 1:
            return True, answer.upper()
        hits = [c for c in "ABCDE" if c in answer.upper()]
        return (True, hits[0]) if len(hits) == 1 else (False, None)
    return True, answer


def dynamath_verdict(prediction: str, answer: str, answer_type: str) -> dict:
    """DynaMath's verdict (VLMEvalKit's rules) on a prediction: its JSON "short answer" when the prediction is
    the JSON the DynaMath prompt asks for, else the prediction itself. The authors' judge model (asked only when
    neither parses) is not called: unparsed is wrong, except a choice letter in the first 3 characters."""
    pred = _dyna_preprocess(prediction)
    ok, short = False, None
    try:
        obj = json.loads(pred, strict=False)
        short = obj.get("short answer") if isinstance(obj, dict) else None
        if not isinstance(short, str):  # (a number there fails the authors' parser too)
            raise ValueError
        ok, short = _dyna_parse(str(short), answer_type)
        if not ok:
            raise ValueError
    except (ValueError, TypeError):
        ok, short = _dyna_parse(pred, answer_type)
    if answer_type == "float":
        correct = bool(ok and abs(float(short) - float(answer)) <= 0.001)
    elif answer_type == "multiple choice":
        correct = (short == answer) if ok else (answer in pred[:3].upper())
    else:
        correct = str(short).lower() in answer.lower()
    return {"correct": bool(correct), "extracted": None if short is None else str(short)}


def wemath_letter(response: str) -> str | None:
    """We-Math's extraction: after the last "Answer", without <>:., the first character if it is A-H."""
    s = re.sub(r"[><:.]", "", response.split("Answer")[-1].strip()).strip()
    return s[0] if s and s[0] in "ABCDEFGH" else None


def wemath_metrics(items: list[dict], correct: list, total: int | None = None) -> dict:
    """We-Math's four-dimensional metric over composite problems with their sub-problems (`key` =
    `{k}steps_{i}` / `{k}steps_multi`, grouped by `ID`). `total`: the denominator (the authors fix 525)."""
    by: dict[str, dict[str, bool]] = {}
    for it, c in zip(items, correct):
        by.setdefault(it["meta"]["ID"], {})[it["meta"]["key"]] = bool(c)
    n = {k: 0 for k in ("IK", "IG", "CM_loose", "CM_strict", "RM_loose", "RM_strict")}
    composites = 0
    one_step = []
    for keys in by.values():
        m = re.match(r"(\d)steps", next(iter(keys)))
        if not m or f"{m.group(1)}steps_multi" not in keys:
            continue
        k = int(m.group(1))
        subs = [keys.get(f"{k}steps_{i}", False) for i in range(1, k + 1)]
        multi = keys[f"{k}steps_multi"]
        composites += 1
        one_step += subs
        n["IK"] += (not all(subs)) and not multi
        n["IG"] += all(subs) and not multi
        n["CM_loose"] += any(subs) and multi
        n["CM_strict"] += all(subs) and multi
        n["RM_loose"] += (not any(subs)) and multi
        n["RM_strict"] += (not all(subs)) and multi
    if composites == 0:
        return {"score": float("nan"), "composites": 0}
    t = total or composites
    out: dict[str, Any] = {
        "score": (t - 0.5 * n["IG"] - n["RM_strict"] - n["IK"]) / t,
        "score_loose": (t - 0.5 * n["IG"] - n["RM_loose"] - n["IK"]) / t,
        "composites": composites,
        "total": t,
        "counts": n,
    }
    for name in ("IK", "IG", "CM_loose", "CM_strict"):
        out[f"{name}_rate"] = n[name] / t
    for how in ("loose", "strict"):
        d = n[f"CM_{how}"] + n[f"RM_{how}"]
        out[f"RM_{how}_rate"] = n[f"RM_{how}"] / d if d else float("nan")
    out["one_step_accuracy"] = sum(one_step) / len(one_step) if one_step else float("nan")
    return out


def dynamath_metrics(items: list[dict], correct: list) -> dict:
    """Average accuracy over all variants and worst-case accuracy over seed questions (all variants right)."""
    seeds: dict[str, bool] = {}
    for it, c in zip(items, correct):
        seeds[it["group"]] = seeds.get(it["group"], True) and bool(c)
    return {
        "score": sum(seeds.values()) / len(seeds),
        "average": sum(map(float, correct)) / len(correct),
        "seed_questions": len(seeds),
        "variants": len(items),
    }


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
