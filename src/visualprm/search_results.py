"""What `visualprm search` reports: the cost counters (`COST_KEYS`), one samples.jsonl line per problem and
method (`sample_record`), the summary per method (`summarize`: accuracy, oracle, mean cost) and the printed table
(`format_table`); and `unescape` for `--step-sep` as typed on a command line.

Plain functions over plain data: it does not search, generate, score or write files (search.py does).
"""

from __future__ import annotations

import codecs
from typing import Any

from .scoring import aggregate

COST_KEYS = ("tokens", "requests", "samples", "rounds", "prm_solutions", "prm_steps")


def summarize(samples: list[dict], failed: int, seconds: float) -> dict:
    """Accuracy, oracle (any finished solution correct), unparsed answers and the mean cost per problem."""
    n = len(samples)
    out: dict[str, Any] = {"problems": n, "failed": failed, "seconds": round(seconds, 2)}
    out["accuracy"] = sum(s["correct"] for s in samples) / n if n else 0.0
    out["oracle"] = sum(s["oracle"] for s in samples) / n if n else 0.0
    out["unparsed"] = sum(not s["parsed"] for s in samples)
    for k in COST_KEYS:
        out[k] = sum(s["cost"][k] for s in samples) / n if n else 0.0
    out["budget_hit"] = sum(bool(s.get("budget_hit")) for s in samples)
    return out


def format_table(by_method: dict[str, dict], budget: int | None = None) -> str:
    """Methods as rows: accuracy and oracle (percent), then the mean cost per problem; with a `budget`, a line
    that sets it beside the tokens spent (a method may overshoot it by up to one round)."""
    head = f"{'method':10s}{'n':>6s}{'acc %':>8s}{'oracle %':>10s}{'tokens':>9s}{'requests':>10s}{'samples':>9s}"
    head += f"{'rounds':>8s}{'PRM sols':>10s}{'seconds':>9s}"
    lines = [head]
    for m, r in by_method.items():
        lines.append(
            f"{m:10s}{r['problems']:6d}{100 * r['accuracy']:8.1f}{100 * r['oracle']:10.1f}{r['tokens']:9.1f}"
            f"{r['requests']:10.1f}{r['samples']:9.1f}{r['rounds']:8.1f}{r['prm_solutions']:10.1f}{r['seconds']:9.1f}"
        )
    if budget:
        spent = ", ".join(f"{m} {r['tokens']:.1f}" for m, r in by_method.items())
        lines.append(
            f"budget {budget} tokens per problem; mean spent: {spent} (no round starts past the budget, so a "
            "method may overshoot it by up to one round)"
        )
    return "\n".join(lines)


def sample_record(problem: dict, method: str, result: dict, check, how: str) -> dict:
    """One line of samples.jsonl: the pick, its verdict, the oracle over finished solutions, the cost."""
    fin, best = result["finished"], result["best"]
    rec: dict[str, Any] = {"id": problem["id"], "method": method}
    verdicts = [check(f["response"], problem) for f in fin]
    if best is None:
        rec.update(response="", steps=[], step_scores=[], score=None, correct=False, parsed=False, extracted=None)
    else:
        v = verdicts[best]
        rec.update(response=fin[best]["response"], steps=fin[best]["steps"])
        rec["step_scores"] = [round(x, 6) for x in fin[best]["scores"]]
        rec["score"] = round(aggregate(fin[best]["scores"], how), 6)
        rec.update(correct=bool(v["correct"]), parsed=bool(v.get("parsed", True)), extracted=v.get("extracted"))
    rec["oracle"] = any(bool(v["correct"]) for v in verdicts)
    rec["n_finished"] = len(fin)
    rec["cost"] = result["meter"]
    rec["budget_hit"] = bool(result.get("budget_hit"))
    if problem.get("answer") is not None:
        rec["answer"] = problem["answer"]
    return rec


def unescape(s: str) -> str:
    """`\\n` and `\\t` typed on a command line -> the characters (for `--step-sep`)."""
    return codecs.decode(s, "unicode_escape") if "\\" in s else s
