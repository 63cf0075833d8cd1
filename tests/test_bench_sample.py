"""`bench --sample N`: a seeded stratified sample (every subset, source and class in it), against `--limit N` (the
first N records), and the table and results.json saying which metric is undefined and why."""

import collections
import json

import numpy as np
import pytest
from conftest import shared_data

from visualprm import bench
from visualprm.cli import main
from visualprm.sampling import allocate, stratified_sample


def test_allocate_exact_counts():
    rng = np.random.default_rng(0)
    assert allocate([10, 30, 60], 10, rng) == [1, 3, 6]  # proportional when every group gets >= 1
    assert allocate([1, 1, 98], 10, rng) == [1, 1, 8]  # one each first, the rest by size
    assert allocate([5, 0, 5], 100, rng) == [5, 0, 5]  # everything when n >= the total
    assert allocate([3, 50, 7], 2, rng) == [0, 1, 1]  # fewer than the groups: the biggest groups
    assert allocate([2, 2, 2], 4, rng) in ([2, 1, 1], [1, 2, 1], [1, 1, 2])  # the tie goes to one of them
    for sizes, n in (([4, 9, 1, 30], 17), ([1] * 7, 5), ([100, 3], 50)):
        got = allocate(sizes, n, np.random.default_rng(1))
        assert sum(got) == n and all(0 <= g <= s for g, s in zip(got, sizes))


def test_stratified_sample_is_seeded_and_keeps_every_group():
    groups = ["err"] * 90 + ["ok"] * 10  # the second class only at the end, as ProcessBench files are
    a = stratified_sample(groups, 20, seed=0)
    assert a == stratified_sample(groups, 20, seed=0) and a == sorted(a) and len(set(a)) == 20
    assert collections.Counter(groups[i] for i in a) == {"err": 18, "ok": 2}
    assert a != stratified_sample(groups, 20, seed=1)


def _pb_scores(tmp_path, files):
    """Step scores whose predicted first error is exactly the gold label, for every record of the files."""
    path = tmp_path / "perfect.jsonl"
    with open(path, "w") as f:
        for p in files:
            for r in json.loads(p.read_text()):
                sc = [1.0] * len(r["steps"])
                if r["label"] != -1:
                    sc[r["label"]] = 0.0
                f.write(json.dumps({"step_scores": sc}) + "\n")
    return path


@pytest.mark.slow  # ~8 s: three runs over the 3,400 ProcessBench records
def test_processbench_sample_has_both_classes_and_limit_says_why_not(tmp_path, capsys):
    pb = shared_data("processbench")
    files = sorted(pb.glob("*.json"))
    scores = _pb_scores(tmp_path, files)
    base = ["bench", "--bench", str(pb), "--scores", str(scores), "--bootstrap", "0"]

    assert main(base + ["--limit", "20", "--out", str(tmp_path / "lim")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "lim" / "results.json").read_text())["processbench"]
    for f in files:  # the first 20 records of every file are erroneous ones
        assert res[f.stem]["n_correct"] == 0 and res[f.stem]["acc_correct"] is None and res[f.stem]["f1"] is None
        assert res[f.stem]["undefined"].startswith("no correct samples in the selection")
        assert f"n/a  {f.stem}: no correct samples in the selection" in printed
    assert res["average_f1"] is None and "no subset has both" in res["average_f1_undefined"]
    assert printed.splitlines()[0] == "80 records, the first 20 of each file (80 erroneous, 0 correct)"
    assert " n/a" in printed.splitlines()[2]  # the table row itself

    assert main(base + ["--sample", "120", "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    res = results["processbench"]
    assert results["counts"]["records"] == 120 and results["config"]["sample"] == 120
    assert results["counts"]["available_records"] == 3400 and "n/a" not in printed
    for f in files:  # both classes in every subset; perfect scores, so F1 = 1 exactly when the lines line up
        assert res[f.stem]["n_error"] > 0 and res[f.stem]["n_correct"] > 0 and res[f.stem]["f1"] == 1.0
    assert res["average_f1"] == 1.0
    samples = [json.loads(x) for x in (tmp_path / "s" / "samples.jsonl").read_text().splitlines()]
    strata = set()
    for f in files:
        for r in json.loads(f.read_text()):
            strata.add((f.stem, r["generator"], r["label"] == -1))
    got = {(s["subset"], s["source"], s["label"] == -1) for s in samples}
    assert got == strata  # 76 groups (subset x generator x class): every one in a sample of 120


def test_sample_and_limit_together_are_refused(tmp_path, capsys):
    f = tmp_path / "b.jsonl"
    f.write_text(json.dumps({"problem": "q", "steps": ["a", "b"], "label": 1}) + "\n")
    code = main(["bench", "--bench", str(f), "--scores", str(f), "--sample", "1", "--limit", "1", "--out", "o"])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_vpb_group_without_wrong_steps_is_na():
    items = [
        {"step_labels": [1, 1], "source": "A", "policy": "p"},
        {"step_labels": [1, -1], "source": "B", "policy": "p"},
    ]
    m = bench.vpb_metrics(items, [[0.9, 0.2], [0.9, 0.1]], 0.5)
    a = m["by_source"]["A"]  # TP1 FN1, no gold wrong step: F1-incorrect would be a misleading 0
    assert (a["f1_correct"], a["f1_incorrect"], a["macro_f1"]) == (pytest.approx(2 / 3), None, None)
    assert m["by_source"]["B"]["macro_f1"] == 1.0 and m["overall"]["macro_f1_weighted"] == 1.0
    results = {"format": bench.VPB, "threshold": 0.5, "config": {"bootstrap": 0}, **m}
    text = bench.format_table(results)
    assert "n/a  source A: no wrong steps in this group" in text
    row = next(x for x in text.splitlines() if x.startswith("source A"))
    assert row.split()[2:5] == ["n/a", "66.7", "n/a"]
