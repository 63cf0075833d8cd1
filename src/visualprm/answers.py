"""Final-answer extraction and checking against a gold answer (REFERENCE.md §5).

`check(response, record)` is what the Monte-Carlo labeller, Best-of-N and `visualprm grade` call. It returns a
verdict `{"correct", "extracted", "parsed", "mode", "score"}` (plus `"error"` when a comparison itself failed,
which callers count, and `"guessed"`, see `check`) and never raises on model text: an answer that cannot be
found or interpreted is wrong and `parsed` is False, so callers can count it separately.

Extraction (first form that can be interpreted in the record's mode wins): the last `\\boxed{..}` (nested
braces), `Final answer: ..`, an `Answer: ..` line, `the answer is ..`, the last **bold** text, the whole
response when it is short, then the last number. With options, a letter (`B`, `(B)`, `B.`) or an option's
text maps to that option.

Modes (`MODES`): `exact` case-insensitive match; `numeric` relative tolerance 1e-4 (or rounding to the record's
`precision`) after stripping units, `%`, degrees, currency and thousands separators; `choice` option letters
and option texts; `math` math-verify equivalence; `vqa` VQA-normalised match (articles, punctuation, number
words); `relaxed` ChartQA relaxed accuracy (5% relative); `anls` ANLS with threshold 0.5, correct when the
score is > 0.9 (higher ANLS is better; the released VisualPRM check has this inverted). `auto` picks a mode
per record: an explicit `mode` field, then `question_type`/`options`, `answer_type`, `source`, then the form
of the gold answer. A gold answer may be a list (any of them counts).

Users can bring their own checker (`load_checker("module:function")`). This module does not call models and
needs no torch; math-verify is imported on first use. It does not reproduce any benchmark's scorer exactly
(MathVista's closest-option guess is available as `choice_fallback="closest"`). The `grade` job, which
checks a file of responses, is in grade.py.
"""

from __future__ import annotations

import logging
import math
import re
import string
import threading
from collections.abc import Callable
from typing import Any

from .schema import InputError, load_callable

MODES = ("auto", "exact", "numeric", "choice", "math", "vqa", "relaxed", "anls")
REL_TOL = 1e-4
MATH_TIMEOUT_S = 5
MAX_MATH_CHARS = 1000  # longer strings are not sent to math-verify (sympy can take minutes on them)

# Dataset names (lower case, matched as substrings of `source`) -> mode. Sources not listed use `auto`.
SOURCE_MODES = {
    **dict.fromkeys(("chartqa", "plotqa", "dvqa"), "relaxed"),
    **dict.fromkeys(("docvqa", "infovqa", "infographicvqa", "st-vqa", "stvqa"), "anls"),
    **dict.fromkeys(("textvqa", "vqav2", "okvqa", "vizwiz", "gqa"), "vqa"),
    **dict.fromkeys(("geoqa", "geometry3k", "geos", "unigeo", "mavis", "mathverse", "math-v", "gsm8k"), "math"),
}

_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
_NUMBER_WORDS = {w: str(i) for i, w in enumerate((_WORDS + " seventeen eighteen nineteen twenty").split())}
_NUM_RE = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d])")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_RE = re.compile(r"final\s+answer\s*(?:is|would be|will be|should be)?\s*[:：]?[ \t]*([^\n]*)", re.I)
_ANSWER_LINE_RE = re.compile(r"(?:^|\n)[ \t#>*_]*answer[*_ ]*[:：][*_]*[ \t]*([^\n]*)", re.I)
_ANSWER_IS_RE = re.compile(
    r"\banswer\s+(?:to\s+(?:the|this)\s+question\s+)?(?:is|(?:would|will|should|must)\s+(?:\w+\s+)?be)\s*[:：]?"
    r"[ \t]*([^\n]*)",
    re.I,
)
_MATHY = re.compile(r"\\[a-zA-Z]+|\^|√|π|sqrt")
_BOLD_RE = re.compile(r"\*\*([^*\n]+?)\*\*")
_LETTER_RE = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])(?:[.:),]|$))")
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")
_UNIT_TAIL = re.compile(r"^[\s.]*(?:%|percent|°|degrees?|\\circ|\^\s*\{?\\circ\}?|[a-zA-Zµμ²³/\s.$€£¥]*)$")
_PREFIX_OK = re.compile(
    r"^(?:\s|[$€£¥~≈]|about|approximately|approx\.?|around|roughly|nearly|only|usd|eur|rs\.?)*$", re.I
)


# ---------------------------------------------------------------------------------------------------------------
# Text helpers


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{..}` / `\\fbox{..}` whose braces close (nested braces allowed)."""
    for m in reversed(list(_BOXED_RE.finditer(text))):
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end() : i].strip()
            i += 1
    return None


def _unwrap_latex(s: str) -> str:
    """Strip `\\text{..}`-style wrappers, math delimiters and spacing commands, keeping the content."""
    for _ in range(3):
        s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[,;:! ]|~", " ", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\%", "%").replace("\\$", "$")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    return s.strip().strip("$").strip()


def clean(s: str) -> str:
    """A candidate answer without markdown, math delimiters, quotes and trailing punctuation."""
    s = _unwrap_latex(s.replace("**", "").replace("__", "").strip())
    s = s.strip().strip("`'\"“”‘’").strip()
    return s.rstrip(".,;:!。 \t").strip()


def _first_sentence(s: str) -> str:
    return re.split(r"\.(?:\s|$)", s, maxsplit=1)[0]


def to_number(s: Any) -> float | None:
    """The one number a short answer states (`"15,000 EUR"` -> 15000, `"45%"` -> 45, `"\\frac{3}{4}"` -> 0.75).

    None when there is no number or more than one (`"3 and 4"`), or when words other than a unit, a currency
    or "about" surround it.
    """
    if isinstance(s, bool) or s is None:
        return None
    if isinstance(s, (int, float)):
        return float(s) if math.isfinite(s) else None
    s = _unwrap_latex(str(s)).replace("−", "-").strip()
    if s.lower() in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[s.lower()])
    if "=" in s:
        s = s.rsplit("=", 1)[1].strip()
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}", r"\1/\2", s)
    m = re.search(r"([-+]?\s*)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)((?:\s*[eE][-+]?\d+)?)", s)
    if not m:
        return None
    prefix, tail = s[: m.start()], s[m.end() :]
    if not _PREFIX_OK.match(prefix):
        return None
    try:
        value = float((m.group(1).replace(" ", "") + m.group(2)).replace(",", "") + m.group(3).replace(" ", ""))
    except ValueError:
        return None
    frac = re.match(r"\s*/\s*(\d+(?:\.\d+)?)", tail)
    if frac:
        if float(frac.group(1)) == 0:
            return None
        value, tail = value / float(frac.group(1)), tail[frac.end() :]
    if not _UNIT_TAIL.match(tail):
        return None
    return value


def _is_percent(s: str) -> bool:
    return "%" in s or "percent" in s.lower()


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", clean(str(s))).lower()


_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't"}


def vqa_normalize(s: str) -> str:
    """VQA-style normalisation: lower case, punctuation removed (decimal points kept), articles dropped,
    number words to digits."""
    s = clean(str(s)).lower().replace("\n", " ")
    s = re.sub(r"(?<=\d),(?=\d)", "", s)
    s = re.sub(r"(?<!\d)\.(?!\d)", " ", s)
    s = "".join(" " if c in string.punctuation and c not in "'." else c for c in s)
    words = [_NUMBER_WORDS.get(w, _CONTRACTIONS.get(w, w)) for w in s.split() if w not in _ARTICLES]
    return " ".join(words)


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, gold: str, threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one pair: 1 - NL when NL < threshold, else 0 (1 = equal)."""
    p, g = " ".join(str(pred).lower().split()), " ".join(str(gold).lower().split())
    if not p and not g:
        return 1.0
    nl = levenshtein(p, g) / max(len(p), len(g))
    return 1.0 - nl if nl < threshold else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Extraction


def _options(record: dict) -> list[str] | None:
    opts = record.get("options", record.get("choices"))
    if isinstance(opts, list) and opts and all(isinstance(o, (str, int, float)) for o in opts):
        return [str(o) for o in opts]
    return None


def candidates(response: str) -> list[tuple[str, str]]:
    """Candidate answers `(form, text)` by priority: boxed, final, answer line, answer-is, bold, the last line
    or the whole one-line response, the last number."""
    out: list[tuple[str, str]] = []
    boxed = last_boxed(response)
    if boxed is not None:
        out.append(("boxed", boxed))
    for form, rx in (("final", _FINAL_RE), ("answer", _ANSWER_LINE_RE), ("answer-is", _ANSWER_IS_RE)):
        for m in reversed(list(rx.finditer(response))):
            text = m.group(1).strip()
            if not clean(text):  # "Answer:" alone on its line: the answer is on the next non-empty line
                rest = [ln for ln in response[m.end() :].split("\n") if clean(ln)]
                text = rest[0] if rest else ""
            if clean(text):
                out.append((form, text))
                break
    bold = _BOLD_RE.findall(response)
    if bold:
        out.append(("bold", bold[-1]))
    stripped = response.strip()
    if "\n" in stripped:  # read only as an option (`(B) no`, `C`) on its own last line
        out.append(("last-line", stripped.rsplit("\n", 1)[1]))
    elif stripped and len(stripped) <= 300:
        out.append(("short", stripped))
    nums = _NUM_RE.findall(response)
    if nums:
        out.append(("number", nums[-1]))
    return out


def option_index(text: str, options: list[str], strict: bool = False, gold: bool = False) -> int | None:
    """Which option `text` names: a letter (`B`, `(B)`, `B.` at the start), an option's text, or (unless
    `strict`) exactly one option text or `(B)` mentioned inside it. A model's letter names an option by its
    position even when option texts look like letters (as MathVista scores it); a gold answer that equals an
    option's text names that option."""
    t = clean(text)
    n = len(options)
    norm_opts = [_norm(o) for o in options]
    if gold and _norm(t) in norm_opts:
        return norm_opts.index(_norm(t))
    m = _LETTER_RE.match(t)
    letter = m and (m.group(1) or m.group(2))
    if letter and (letter.isupper() or len(t) <= 3):
        k = ord(letter.upper()) - ord("A")
        if 0 <= k < n:
            return k
    if _norm(t) in norm_opts:
        return norm_opts.index(_norm(t))
    v = to_number(t)
    if v is not None:
        hits = [i for i, o in enumerate(options) if to_number(o) is not None and _num_close(v, to_number(o))]
        if len(hits) == 1:
            return hits[0]
    if strict:
        return None
    letters = {ord(x) - ord("A") for x in _PAREN_LETTER_RE.findall(t)} & set(range(n))
    if len(letters) == 1:
        return letters.pop()
    low, vo = " " + vqa_normalize(t) + " ", [vqa_normalize(o) for o in options]
    hits = [i for i in range(n) if vo[i] and f" {vo[i]} " in low]
    # an option inside a longer mentioned option ("increase" in "increase slowly") does not count
    hits = [i for i in hits if not any(j != i and vo[i] in vo[j] for j in hits)]
    if len(hits) == 1:
        return hits[0]
    return None


def _interpret(text: str, form: str, mode: str, options: list[str] | None) -> str | None:
    """The candidate as an answer of `mode` (a letter for choices), or None when it cannot be one."""
    if mode == "choice" and options:
        strict = form in ("number", "bold", "last-line") or (form == "short" and len(text) > 60)
        k = option_index(text, options, strict=strict)
        return chr(ord("A") + k) if k is not None else None
    if mode == "choice":
        m = _LETTER_RE.match(clean(text))
        return (m.group(1) or m.group(2)).upper() if m else None
    if form == "last-line" or (form == "short" and len(text) > 60):
        return None
    if form in ("final", "answer", "answer-is", "short") and mode not in ("math", "numeric"):
        text = _first_sentence(text)
    t = clean(text)
    if mode in ("numeric", "relaxed") and t and to_number(t) is None and not _MATHY.search(t):
        if form == "short" or (mode == "relaxed" and not _NUM_RE.search(t)):
            return None if mode == "numeric" else t
        # "the spring moves 1.2 cm." -> 1.2; "2 x 3 = 6" -> 6; "1982, with $931" -> 1982; "between 3 and 4" -> None
        seg = _first_sentence(t).rsplit("=", 1)[-1].strip()
        nums = list(_NUM_RE.finditer(seg))
        lead = _NUM_RE.match(seg.lstrip("$€£¥~≈ "))
        if lead or len(nums) == 1:
            return (lead or nums[0]).group(0).replace(",", "")
        return None
    return t or None


def extract_answer(response: str | None, options: list[str] | None = None, mode: str = "auto") -> str | None:
    """The final answer stated in `response`, in the form `mode` compares (an option letter when options are
    given in choice mode), or None when none can be found. Never raises on model text."""
    found, parsed = _extract(response, options, "choice" if options and mode == "auto" else mode)
    return found if parsed else None


def _extract(response: Any, options: list[str] | None, mode: str) -> tuple[str | None, bool]:
    """(extracted text or None, parsed): the first candidate that can be interpreted, else the first raw one."""
    if not isinstance(response, str) or not response.strip():
        return None, False
    cands = candidates(response)
    anchored = [c for c in cands if c[0] in ("boxed", "final", "answer", "answer-is")]
    for form, text in anchored or cands:  # a stated answer that cannot be read is not replaced by a stray number
        got = _interpret(text, form, mode, options)
        if got is not None:
            return got, True
    return (clean(cands[0][1]) or None, False) if cands else (None, False)


# ---------------------------------------------------------------------------------------------------------------
# Checking


def _num_close(a: float, b: float, rel_tol: float = REL_TOL, precision: int | None = None) -> bool:
    rounded_equal = precision is not None and round(a, precision) == round(b, precision)
    return rounded_equal or math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


def _numeric_equal(pred: str, gold: str, precision: int | None = None, rel_tol: float = REL_TOL) -> bool | None:
    """None when either side is not a number."""
    p, g = to_number(pred), to_number(gold)
    if p is None or g is None:
        return None
    pcands = [p, p / 100, p * 100] if _is_percent(pred) != _is_percent(gold) else [p]  # "45%" vs "0.45"
    return any(_num_close(x, g, rel_tol, precision) for x in pcands)


_MV_LOG = logging.getLogger("math_verify")


def _dollars(s: str) -> str:
    return s if "$" in s or "\\boxed" in s else f"${s}$"


def math_equal(pred: str, gold: str) -> bool | None:
    """math-verify equivalence (gold first); None when either side does not parse. Uses math-verify's alarm
    timeout in the main thread; in other threads (where signals cannot be used) it runs without one, so
    strings longer than MAX_MATH_CHARS are refused there and everywhere."""
    if len(pred) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS:
        return None
    from math_verify import parse, verify

    t = MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    level = _MV_LOG.level
    _MV_LOG.setLevel(logging.ERROR)  # its "timeout disabled" warning would repeat in every worker thread
    try:
        g, p = parse(_dollars(gold), parsing_timeout=t), parse(_dollars(pred), parsing_timeout=t)
        if not g or not p:
            return None
        return bool(verify(g, p, timeout_seconds=t))
    finally:
        _MV_LOG.setLevel(level)


def compare(pred: str, gold: Any, mode: str, options: list[str] | None = None, precision: int | None = None) -> float:
    """Score in [0, 1] of an extracted answer against one gold answer under a concrete mode (not `auto`)."""
    gold = str(gold)
    if mode == "exact":
        return float(_norm(pred) == _norm(gold))
    if mode == "choice":
        if options:
            gi = option_index(gold, options, strict=True, gold=True)
            pi = option_index(pred, options, strict=True)
            if gi is not None:
                return float(pi == gi)
        return float(_norm(pred) == _norm(gold))
    if mode == "numeric":
        eq = _numeric_equal(pred, gold, precision)
        if eq is None:
            eq = math_equal(pred, gold) or _norm(pred) == _norm(gold)
        return float(eq)
    if mode == "math":
        return float(
            _norm(pred) == _norm(gold) or bool(_numeric_equal(pred, gold, precision)) or bool(math_equal(pred, gold))
        )
    if mode == "vqa":
        return float(vqa_normalize(pred) == vqa_normalize(gold))
    if mode == "relaxed":
        p, g = to_number(pred), to_number(gold)
        if p is not None and g is not None:
            if g == 0:
                return float(p == 0)
            return float(abs(p - g) / abs(g) <= 0.05)
        return float(_norm(pred) == _norm(gold))
    if mode == "anls":
        return anls(clean(pred), clean(gold))
    raise ValueError(f"unknown answer mode {mode!r}; choose from {', '.join(MODES)}")


def mode_for(record: dict, mode: str = "auto") -> str:
    """The concrete mode for a record: `mode` if not auto, else its `mode` field, `question_type`/options,
    `answer_type`, `source`, then the gold answer's form (number -> numeric, LaTeX -> math, else vqa)."""
    if mode != "auto":
        return mode
    m = record.get("mode")
    if isinstance(m, str) and m in MODES and m != "auto":
        return m
    if record.get("question_type") in ("multi_choice", "multiple_choice", "choice") or _options(record):
        return "choice"
    at = str(record.get("answer_type") or "").lower()
    if at in ("integer", "float", "number", "numeric", "int"):
        return "numeric"
    if at in ("list", "expression", "latex", "math"):
        return "math"
    source = str(record.get("source") or record.get("data_source") or "").lower()
    for name, m in SOURCE_MODES.items():
        if name in source:
            return m
    gold = record.get("answer")
    golds = gold if isinstance(gold, list) else [gold]
    if golds and all(to_number(g) is not None for g in golds):
        return "numeric"
    if any(_MATHY.search(str(g)) for g in golds):
        return "math"
    return "vqa"


def _check_settings(mode: str, choice_fallback: str) -> None:
    if mode not in MODES:
        raise InputError(f"unknown answer mode {mode!r}; choose from {', '.join(MODES)}", field="mode")
    if choice_fallback not in ("none", "closest"):
        raise InputError(f"unknown choice fallback {choice_fallback!r}; choose none or closest")


def _has_gold(gold: Any) -> bool:
    return gold is not None and gold != [] and not (isinstance(gold, str) and not gold.strip())


def check(response: Any, record: dict, mode: str = "auto", choice_fallback: str = "none") -> dict:
    """Verdict for one response against `record["answer"]` (str, number or list of acceptable answers).

    Uses `options`/`choices`, `precision`, `answer_type`, `question_type`, `source` and `mode` when present.
    `choice_fallback="closest"` reproduces MathVista's official scorer: a multiple-choice answer that names no
    option is mapped to the option nearest by edit distance to what was extracted (or to the whole response);
    the verdict then has `guessed: True` and stays `parsed: False`. Off by default: unparseable is wrong.
    Raises InputError only for a record without a gold answer or an unknown mode, never for the response.
    """
    gold = record.get("answer")
    if not _has_gold(gold):
        raise InputError("missing gold answer", field="answer")
    _check_settings(mode, choice_fallback)
    m = mode_for(record, mode)
    options = _options(record) if m == "choice" else None
    prec = record.get("precision")
    prec = int(prec) if isinstance(prec, (int, float)) and not isinstance(prec, bool) else None
    golds = gold if isinstance(gold, list) else [gold]
    extracted, parsed = _extract(response, options, m)
    verdict = {"correct": False, "extracted": extracted, "parsed": parsed, "mode": m, "score": 0.0}
    pred = extracted
    if not parsed and not (choice_fallback == "closest" and options):
        return verdict
    if not parsed:
        text = extracted if extracted is not None else (response.strip() if isinstance(response, str) else "")
        dist = [levenshtein(text, o) for o in options]
        pred = chr(ord("A") + dist.index(min(dist)))
        verdict["guessed"] = True
    try:
        score = max(compare(pred, g, m, options, prec) for g in golds)
    except Exception as e:  # a checker failure is reported in the verdict and counted, never hidden as "wrong"
        verdict["error"] = f"{type(e).__name__}: {e}"
        return verdict
    verdict["score"] = float(score)
    verdict["correct"] = bool(score > 0.9) if m == "anls" else bool(score >= 1.0)
    return verdict


def is_correct(response: Any, record: dict, mode: str = "auto") -> bool:
    return bool(check(response, record, mode)["correct"])


# ---------------------------------------------------------------------------------------------------------------
# User checkers


def load_checker(spec: str | None) -> Callable[[Any, dict], dict]:
    """A checker `(response, record) -> verdict` from `module:function` or `path/to/file.py:function`.

    The user's function returns a bool or a dict with at least `correct`; the result is completed to a
    verdict. None or "builtin" gives `check`. Raises InputError when the spec cannot be resolved.
    """
    if spec in (None, "", "builtin", "auto"):
        return check
    fn = load_callable(spec, "checker")

    def user_check(response: Any, record: dict) -> dict:
        try:
            out = fn(response, record)
        except Exception as e:  # the user's code failed: say so instead of counting the answer as wrong
            raise InputError(f"checker {spec!r} failed: {type(e).__name__}: {e}") from e
        if isinstance(out, bool):
            out = {"correct": out}
        if not isinstance(out, dict) or not isinstance(out.get("correct"), bool):
            raise InputError(
                f"checker {spec!r} returned {type(out).__name__}; expected a bool or a dict with a bool 'correct'"
            )
        verdict = {"extracted": None, "parsed": True, "mode": f"custom:{spec}", "score": float(out["correct"])}
        verdict.update(out)
        return verdict

    user_check.__name__ = f"checker[{spec}]"
    return user_check
