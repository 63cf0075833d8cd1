"""The `grade` job: check every record's `response` in a file (JSONL, a JSON list, or a JSON object keyed by id
as MathVista writes them) against its gold `answer`, write the records back with the verdict added, and print
and return a summary per answer mode.

The checking itself (extraction, modes, user checkers) is answers.py's: this module only reads, validates,
loops and writes. It does not call models and needs no torch.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .answers import _check_settings, _has_gold, check, load_checker
from .schema import InputError, Loc, write_json, write_jsonl


def read_records(path: str) -> tuple[list[tuple[Loc, dict]], list | None]:
    """Records from JSONL, a JSON list, or a JSON object keyed by id (MathVista's output files).

    Returns the records and, for a keyed object, its keys (so the output keeps the shape).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("file not found", path)
    text = p.read_text(encoding="utf-8")
    head = text.lstrip()[:1]
    data = None
    if head in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSONL with several lines
    if isinstance(data, list):
        if not all(isinstance(r, dict) for r in data):
            raise InputError("expected a JSON list of objects", path)
        return [(Loc(path, i + 1), r) for i, r in enumerate(data)], None  # line = item number
    if isinstance(data, dict) and "response" not in data and data and all(isinstance(v, dict) for v in data.values()):
        return [(Loc(path, i + 1), r) for i, r in enumerate(data.values())], list(data.keys())
    from .schema import read_jsonl

    return list(read_jsonl(path)), None


def grade_file(
    input_path: str,
    out_path: str,
    mode: str = "auto",
    checker: str | None = None,
    choice_fallback: str = "none",
    progress: bool = True,
) -> dict:
    """Check every record's `response` against its `answer`; write the records back with `correct`,
    `extracted`, `parsed` (and `check_error`, `guessed` when they apply) added; print and return a summary."""
    _check_settings(mode, choice_fallback)
    if checker:
        user = load_checker(checker)
        fn = lambda response, rec: user(response, rec)  # noqa: E731
    else:
        fn = lambda response, rec: check(response, rec, mode, choice_fallback)  # noqa: E731
    items, keys = read_records(input_path)
    for loc, rec in items:  # validate everything before any work
        if "response" not in rec:
            raise loc.error("missing", "response")
        if rec["response"] is not None and not isinstance(rec["response"], str):
            raise loc.error(f"expected a string, got {type(rec['response']).__name__}", "response")
        if not _has_gold(rec.get("answer")):
            raise loc.error("missing gold answer", "answer")
    from .jobs import bar as progress_bar

    out, per_mode = [], {}
    for loc, rec in progress_bar(len(items), "grade", "answer", enabled=progress, iterable=items):
        try:
            v = fn(rec["response"], rec)
        except InputError as e:
            raise InputError(e.message, loc.path, loc.line, e.field) from None
        r = dict(rec)
        r["correct"], r["extracted"], r["parsed"] = bool(v["correct"]), v.get("extracted"), bool(v.get("parsed"))
        for k in ("guessed", "error"):
            if v.get(k):
                r["guessed" if k == "guessed" else "check_error"] = v[k]
        out.append(r)
        c = per_mode.setdefault(str(v.get("mode", "?")), Counter())
        c.update(n=1, correct=r["correct"], unparseable=not r["parsed"], errors=bool(v.get("error")))
        c.update(guessed=bool(v.get("guessed")), guessed_correct=bool(v.get("guessed")) and r["correct"])
    if str(out_path).endswith(".json"):
        write_json(out_path, dict(zip(keys, out)) if keys is not None else out)
    else:
        write_jsonl(out_path, out)
    total = sum(per_mode.values(), Counter())
    n = total["n"]
    summary = {
        "n": n,
        "correct": total["correct"],
        "accuracy": total["correct"] / n if n else 0.0,
        "unparseable": total["unparseable"],
        "checker_errors": total["errors"],
        "guessed": total["guessed"],
        "guessed_correct": total["guessed_correct"],
        "by_mode": {m: {k: c[k] for k in ("n", "correct", "unparseable")} for m, c in sorted(per_mode.items())},
    }
    print(
        f"graded {n} answers: {summary['correct']} correct ({100 * summary['accuracy']:.1f}%), "
        f"{summary['unparseable']} unparseable, {summary['checker_errors']} checker errors -> {out_path}"
    )
    if choice_fallback == "closest":
        print(f"closest-option guesses for unparseable choices: {total['guessed']} ({total['guessed_correct']} right)")
    print(f"{'mode':<12}{'n':>7}{'correct':>9}{'accuracy':>10}{'unparseable':>13}")
    for m, c in sorted(per_mode.items()):
        print(f"{m:<12}{c['n']:>7}{c['correct']:>9}{100 * c['correct'] / c['n']:>9.1f}%{c['unparseable']:>13}")
    return summary
