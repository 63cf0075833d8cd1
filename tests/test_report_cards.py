"""What a person reads in the reports: image thumbnails on the solution cards, examples of different questions,
n/a (with the reason) for an undefined metric, and the demo page (methods explained, training curve, targets
with pass/fail marks, links to its sub-reports)."""

import base64
import html
import io
import json
import os
import re
import subprocess

import pytest
from PIL import Image

from visualprm import bench, report
from visualprm.demo_report import METHODS, target_rows, write_demo_report


def _images(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    ]


def _rows(html_text: str) -> list[list[str]]:
    """The cells of every table row of a page."""
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", html_text)]
    return [r for r in rows if r]  # (header rows have no td)


def _vpb_bench(tmp_path):
    """Six records: three solutions of question A (two with a wrong step), three of B, C, D (correct); a red
    image for A and a blue one for the others."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (300, 200), (220, 0, 0)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (120, 120), (0, 0, 220)).save(tmp_path / "img" / "b.png")
    rows = [("A", [1, -1]), ("A", [1, -1]), ("A", [1, 1]), ("B", [1, 1]), ("C", [1, 1]), ("D", [1, 1])]
    path = tmp_path / "vpb.jsonl"
    with open(path, "w") as f:
        for q, labels in rows:
            rec = {"image": ["img/a.png" if q == "A" else "img/b.png"], "question": f"question {q}", "answer": "1",
                   "response": {"steps": ["s1", "s2"], "process_correctness": labels}, "data_source": q}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"step_scores": [0.9, 0.3]}) + "\n" for _ in rows))
    return path, scores


def test_bench_report_cards_show_thumbnails_of_distinct_questions_and_na(tmp_path, capsys):
    path, scores = _vpb_bench(tmp_path)
    out = tmp_path / "out"
    assert bench.run_bench([str(path)], str(out), scores=str(scores), bootstrap=0) == 0
    text = (out / "report.html").read_text()
    cards = text.split('<div class="sol">')[1:]
    assert len(cards) == 6  # six distinct records: every question once before any second solution of one
    assert [re.search(r"question ([A-D])", c).group(1) for c in cards] == ["A", "B", "C", "D", "A", "A"]
    assert len({re.search(r"vpb.jsonl #(\d)", c).group(1) for c in cards}) == 6
    thumbs = [im for c in cards for im in _images(c)]
    assert len(thumbs) == 6 and max(thumbs[0].size) <= 224 and thumbs[0].getpixel((5, 5)) == (220, 0, 0)
    assert thumbs[1].getpixel((5, 5)) == (0, 0, 220)
    # source B has no wrong step: its F1-incorrect and macro-F1 are n/a, and the page says why
    row = next(r for r in _rows(text) if r[0] == "source: B")
    assert row[1:4] == ["n/a", "66.7", "n/a"]  # TP1 FN1, no gold wrong step
    assert "n/a in <b>source: B</b>: no wrong steps in this group" in text
    assert "F1-incorrect 0.0" not in capsys.readouterr().out


def test_pick_examples_repeats_a_question_only_when_it_must():
    samples = [{"step_labels": [1, -1]}, {"step_labels": [1, -1]}, {"step_labels": [1, 1]}]
    texts = [("q", []), ("q", []), ("r", [])]
    assert report._pick_examples(samples, "visualprocessbench", k=2, texts=texts) == [0, 2]
    assert report._pick_examples(samples, "visualprocessbench", k=3, texts=texts) == [0, 2, 1]


def test_bon_report_card_shows_the_image(tmp_path):
    Image.new("RGB", (64, 64), (0, 160, 0)).save(tmp_path / "g.png")
    shown = [{"title": "p0", "question": "q", "steps": ["a"], "scores": [0.5], "correct": True,
              "images": report.report_images(["g.png", "https://x/y.png"], tmp_path)}]  # fmt: skip
    assert shown[0]["images"] == [str(tmp_path / "g.png")]  # URLs are not fetched for a report
    results = {"curves": {"n": [1, 2], "prm_mean": [0.5, 0.6], "subsets": 1}, "aggregate": "mean",
               "accuracy": {"pass@1": 0.5, "prm_mean": 0.6}, "methods": ["pass@1", "prm_mean"], "by_source": {},
               "counts": {"candidates_min": 2, "problems": 1}}  # fmt: skip
    report.bon_report(results, shown, tmp_path / "r.html")
    card = (tmp_path / "r.html").read_text().split('<div class="sol">')[1]
    (im,) = _images(card)
    assert im.size == (64, 64) and im.getpixel((1, 1)) == (0, 160, 0)
    missing = report.solution_html("t", "q", ["a"], [0.5], images=[str(tmp_path / "nope.png")])
    assert "nothumb" in missing and "nope.png" in missing  # a missing image is said, not a crash


def _demo_results(prm_mean=0.6, majority=0.5, pass_at_1=0.4):
    bon = {"n": 8, "pass_at_1": pass_at_1, "majority": majority, "prm_mean": prm_mean, "prm_min": 0.55,
           "prm_max": 0.5, "oracle": 0.9, "random": 0.45}  # fmt: skip
    steps = {"macro_f1": 0.72, "macro_f1_perception": 0.73, "macro_f1_reasoning": 0.45}
    results = {"bon": bon, "steps": steps, "mc": {"label_agreement": 0.9, "rollouts": 10}, "seconds": 3.0}
    details = {"text_only_reference": {"macro_f1": 0.47, "macro_f1_perception": 0.48, "macro_f1_reasoning": 0.2},
               "stage_seconds": {"train": 2.0}, "commands": {"train": ["visualprm train --data x"]},
               "config": {"quick": True}, "train": {}}  # fmt: skip
    return results, details


def test_demo_targets_pass_and_fail_marks():
    results, details = _demo_results()
    rows = target_rows(results, details)
    marks = [r[2] for r in rows]
    # +10 over majority (met), +20 over pass@1 (met), 60 >= 55 > 50 (met), 0.72 < 0.80, 0.73 >= 0.70, +0.25
    assert marks == ["✓ met", "✓ met", "✓ met", "✗ not met", "✓ met", "✓ met"]
    assert rows[0][1] == "60.0 vs 50.0: +10.0 points"
    results["bon"]["prm_min"] = 0.5  # min == max: the order fails
    assert target_rows(results, details)[2][2] == "✗ not met"
    results, details = _demo_results(prm_mean=0.54, majority=0.5)
    assert target_rows(results, details)[0][2] == "✗ not met"  # +4 < 5


def test_demo_report_page(tmp_path):
    results, details = _demo_results()
    (tmp_path / "prm").mkdir()
    log = [{"loss": 0.7 - 0.01 * i, "label_acc": 0.5 + 0.01 * i, "step": 10 * i} for i in range(1, 8)]
    (tmp_path / "prm" / "train_log.json").write_text(json.dumps(log + [{"train_runtime": 1.0, "step": 70}]))
    (tmp_path / "bon").mkdir()
    (tmp_path / "bon" / "report.html").write_text("x")
    methods = ["pass@1", "majority_vote", "random", "prm_mean", "prm_min", "prm_max", "prm_last", "prm_prod",
               "prm_weighted_vote", "oracle"]  # fmt: skip
    bon_res = {"curves": {"n": [1, 8], "prm_mean": [0.4, 0.6], "subsets": 2},
               "accuracy": {m: 0.5 for m in methods}, "methods": methods}  # fmt: skip
    write_demo_report(tmp_path, results, details, bon_res)
    text = (tmp_path / "report.html").read_text()
    rows = _rows(text)
    for m in methods:
        assert [m, "50.0", html.escape(METHODS[m])] in rows
    assert text.count("✓ met") == 5 and text.count("✗ not met") == 1
    assert '<a href="bon/report.html">' in text
    assert "bench/report.html" in text and '<a href="bench/report.html">' not in text  # not written: no dead link
    pngs = _images(text)
    assert len(pngs) == 2  # the Best-of-N curve and the training curve
    assert "Training (from prm/train_log.json)" not in text  # (the title is inside the PNG)


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
PROBE = (
    '<script>document.body.setAttribute("data-sw", document.documentElement.scrollWidth + "," + '
    "document.documentElement.clientWidth)</script></body>"
)


def _page_width(tmp_path, page_html: str, width: int = 640) -> tuple[int, int]:
    """(scroll width, window width) of the page laid out by headless Chromium in a `width`-pixel window."""
    probe = tmp_path / "probe.html"
    probe.write_text(page_html.replace("</body>", PROBE))
    flags = "--headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking"
    flags += f" --disable-dev-shm-usage --window-size={width},900 --dump-dom"
    cmd = [CHROMIUM, *flags.split(), f"--user-data-dir={tmp_path / 'profile'}", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    scroll, client = re.search(r'data-sw="(\d+),(\d+)"', dom).groups()
    return int(scroll), int(client)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_pages_have_no_horizontal_overflow_in_chromium(tmp_path):
    results, details = _demo_results()
    details["commands"] = {"train": ["visualprm train --data " + "/a/very/long/path" * 30 + " --out x"]}
    details["config"] = {"base_model": "/b" * 200}
    methods = list(METHODS)
    bon_res = {"curves": {"n": [1, 8], "prm_mean": [0.4, 0.6], "subsets": 2},
               "accuracy": {m: 0.5 for m in methods}, "methods": methods}  # fmt: skip
    write_demo_report(tmp_path, results, details, bon_res)
    scroll, client = _page_width(tmp_path, (tmp_path / "report.html").read_text())
    assert scroll <= client, f"the demo page is {scroll} px wide in a {client} px window"
    path, scores = _vpb_bench(tmp_path)
    assert bench.run_bench([str(path)], str(tmp_path / "b"), scores=str(scores), bootstrap=0) == 0
    scroll, client = _page_width(tmp_path, (tmp_path / "b" / "report.html").read_text())
    assert scroll <= client, f"the bench page is {scroll} px wide in a {client} px window"
    wide = report.page("t", ['<div style="width:2000px">x</div>'])  # the probe sees an overflow when there is one
    assert _page_width(tmp_path, wide)[0] > 1500
