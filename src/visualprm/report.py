"""Self-contained HTML reports (one page per run, no scripts, no external files) and the plots they embed.

`bon_report`: the Best-of-N tables, the accuracy-vs-N curve (PNG made with matplotlib's Agg backend, embedded as
base64) and a few picked solutions. `bench_report`: the critic-benchmark tables, a histogram of step scores by
gold label, and a few solutions (of different questions). In both, every solution card shows its image(s) as a
small embedded thumbnail, and every step is coloured by its score (red 0 -> green 1, clipped to [0, 1]) and,
where the gold label is known, marked with it, so a person can look instead of read. A metric that is undefined
(a group without one of the classes) reads "n/a", with the reason beside the table.

This module computes no metrics; it only lays out what bench.py and bon.py computed.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

# Fixed colours so a test can find the curve in a screenshot.
MAIN_COLOUR = "#d62728"
COLOURS = {
    "oracle": "#7f7f7f",
    "majority_vote": "#1f77b4",
    "prm_weighted_vote": "#9467bd",
    "orm": "#ff7f0e",
    "random": "#bcbd22",
    "pass@1": "#17becf",
}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.sol{border:1px solid #ccc;border-radius:6px;padding:8px;margin:12px 0}
.q{white-space:pre-wrap;font-size:13px;color:#444;margin-bottom:6px}
.step{white-space:pre-wrap;font-size:13px;padding:4px 6px;margin:3px 0;border-radius:4px}
.tag{font-family:monospace;font-size:12px;float:right;margin-left:8px}
.meta{color:#666;font-size:12px;overflow-wrap:anywhere}img.plot{max-width:100%;border:1px solid #eee}
.solrow{display:flex;gap:12px;align-items:flex-start}.solmain{flex:1;min-width:0}
.thumbs{flex:none;display:flex;flex-direction:column;gap:4px}
.thumbs img{max-width:224px;max-height:160px;border:1px solid #ccc}
.nothumb{font-size:11px;color:#999;border:1px dashed #ccc;padding:4px}td.text,th.text{text-align:left}
.ok{color:#1a7f1a;font-weight:600}.bad{color:#c62828;font-weight:600}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;background:#f7f7f7;padding:8px}
.wide{overflow-x:auto;max-width:100%}
"""


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def bon_curve_png(
    curves: dict, path: str | Path | None = None, main: str = "prm_mean", pass_at_1: float | None = None
) -> bytes:
    """Accuracy vs N for each method (log2 x axis); the main PRM curve drawn thick in MAIN_COLOUR; pass@1 (the
    first candidate) as a flat dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = curves["n"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, ys in curves.items():
        if m in ("n", "subsets") or not isinstance(ys, list):
            continue
        if m == main:
            ax.plot(ns, [100 * y for y in ys], "-o", color=MAIN_COLOUR, lw=3, label=f"PRM ({m[4:]})", zorder=5)
        elif m in COLOURS:
            style = "--" if m in ("oracle", "random", "pass@1") else "-s"
            ax.plot(ns, [100 * y for y in ys], style, color=COLOURS[m], lw=1.5, label=m)
        else:
            ax.plot(ns, [100 * y for y in ys], ":", lw=1, alpha=0.7, label=m)
    if pass_at_1 is not None:
        ax.axhline(100 * pass_at_1, color=COLOURS["pass@1"], ls="--", lw=1.5, label="pass@1 (first candidate)")
    if len(ns) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Best-of-N (mean over {curves.get('subsets', '?')} random subsets below the full N)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    data = _png_bytes(fig)
    plt.close(fig)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def score_hist_png(pos: list[float], neg: list[float], threshold: float, labels=("correct", "incorrect")) -> bytes:
    """Histogram of step scores for gold-correct and gold-incorrect steps, with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    allv = pos + neg
    lo, hi = (min(allv + [0.0]), max(allv + [1.0])) if allv else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)]
    ax.hist(pos, bins=bins, alpha=0.6, color="#2ca02c", label=f"gold {labels[0]} ({len(pos)})")
    ax.hist(neg, bins=bins, alpha=0.6, color=MAIN_COLOUR, label=f"gold {labels[1]} ({len(neg)})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("step score")
    ax.set_ylabel("steps")
    ax.legend(fontsize=8)
    data = _png_bytes(fig)
    plt.close(fig)
    return data


# ---------------------------------------------------------------------------------------------------------------
# HTML pieces


def _e(x) -> str:
    return html.escape(str(x))


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _td(c) -> str:
    """A cell: numbers (and n/a) right-aligned, text left-aligned."""
    text = str(c).strip()
    try:
        float(text.rstrip("%"))
        numeric = True
    except ValueError:
        numeric = text in ("", "n/a", "-")
    return f"<td>{_e(c)}</td>" if numeric else f'<td class="text">{_e(c)}</td>'


def table(header: list[str], rows: list[list]) -> str:
    text_cols = {i for i, c in enumerate(rows[0]) if 'class="text"' in _td(c)} if rows else set()
    h = "".join(
        f'<th class="text">{_e(c)}</th>' if i in text_cols else f"<th>{_e(c)}</th>" for i, c in enumerate(header)
    )
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f'<div class="wide"><table><tr>{h}</tr>{body}</table></div>'


def img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def step_colour(score: float) -> str:
    s = min(1.0, max(0.0, float(score)))
    return f"hsl({120 * s:.0f},70%,86%)"


def report_images(paths: list, base_dir=None, image_root=None) -> list[str]:
    """The image paths of a record as files to show: relative ones under `image_root`, else `base_dir` (as the
    scorers resolve them). Missing files are kept (the card says so), URLs and data URIs are left out."""
    root = Path(image_root) if image_root else Path(base_dir) if base_dir else Path(".")
    out = []
    for p in paths or []:
        if not isinstance(p, str) or p.startswith(("http://", "https://", "data:")):
            continue
        out.append(str(p if Path(p).is_absolute() else root / p))
    return out


def thumbnail(path: str | Path, side: int = 224) -> str:
    """An <img> of the image at `path`, scaled to at most `side` pixels and embedded as PNG (a note if it cannot
    be read)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except Exception as e:  # the report still shows the solution
        return f'<span class="nothumb">image {_e(Path(path).name)}: {_e(type(e).__name__)}</span>'
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{_e(Path(path).name)}" title="{_e(path)}" src="data:image/png;base64,{data}">'


def solution_html(
    title: str,
    question: str,
    steps: list[str],
    scores: list[float],
    gold=None,
    note: str = "",
    images: list[str] | None = None,
) -> str:
    """One solution: its image(s) as thumbnails, each step on a background coloured by its score, with its score
    and gold label."""
    parts = [
        f'<div class="sol"><div class="meta">{_e(title)} {_e(note)}</div><div class="solrow"><div class="solmain">'
    ]
    parts.append(f'<div class="q">{_e(question[:600])}{"…" if len(question) > 600 else ""}</div>')
    names = {1: "gold ✓", -1: "gold ✗", 0: "gold neutral"}  # labels as VisualProcessBench writes them
    for k, (s, sc) in enumerate(zip(steps, scores)):
        tag = f"score {sc:.3f}"
        if gold is not None and k < len(gold) and gold[k] is not None:
            tag += " · " + names.get(gold[k], str(gold[k]))
        parts.append(
            f'<div class="step" style="background:{step_colour(sc)}"><span class="tag">{_e(tag)}</span>'
            f"<b>{k + 1}.</b> {_e(s)}</div>"
        )
    parts.append("</div>")  # solmain
    if images:
        parts.append('<div class="thumbs">' + "".join(thumbnail(p) for p in images[:4]) + "</div>")
    parts.append("</div></div>")
    return "".join(parts)


def page(title: str, body: list[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>{''.join(body)}</body></html>\n"
    )


def _atomic(path: str | Path, text: str) -> None:
    from .schema import write_text

    write_text(path, text)


# ---------------------------------------------------------------------------------------------------------------
# Pages


def bon_report(results: dict, shown: list[dict], path: str | Path, curve_png: bytes | None = None) -> None:
    """Best-of-N page: curve, accuracy table (pooled, per source), picked solutions."""
    body = []
    if curve_png is None:
        curve_png = bon_curve_png(
            results["curves"], None, f"prm_{results['aggregate']}", results["accuracy"]["pass@1"]
        )
    body.append("<h2>Accuracy vs N</h2>" + img(curve_png, "Best-of-N curve"))
    srcs = list(results["by_source"])
    header = ["method", "all (%)"] + ([f"{s} (%)" for s in srcs] + ["mean over sources (%)"] if len(srcs) > 1 else [])
    rows = []
    for m in results["methods"]:
        r = [m, _pct(results["accuracy"][m])]
        if len(srcs) > 1:
            r += [_pct(results["by_source"][s][m]) for s in srcs] + [_pct(results["source_mean"][m])]
        rows.append(r)
    c = results["counts"]
    body.append(f"<h2>Accuracy at N = {c['candidates_min']}</h2>" + table(header, rows))
    curves = results["curves"]
    crow = [[m] + [_pct(v) for v in curves[m]] for m in results["methods"] if m in curves]
    body.append("<h2>Curves</h2>" + table(["method"] + [f"N={n}" for n in curves["n"]], crow))
    body.append(
        f'<p class="meta">{c["problems"]} problems with gold answers; aggregate {_e(results["aggregate"])}; '
        f"config {_e(results.get('config', {}))}</p>"
    )
    if shown:
        body.append("<h2>Picked solutions (steps coloured by PRM score)</h2>")
        for s in shown:
            note = "" if s.get("correct") is None else ("answer correct" if s["correct"] else "answer wrong")
            body.append(
                solution_html(s["title"], s["question"], s["steps"], s["scores"], None, f"· {note}", s.get("images"))
            )
    _atomic(path, page("Best-of-N report", body))


def _question(texts: list | None, i: int):
    """What makes two records the same question: its text and its images."""
    if not texts:
        return i
    return texts[i][0], tuple(texts[i][2]) if len(texts[i]) > 2 and texts[i][2] else ()


def _pick_examples(samples: list[dict], kind: str, k: int = 6, texts: list | None = None) -> list[int]:
    """Up to k distinct records, each of a different question where there are enough (a benchmark may hold
    several solutions of one question): half with a wrong step (where the critic has work to do), then the
    others, each group in file order."""
    if kind == "visualprocessbench":
        bad = [i for i, s in enumerate(samples) if -1 in s["step_labels"]]
    else:
        bad = [i for i, s in enumerate(samples) if s["label"] != -1]
    good = [i for i in range(len(samples)) if i not in set(bad)]
    chosen: list[int] = []

    def take(pool: list[int], limit: int, distinct: bool) -> None:
        for i in pool:
            if len(chosen) >= limit:
                return
            if i in chosen or (distinct and any(_question(texts, j) == _question(texts, i) for j in chosen)):
                continue
            chosen.append(i)

    take(bad, k // 2, True)  # half with a wrong step
    take(good, k, True)  # then correct ones
    take(bad, k, True)  # more wrong ones when there are too few correct
    take(bad + good, k, False)  # a question twice only when there are fewer than k questions
    return chosen


def _why_na(groups: list[tuple[str, dict]]) -> str:
    """The reasons of the n/a cells of a table, one line per group."""
    notes = [f"<li>n/a in <b>{_e(name)}</b>: {_e(m['undefined'])}</li>" for name, m in groups if m.get("undefined")]
    return f'<ul class="meta">{"".join(notes)}</ul>' if notes else ""


def bench_report(results: dict, samples: list[dict], texts: list[tuple], path: str | Path) -> None:
    """Critic-benchmark page: tables, a score histogram by gold label, a few solutions. `texts`: (question,
    steps) or (question, steps, image paths) per sample."""
    kind = results["format"]
    thr = results["threshold"]
    body = []
    if kind == "visualprocessbench":
        pos = [x for s in samples for x, y in zip(s["step_scores"], s["step_labels"]) if y == 1]
        neg = [x for s in samples for x, y in zip(s["step_scores"], s["step_labels"]) if y == -1]
        body.append("<h2>Step scores by gold label</h2>" + img(score_hist_png(pos, neg, thr), "score histogram"))
        header = ["group", "macro-F1 (%)", "F1 correct (%)", "F1 incorrect (%)", "steps", "records"]

        def row(name, m):
            return [
                name,
                _pct(m["macro_f1"]),
                _pct(m["f1_correct"]),
                _pct(m["f1_incorrect"]),
                m["n_steps"],
                m["n_records"],
            ]

        o = results["overall"]
        rows = [row("overall (pooled)", o)]
        rows.append(["overall (per-source weighted)", _pct(o["macro_f1_weighted"]), "", "", "", ""])
        groups = [("overall (pooled)", o)]
        groups += [(f"source: {k}", v) for k, v in results["by_source"].items()]
        groups += [(f"policy: {k}", v) for k, v in results["by_policy"].items()]
        rows += [row(name, m) for name, m in groups[1:]]
        body.append("<h2>VisualProcessBench</h2>" + table(header, rows) + _why_na(groups))
        if o.get("ci95", {}).get("macro_f1"):
            lo, hi = o["ci95"]["macro_f1"]
            body.append(f'<p class="meta">macro-F1 95% bootstrap CI [{100 * lo:.1f}, {100 * hi:.1f}]</p>')
    else:
        pos = [x for s in samples for x in s["step_scores"][: s["label"] if s["label"] != -1 else None]]
        neg = [s["step_scores"][s["label"]] for s in samples if s["label"] != -1]
        hist = score_hist_png(pos, neg, thr, ("before the first error", "first error"))
        body.append("<h2>Step scores</h2>" + img(hist, "score histogram"))
        pb = results["processbench"]
        rows = [
            [k, _pct(m["acc_error"]), _pct(m["acc_correct"]), _pct(m["f1"]), m["n"]]
            for k, m in pb.items()
            if isinstance(m, dict)
        ]
        rows.append(["average", "", "", _pct(pb["average_f1"]), ""])
        header = ["subset", "acc. erroneous (%)", "acc. correct (%)", "F1 (%)", "samples"]
        groups = [(k, m) for k, m in pb.items() if isinstance(m, dict)]
        if pb.get("average_f1_undefined"):
            groups.append(("average", {"undefined": pb["average_f1_undefined"]}))
        body.append("<h2>ProcessBench</h2>" + table(header, rows) + _why_na(groups))
    auto = " (tuned on a held-out part)" if results.get("threshold_auto") else ""
    body.append(f'<p class="meta">threshold {thr:.4g}{auto}; config {_e(results.get("config", {}))}</p>')
    body.append("<h2>Examples (steps coloured by score)</h2>")
    for i in _pick_examples(samples, kind, texts=texts):
        s = samples[i]
        title = f"{Path(s['file']).name} #{s['index']} · {s['source']}"
        if kind == "visualprocessbench":
            gold = s["step_labels"]
        else:
            gold = [
                1 if k < s["label"] or s["label"] == -1 else (-1 if k == s["label"] else None)
                for k in range(len(texts[i][1]))
            ]
        question, steps, images = (*texts[i], None)[:3]
        note = f"· predicted {s['pred']}"
        body.append(solution_html(title, question, steps, s["step_scores"], gold, note, images))
    _atomic(path, page(f"Critic benchmark: {kind}", body))
