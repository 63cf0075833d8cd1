"""Critic-benchmark metrics: VisualProcessBench (every wrong step) and ProcessBench (the first wrong step), the
exact threshold search for `--threshold auto`, the held-out split it tunes on, and bootstrap confidence intervals.

VisualProcessBench (REFERENCE.md §7): neutral steps (label 0) are left out; a step is predicted correct when its
score is >= the threshold (a tie counts as correct); TP/FP/FN/TN are pooled over all steps of all records; F1 is
computed with "correct" and with "incorrect" as the positive class and macro-F1 is their mean. A group (a
source, a policy) with no gold step of a class has no F1 for that class and no macro-F1 (None, shown n/a, with
the reason in `undefined`), where scikit-learn would return a misleading 0. Beside the pooled
figure we report `macro_f1_weighted`: the per-source macro-F1 averaged with each source weighted by its number of
records (the third-party convention), and `macro_f1_source_mean` (unweighted mean over sources).

ProcessBench (§8): the prediction is the first step whose score is below the threshold (-1 when none is); per
subset the accuracy on erroneous samples (prediction == label) and on correct ones (prediction == -1), F1 their
harmonic mean; `average_f1` is the mean over the subsets given. A subset without one of the classes has no F1
(`undefined` says why).

The threshold search is exact (the metrics only change at score values). Confidence intervals are percentile
bootstraps over records (within each subset for ProcessBench).

Plain functions over items (as `bench.load_bench` reads them) and step scores. This module does not read
benchmark files, score records, print tables or write results (bench.py does); it needs numpy only.
"""

from __future__ import annotations

import numpy as np

from .schema import InputError

# ---------------------------------------------------------------------------------------------------------------
# Metrics: VisualProcessBench


def f1(tp: float, fp: float, fn: float) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0 when the denominator is 0."""
    d = 2 * tp + fp + fn
    return 2 * tp / d if d else 0.0


def step_counts(labels: list[int], scores: list[float], threshold: float) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) with "correct" as the positive class; neutral steps (0) are left out."""
    tp = fp = fn = tn = 0
    for y, s in zip(labels, scores):
        if y == 0:
            continue
        pred = s >= threshold
        if y == 1:
            tp, fn = tp + pred, fn + (not pred)
        else:
            fp, tn = fp + pred, tn + (not pred)
    return tp, fp, fn, tn


def vpb_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
    """Metrics of pooled counts. A class with no gold step in the group has no F1 (None, not 0: the F1 of a class
    that never occurs says nothing), and then neither has macro-F1; `undefined` says why."""
    n = tp + fp + fn + tn
    fc = f1(tp, fp, fn) if tp + fn else None
    fi = f1(tn, fn, fp) if fp + tn else None
    out = {
        "macro_f1": (fc + fi) / 2 if fc is not None and fi is not None else None,
        "f1_correct": fc,
        "f1_incorrect": fi,
        "accuracy": (tp + tn) / n if n else None,
        "n_steps": n,
        "n_correct": tp + fn,
        "n_incorrect": fp + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
    if not n:
        out["undefined"] = "no scorable steps (all neutral or none): no F1"
    elif fi is None:
        out["undefined"] = "no wrong steps in this group: F1-incorrect and macro-F1 need both classes"
    elif fc is None:
        out["undefined"] = "no correct steps in this group: F1-correct and macro-F1 need both classes"
    return out


def vpb_metrics(items: list[dict], scores: list[list[float]], threshold: float) -> dict:
    """Pooled metrics overall, per source and per policy, plus the per-source weighted variant."""
    counts = [step_counts(it["step_labels"], s, threshold) for it, s in zip(items, scores)]

    def pooled(idx):
        return vpb_from_counts(*(int(sum(counts[i][k] for i in idx)) for k in range(4)))

    def grouped(key):
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it[key], []).append(i)
        return {g: {**pooled(idx), "n_records": len(idx)} for g, idx in sorted(groups.items())}

    overall = {**pooled(range(len(items))), "n_records": len(items)}
    by_source = grouped("source")
    scored = [m for m in by_source.values() if m["macro_f1"] is not None]
    w = sum(m["n_records"] for m in scored)
    overall["macro_f1_weighted"] = sum(m["macro_f1"] * m["n_records"] for m in scored) / w if w else None
    overall["macro_f1_source_mean"] = sum(m["macro_f1"] for m in scored) / len(scored) if scored else None
    overall["n_neutral"] = sum(y == 0 for it in items for y in it["step_labels"])
    return {"overall": overall, "by_source": by_source, "by_policy": grouped("policy")}


# ---------------------------------------------------------------------------------------------------------------
# Metrics: ProcessBench


def first_error(scores: list[float], threshold: float) -> int:
    """Index of the first step scored below the threshold, -1 when none is."""
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def pb_from_matches(labels: list[int], preds: list[int]) -> dict:
    """The official formula: accuracy on erroneous and on correct samples, F1 their harmonic mean."""
    err = [p == y for y, p in zip(labels, preds) if y != -1]
    cor = [p == -1 for y, p in zip(labels, preds) if y == -1]
    a1 = sum(err) / len(err) if err else None
    a2 = sum(cor) / len(cor) if cor else None
    if a1 is None or a2 is None:
        f = None
    else:
        f = 2 * a1 * a2 / (a1 + a2) if a1 + a2 else 0.0
    out = {"f1": f, "acc_error": a1, "acc_correct": a2, "n": len(labels), "n_error": len(err), "n_correct": len(cor)}
    if a1 is None or a2 is None:
        missing = "erroneous" if a1 is None else "correct"
        out["undefined"] = (
            f"no {missing} samples in the selection: acc. on {missing} samples and F1 undefined "
            "(--sample N keeps both classes)"
        )
    return out


def pb_metrics(items: list[dict], scores: list[list[float]], threshold: float) -> dict:
    subsets: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        subsets.setdefault(it["subset"], []).append(i)
    preds = [first_error(s, threshold) for s in scores]
    out: dict = {}
    for name, idx in subsets.items():
        out[name] = pb_from_matches([items[i]["label"] for i in idx], [preds[i] for i in idx])
    f1s = [m["f1"] for m in out.values() if m["f1"] is not None]
    out["average_f1"] = sum(f1s) / len(f1s) if f1s else None
    if not f1s:
        out["average_f1_undefined"] = "no subset has both erroneous and correct samples in the selection"
    elif len(f1s) < len(subsets):
        out["average_f1_over"] = [k for k, m in out.items() if isinstance(m, dict) and m["f1"] is not None]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Threshold search (exact: the metrics only change at score values)


def _best(cands: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The candidate with the highest value; ties go to the one closest to 0.5, then the lower one."""
    values = np.nan_to_num(values, nan=-1.0)
    top = values.max()
    ok = np.flatnonzero(values >= top - 1e-12)
    best = min(ok, key=lambda i: (abs(cands[i] - 0.5), cands[i]))
    return float(cands[best]), float(values[best])


def _candidates(values: list[float]) -> np.ndarray:
    v = np.unique(np.asarray(values, dtype=float))
    return np.unique(np.concatenate([v, np.nextafter(v, np.inf), [0.5]]))


def tune_vpb(items: list[dict], scores: list[list[float]]) -> tuple[float, float]:
    """Threshold maximising pooled macro-F1; returns (threshold, macro-F1 on these items)."""
    pos = np.sort([s for it, sc in zip(items, scores) for y, s in zip(it["step_labels"], sc) if y == 1])
    neg = np.sort([s for it, sc in zip(items, scores) for y, s in zip(it["step_labels"], sc) if y == -1])
    cands = _candidates(np.concatenate([pos, neg]).tolist())
    tp = len(pos) - np.searchsorted(pos, cands, "left")
    fp = len(neg) - np.searchsorted(neg, cands, "left")
    fn, tn = len(pos) - tp, len(neg) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        fc = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        fi = np.where(2 * tn + fp + fn > 0, 2 * tn / np.maximum(2 * tn + fp + fn, 1), 0.0)
    return _best(cands, (fc + fi) / 2)


def tune_pb(items: list[dict], scores: list[list[float]]) -> tuple[float, float]:
    """Threshold maximising the mean F1 over subsets. A sample with label l matches at threshold t when
    t <= min(scores[:l]) and t > scores[l]; a correct sample when t <= min(scores)."""
    subsets: dict[str, tuple[list, list, list]] = {}
    allv: list[float] = []
    for it, sc in zip(items, scores):
        lo, hi, mins = subsets.setdefault(it["subset"], ([], [], []))
        y = it["label"]
        if y == -1:
            mins.append(min(sc))
        else:
            lo.append(sc[y])
            hi.append(min(sc[:y]) if y > 0 else np.inf)
        allv += sc
    cands = _candidates(allv)
    f1s = []
    for lo, hi, mins in subsets.values():
        if not (lo and mins):
            continue
        lo_a, hi_a = np.asarray(lo), np.asarray(hi)
        ok = lo_a < hi_a
        lo_s, hi_s, mn = np.sort(lo_a[ok]), np.sort(hi_a[ok]), np.sort(mins)
        # intervals (lo, hi]: count containing t = #(lo < t) - #(hi < t)
        a1 = (np.searchsorted(lo_s, cands, "left") - np.searchsorted(hi_s, cands, "left")) / len(lo)
        a2 = (len(mn) - np.searchsorted(mn, cands, "left")) / len(mn)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1s.append(np.where(a1 + a2 > 0, 2 * a1 * a2 / np.where(a1 + a2 > 0, a1 + a2, 1), 0.0))
    if not f1s:
        raise InputError(
            "the held-out part has no subset with both erroneous and correct samples; lower --limit "
            "or use a fixed --threshold"
        )
    return _best(cands, np.mean(f1s, axis=0))


def heldout_split(items: list[dict], fraction: float, seed: int) -> list[bool]:
    """A seeded random `fraction` of each file's records is held out (True) for tuning the threshold."""
    rng = np.random.default_rng(seed)
    held = [False] * len(items)
    by_file: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_file.setdefault(it["file"], []).append(i)
    for idx in by_file.values():
        k = int(round(fraction * len(idx)))
        for j in rng.permutation(len(idx))[:k]:
            held[idx[j]] = True
    return held


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals


def _ci(x: np.ndarray) -> list[float] | None:
    x = x[~np.isnan(x)]
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))] if len(x) else None


def _resample_weights(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n, size=(b, n))
    return np.stack([np.bincount(r, minlength=n) for r in idx])


def bootstrap_vpb(items, scores, threshold: float, b: int, seed: int) -> dict:
    c = np.array([step_counts(it["step_labels"], s, threshold) for it, s in zip(items, scores)], dtype=float)
    tp, fp, fn, tn = (_resample_weights(len(items), b, np.random.default_rng(seed)) @ c).T
    with np.errstate(invalid="ignore", divide="ignore"):
        fc = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        fi = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    return {"macro_f1": _ci((fc + fi) / 2), "f1_correct": _ci(fc), "f1_incorrect": _ci(fi)}


def bootstrap_pb(items, scores, threshold: float, b: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    subsets: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        subsets.setdefault(it["subset"], []).append(i)
    out, per = {}, []
    for name, idx in subsets.items():
        y = np.array([items[i]["label"] for i in idx])
        p = np.array([first_error(scores[i], threshold) for i in idx])
        w = _resample_weights(len(idx), b, rng)
        e, c = y != -1, y == -1
        with np.errstate(invalid="ignore", divide="ignore"):
            a1 = (w[:, e] @ (p[e] == y[e])) / w[:, e].sum(1)
            a2 = (w[:, c] @ (p[c] == -1)) / w[:, c].sum(1)
            f = np.where(a1 + a2 > 0, 2 * a1 * a2 / (a1 + a2), 0.0)
        f = np.where(np.isnan(a1) | np.isnan(a2), np.nan, f)
        out[name] = _ci(f)
        if e.any() and c.any():
            per.append(f)
    out["average_f1"] = _ci(np.nanmean(np.stack(per), axis=0)) if per else None
    return out
