"""The demo's page (OUT/report.html): what was measured against the targets (pass/fail), what each Best-of-N
method means, the training curve (OUT/prm/train_log.json), step macro-F1 with and without the image, and links to
the Best-of-N and benchmark pages of the same run.

It lays out what demo.py computed and what the run wrote; it computes no metric itself (the targets are the
comparisons below, applied to results.json).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from .report import _atomic, _pct, bon_curve_png, img, page, table

# What each Best-of-N method picks (bon.py), in words for the table.
METHODS = {
    "pass@1": "the first sampled candidate, no selection: the policy's own accuracy",
    "majority_vote": "the most frequent final answer among the N candidates (self-consistency)",
    "random": "a candidate drawn uniformly at random (expected accuracy)",
    "prm_mean": "the candidate with the highest mean step score (the paper's choice)",
    "prm_min": "the candidate whose worst step scores highest",
    "prm_max": "the candidate whose best step scores highest",
    "prm_last": "the candidate whose last step scores highest",
    "prm_prod": "the candidate with the highest product of step scores",
    "prm_weighted_vote": "the final answer with the largest sum of PRM (mean) scores over the candidates giving it",
    "orm": "the candidate an outcome reward model scores highest (one score per whole solution)",
    "oracle": "right if any of the N candidates is right: the ceiling of any selection",
}


def _gap(a: float, b: float, need: float) -> tuple[str, bool]:
    return f"{100 * a:.1f} vs {100 * b:.1f}: {100 * (a - b):+.1f} points", a - b >= need - 1e-9


def _order(b: dict) -> tuple[str, bool]:
    mean, lo, hi = b["prm_mean"], b["prm_min"], b["prm_max"]
    return f"mean {100 * mean:.1f}, min {100 * lo:.1f}, max {100 * hi:.1f}", mean >= lo > hi


def _at_least(x: float, need: float) -> tuple[str, bool]:
    return f"{x:.3f}", x >= need


# The demo's targets, each (what, measured text and whether it is met) from results.json and details.json.
TARGETS = (
    (
        "Best-of-8: PRM (mean) >= majority vote + 5 points",
        lambda r, d: _gap(r["bon"]["prm_mean"], r["bon"]["majority"], 0.05),
    ),
    (
        "Best-of-8: PRM (mean) >= pass@1 + 15 points",
        lambda r, d: _gap(r["bon"]["prm_mean"], r["bon"]["pass_at_1"], 0.15),
    ),
    ("the paper's order of aggregations: PRM mean >= min > max", lambda r, d: _order(r["bon"])),
    ("step macro-F1 >= 0.80", lambda r, d: _at_least(r["steps"]["macro_f1"], 0.80)),
    ("step macro-F1 on perception errors >= 0.70", lambda r, d: _at_least(r["steps"]["macro_f1_perception"], 0.70)),
    (
        "the PRM looks at the image: perception macro-F1 >= the text-only reference + 0.10",
        lambda r, d: (
            f"{r['steps']['macro_f1_perception']:.3f} vs {d['text_only_reference']['macro_f1_perception']:.3f}",
            r["steps"]["macro_f1_perception"] >= d["text_only_reference"]["macro_f1_perception"] + 0.10 - 1e-9,
        ),
    ),
)


def target_rows(results: dict, details: dict) -> list[list[str]]:
    """[target, measured, ✓ met / ✗ not met] per target."""
    rows = []
    for what, measure in TARGETS:
        shown, ok = measure(results, details)
        rows.append([what, shown, "✓ met" if ok else "✗ not met"])
    return rows


def training_curve_png(log: list[dict]) -> bytes | None:
    """Loss and label accuracy against the optimizer step (train_log.json: the Trainer's log entries)."""
    pts = [e for e in log if "loss" in e and "step" in e]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _png_bytes

    fig, ax = plt.subplots(figsize=(7, 3.4))
    steps = [e["step"] for e in pts]
    ax.plot(steps, [e["loss"] for e in pts], "-", color="#d62728", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    acc = [(e["step"], e["label_acc"]) for e in pts if "label_acc" in e]
    if acc:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in acc], [100 * a for _, a in acc], "-", color="#1f77b4", label="label accuracy")
        ax2.set_ylabel("label accuracy (%)")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [x.get_label() for x in lines], fontsize=8, loc="center right")
    ax.set_title("Training (from prm/train_log.json)")
    data = _png_bytes(fig)
    plt.close(fig)
    return data


# The figures of train's summary (details.json "train") shown under the curve.
TRAIN_FIGURES = {
    "examples_train": "training conversations",
    "labels_train": "supervised labels",
    "global_step": "optimizer steps",
    "train_loss": "mean training loss",
    "train_seconds": "training seconds",
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.4f}"
    return str(v)


def _targets_table(rows: list[list[str]]) -> str:
    """The targets with a green ✓ or a red ✗."""
    body = "".join(
        f'<tr><td class="text">{escape(what)}</td><td>{escape(shown)}</td>'
        f'<td class="text {"ok" if mark.startswith("✓") else "bad"}">{escape(mark)}</td></tr>'
        for what, shown, mark in rows
    )
    head = '<tr><th class="text">target</th><th>measured</th><th class="text">result</th></tr>'
    return f'<div class="wide"><table>{head}{body}</table></div>'


def _link(d: Path, rel: str, what: str) -> str:
    if not (d / rel).is_file():
        return f"<li>{escape(what)}: not written ({escape(rel)})</li>"
    return f'<li><a href="{escape(rel)}">{escape(what)}</a> <span class="meta">({escape(rel)})</span></li>'


def write_demo_report(d: Path, results: dict, details: dict, bon_res: dict) -> None:
    """Write d/report.html from the run's results (demo.run_demo calls it last)."""
    d = Path(d)
    b, s, t = results["bon"], results["steps"], details["text_only_reference"]
    body = [
        "<p>The whole VisualPRM method in miniature: synthetic problems whose answer needs the image, Monte-Carlo "
        "step labels from a scripted policy, a PRM fine-tuned from the shipped base model, then Best-of-8 and a "
        "miniature VisualProcessBench on held-out problems.</p>",
        "<h2>Pages of this run</h2><ul>",
        _link(d, "bon/report.html", "Best-of-N: curve, accuracy table, picked solutions"),
        _link(d, "bench/report.html", "step critic (miniature VisualProcessBench), with the images"),
        _link(d, "bench_blank/report.html", "the same with blank images: the text-only reference"),
        "</ul>",
        "<h2>Targets</h2>",
        _targets_table(target_rows(results, details)),
    ]
    png = bon_curve_png(bon_res["curves"], None, "prm_mean", bon_res["accuracy"]["pass@1"])
    body.append(f"<h2>Best-of-{b['n']} on held-out problems</h2>" + img(png, "Best-of-N curve"))
    rows = [[m, _pct(bon_res["accuracy"][m]), METHODS.get(m, "")] for m in bon_res["methods"]]
    body.append(table(["method", f"accuracy at N={b['n']} (%)", "picks"], rows))
    body.append("<h2>Step macro-F1 against the synthetic ground truth</h2>")
    rows = [
        ["overall", f"{s['macro_f1']:.3f}", f"{t['macro_f1']:.3f}"],
        ["perception errors", f"{s['macro_f1_perception']:.3f}", f"{t['macro_f1_perception']:.3f}"],
        ["reasoning errors", f"{s['macro_f1_reasoning']:.3f}", f"{t['macro_f1_reasoning']:.3f}"],
    ]
    body.append(table(["steps", "PRM", "text-only reference (blank image)"], rows))
    body.append(
        '<p class="meta">VisualProcessBench\'s rule: a step is predicted correct when its score is >= 0.5; F1 with '
        "each class as the positive one, pooled over steps; macro-F1 is their mean. Perception errors: the correct "
        "solutions plus those whose first error misreads the image; reasoning errors likewise.</p>"
    )
    log_path = d / "prm" / "train_log.json"
    curve = training_curve_png(json.loads(log_path.read_text())) if log_path.is_file() else None
    body.append("<h2>Training</h2>" + (img(curve, "training curve") if curve else "<p>no train_log.json</p>"))
    summary = details.get("train") or {}
    shown = [(k, summary[k]) for k in TRAIN_FIGURES if summary.get(k) is not None]
    if shown:
        body.append(table(["training", ""], [[TRAIN_FIGURES[k], _fmt(v)] for k, v in shown]))
    m = results["mc"]
    body.append(
        f"<h2>Monte-Carlo labels</h2><p>agreement of the value labels with the ground truth: "
        f"{100 * m['label_agreement']:.1f}%; rollouts spent: {m['rollouts']}</p>"
    )
    rows = [[k, f"{v:.1f}"] for k, v in details["stage_seconds"].items()] + [["total", f"{results['seconds']:.1f}"]]
    body.append("<h2>Stages</h2>" + table(["stage", "seconds"], rows))
    body.append("<h2>Re-run each stage by hand</h2><pre>")
    for cmds in details["commands"].values():
        body.append("".join(escape(c) + "\n" for c in cmds))
    body.append("</pre>")
    body.append(f'<p class="meta">config {escape(json.dumps(details["config"]))}</p>')
    _atomic(d / "report.html", page("visualprm demo", body))
