"""HTML reports: self-contained pages with the embedded Best-of-N curve; rendered in headless Chromium."""

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_bon import _random_records

from visualprm import bon, report

MAIN_RGB = tuple(int(report.MAIN_COLOUR[i : i + 2], 16) for i in (1, 3, 5))


def _main_colour_pixels(im: Image.Image, tol: int = 40) -> int:
    im = im.convert("RGB")
    return sum(
        1 for r, g, b in im.getdata() if abs(r - MAIN_RGB[0]) + abs(g - MAIN_RGB[1]) + abs(b - MAIN_RGB[2]) < tol
    )


def _bon_page(tmp_path) -> Path:
    ev = bon.evaluate_bon(_random_records(1), seed=0, n_subsets=4)
    ev.pop("per_problem")
    results = {**ev, "config": {"prm": "fake"}}
    shown = [{"title": "p0: picked candidate 1", "question": "What is <b>2+2</b>?", "steps": ["a", "b <script>"],
              "scores": [0.9, 0.1], "correct": True}]  # fmt: skip
    path = tmp_path / "report.html"
    report.bon_report(results, shown, path)
    return path


def test_bon_report_is_self_contained_with_the_curve(tmp_path):
    text = _bon_page(tmp_path).read_text()
    assert "<script" not in text.replace("&lt;script&gt;", "")  # user text is escaped, the page has no scripts
    assert "&lt;b&gt;2+2&lt;/b&gt;" in text
    assert not re.search(r"""(src|href)=["']https?://""", text)
    m = re.search(r'src="data:image/png;base64,([^"]+)"', text)
    png = base64.b64decode(m.group(1))
    im = Image.open(io.BytesIO(png))
    assert im.size[0] > 300 and _main_colour_pixels(im) > 200  # the thick PRM curve is drawn
    assert "hsl(108,70%,86%)" in text and "hsl(12,70%,86%)" in text  # steps coloured by score 0.9 and 0.1


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    page = _bon_page(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", f"--screenshot={shot}",
           page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "Chromium wrote no screenshot"
    im = Image.open(shot)
    assert im.size == (1200, 900)
    # the curve sits at the top of the page: its red line must be on screen, in the plot's area
    top = im.convert("RGB").crop((0, 0, 800, 600))
    assert _main_colour_pixels(top) > 200
    shutil.copy(shot, tmp_path / "kept.png")


def test_bench_report_for_both_formats(tmp_path):
    samples_v = [{"file": "v.jsonl", "index": 0, "source": "S", "step_scores": [0.9, 0.2], "step_labels": [1, -1],
                  "pred": [1, -1]}]  # fmt: skip
    overall = {"macro_f1": 1.0, "f1_correct": 1.0, "f1_incorrect": 1.0, "n_steps": 2, "n_records": 1}
    res_v = {"format": "visualprocessbench", "threshold": 0.5, "by_source": {}, "by_policy": {},
             "overall": {**overall, "macro_f1_weighted": 1.0}}  # fmt: skip
    report.bench_report(res_v, samples_v, [("q?", ["s1", "s2"])], tmp_path / "v.html")
    assert "gold ✗" in (tmp_path / "v.html").read_text()
    samples_p = [{"file": "gsm8k.json", "index": 0, "source": "g", "step_scores": [0.9, 0.2, 0.1], "label": 1,
                  "pred": 1}]  # fmt: skip
    res_p = {"format": "processbench", "threshold": 0.5, "processbench": {
        "gsm8k": {"f1": None, "acc_error": 1.0, "acc_correct": None, "n": 1}, "average_f1": None}}  # fmt: skip
    report.bench_report(res_p, samples_p, [("q?", ["s1", "s2", "s3"])], tmp_path / "p.html")
    text = (tmp_path / "p.html").read_text()
    assert text.count("gold ✓") == 1 and text.count("gold ✗") == 1  # steps after the first error: unknown
