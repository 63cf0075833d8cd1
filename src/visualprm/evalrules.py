"""The answer rules of the Table 2 benchmarks, each reimplemented from its authors' scoring code (not copied):
MathVision's extraction and LaTeX equality, MathVista's normalisation, LogicVista's letters, DynaMath's verdicts and
worst-case metric, WeMath's letter and four-dimensional metric. `evalsets.py` says, per benchmark, which code and
commit each rule follows, and reads the files; this module neither reads files nor samples nor scores.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

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
