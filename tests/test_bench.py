"""Critic-benchmark metrics (REFERENCE.md §7, §8) against hand-computed values, and the `bench` command."""

import json
import random
from fractions import Fraction as F

import pytest
from conftest import shared_data

from visualprm import bench
from visualprm.cli import main

# Fabricated VisualProcessBench records. Hand count at threshold 0.5 (positive class = correct, neutral left out):
#   r0 MathVision/GPT-4o   labels [1, 1,-1, 0] scores [.9, .5, .2, .1] -> TP TP(tie) TN (neutral)
#   r1 MathVision/Claude   labels [1,-1,-1]    scores [.4, .6, .5]     -> FN FP FP(tie)
#   r2 DynaMath/GPT-4o     labels [0, 0]       scores [.3, .8]         -> nothing (a source with no scorable step)
#   r3 (no source)/GPT-4o  labels [1, 1, 1]    scores [1, 1, 1]        -> TP TP TP (all predicted correct)
#   r4 WeMath/Claude       labels [-1, 1]      scores [0, 0]           -> TN FN (all predicted wrong)
RECORDS = [
    ("MathVision", "GPT-4o", [1, 1, -1, 0], [0.9, 0.5, 0.2, 0.1]),
    ("MathVision", "Claude", [1, -1, -1], [0.4, 0.6, 0.5]),
    ("DynaMath", "GPT-4o", [0, 0], [0.3, 0.8]),
    ("", "GPT-4o", [1, 1, 1], [1.0, 1.0, 1.0]),
    ("WeMath", "Claude", [-1, 1], [0.0, 0.0]),
]
# overall TP=5 FN=2 FP=2 TN=2: F1(correct) = 10/14, F1(incorrect) = 4/8
EXPECTED = {
    "overall": {"f1_correct": F(10, 14), "f1_incorrect": F(1, 2), "macro_f1": F(17, 28)},
    "by_source": {
        "MathVision": F(17, 35),  # TP2 FN1 FP2 TN1: (4/7 + 2/5) / 2
        "unknown": None,  # TP3 only: no wrong step, so no F1(incorrect) and no macro-F1 (not a misleading 1/2)
        "WeMath": F(1, 3),  # TN1 FN1: (0 + 2/3) / 2
    },
    "by_policy": {"GPT-4o": F(1), "Claude": F(1, 6)},  # Claude: TP0 FN2 FP2 TN1 -> (0 + 2/6) / 2
    # weighted by records over sources with a macro-F1 (both classes): (2*17/35 + 1/3) / 3
    "weighted": F(2, 3) * F(17, 35) + F(1, 3) * F(1, 3),
}


def _write_vpb(tmp_path, records=RECORDS):
    bench_path, scores_path = tmp_path / "vpb.jsonl", tmp_path / "scores.jsonl"
    with open(bench_path, "w") as f, open(scores_path, "w") as g:
        for i, (src, pol, labels, scores) in enumerate(records):
            rec = {
                "image": [f"images/{i}.png"],
                "question": f"question {i}",
                "answer": "1",
                "response": {"steps": [f"step {k}\n\nwith a blank line" for k in range(len(labels))],
                             "process_correctness": labels},
                "policy_model": pol,
                "data_source": src,
            }  # fmt: skip
            f.write(json.dumps(rec) + "\n")
            g.write(json.dumps({"step_scores": scores}) + "\n")
    return bench_path, scores_path


def test_vpb_metric_hand_computed(tmp_path):
    bench_path, scores_path = _write_vpb(tmp_path)
    items, n = bench.load_bench([str(bench_path)])
    assert n == 5 and [len(it["steps"]) for it in items] == [4, 3, 2, 3, 2]  # given steps, never re-split
    scores = bench.scores_from_file(str(scores_path), items, n)
    m = bench.vpb_metrics(items, scores, 0.5)
    o = m["overall"]
    assert (o["tp"], o["fn"], o["fp"], o["tn"], o["n_neutral"]) == (5, 2, 2, 2, 3)
    for k, v in EXPECTED["overall"].items():
        assert o[k] == pytest.approx(float(v), abs=1e-12)
    for src, v in EXPECTED["by_source"].items():
        assert m["by_source"][src]["macro_f1"] == (v if v is None else pytest.approx(float(v), abs=1e-12))
    unknown = m["by_source"]["unknown"]
    assert (
        unknown["f1_correct"] == 1.0 and unknown["f1_incorrect"] is None and "no wrong steps" in unknown["undefined"]
    )
    assert m["by_source"]["DynaMath"]["macro_f1"] is None and m["by_source"]["DynaMath"]["n_steps"] == 0
    assert "no scorable steps" in m["by_source"]["DynaMath"]["undefined"]
    for pol, v in EXPECTED["by_policy"].items():
        assert m["by_policy"][pol]["macro_f1"] == pytest.approx(float(v), abs=1e-12)
    assert o["macro_f1_weighted"] == pytest.approx(float(EXPECTED["weighted"]), abs=1e-12)
    assert o["macro_f1_source_mean"] == pytest.approx(float((F(17, 35) + F(1, 3)) / 2), abs=1e-12)


def _independent_macro_f1(labels, scores, thr):
    """A second, plain implementation of REFERENCE.md §7 (per-class precision and recall)."""
    gold = [y == 1 for ls in labels for y in ls if y != 0]
    pred = [s >= thr for ls, ss in zip(labels, scores) for y, s in zip(ls, ss) if y != 0]
    out = []
    for cls in (True, False):
        hit = sum(g == cls and p == cls for g, p in zip(gold, pred))
        n_pred, n_gold = sum(p == cls for p in pred), sum(g == cls for g in gold)
        prec = hit / n_pred if n_pred else 0.0
        rec = hit / n_gold if n_gold else 0.0
        out.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(out) / 2


def test_vpb_metric_equals_independent_implementation_on_random_data():
    rng = random.Random(7)
    for _ in range(20):
        items, scores = [], []
        for _ in range(rng.randint(1, 30)):
            n = rng.randint(1, 6)
            items.append({"step_labels": [rng.choice([1, 1, -1, 0]) for _ in range(n)], "source": "s", "policy": "p"})
            scores.append([rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(n)])
        thr = rng.choice([0.25, 0.5, 0.75])
        got = bench.vpb_metrics(items, scores, thr)["overall"]["macro_f1"]
        want = _independent_macro_f1([it["step_labels"] for it in items], scores, thr)
        if got is None:
            assert all(y == 0 for it in items for y in it["step_labels"])
        else:
            assert got == pytest.approx(want, abs=1e-12)


def test_bench_cli_scores_file_writes_contract_keys(tmp_path, capsys):
    bench_path, scores_path = _write_vpb(tmp_path)
    out = tmp_path / "out"
    assert main(["bench", "--bench", str(bench_path), "--scores", str(scores_path), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["macro_f1"] == pytest.approx(17 / 28)
    assert res["overall"]["f1_correct"] == pytest.approx(10 / 14)
    assert res["overall"]["f1_incorrect"] == pytest.approx(0.5)
    assert res["overall"]["macro_f1_weighted"] == pytest.approx(float(EXPECTED["weighted"]))
    assert res["by_source"]["MathVision"]["macro_f1"] == pytest.approx(17 / 35)
    assert res["by_policy"]["Claude"]["macro_f1"] == pytest.approx(1 / 6)
    assert res["threshold"] == 0.5
    lo, hi = res["overall"]["ci95"]["macro_f1"]
    assert 0 <= lo <= hi <= 1
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and samples[1]["pred"] == [-1, 1, 1]  # 0.5 ties count as correct
    printed = capsys.readouterr().out
    assert "60.7" in printed  # 17/28 as a percentage
    assert (out / "report.html").exists()


def test_bench_scores_file_errors(tmp_path, capsys):
    bench_path, scores_path = _write_vpb(tmp_path)
    lines = scores_path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:3] + ['{"step_scores": [1, 2]}'] + lines[4:]) + "\n")
    out = tmp_path / "o"
    assert main(["bench", "--bench", str(bench_path), "--scores", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.jsonl:4" in err[0] and "step_scores" in err[0]
    bad.write_text("\n".join(lines[:2]) + "\n")
    assert main(["bench", "--bench", str(bench_path), "--scores", str(bad), "--out", str(out)]) == 2
    assert "2 lines" in capsys.readouterr().err
    assert not out.exists()


def test_bench_limit_with_full_scores_file(tmp_path):
    bench_path, scores_path = _write_vpb(tmp_path)
    out = tmp_path / "o"
    assert main(["bench", "--bench", str(bench_path), "--scores", str(scores_path), "--out", str(out),
                 "--limit", "2", "--bootstrap", "0"]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert res["overall"]["macro_f1"] == pytest.approx(17 / 35)  # r0 + r1 only = MathVision


def test_threshold_auto_tunes_on_held_out_part(tmp_path):
    # gold-correct steps score 0.8, gold-incorrect 0.7: at 0.5 everything is "correct"; any t in (0.7, 0.8] is perfect
    recs = [("S", "P", [1, -1, 1], [0.8, 0.7, 0.8]) for _ in range(20)]
    bench_path, scores_path = _write_vpb(tmp_path, recs)
    out = tmp_path / "o"
    assert main(["bench", "--bench", str(bench_path), "--scores", str(scores_path), "--out", str(out),
                 "--threshold", "auto"]) == 0  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert 0.7 < res["threshold"] <= 0.8
    assert res["threshold_auto"]["held_out_records"] == 10 and res["counts"]["evaluated_records"] == 10
    assert res["overall"]["macro_f1"] == 1.0
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert sum(s["held_out"] for s in samples) == 10


def test_tune_pb_is_exact():
    # one subset; erroneous sample label 1: matches when scores[1] < t <= scores[0]; correct sample: t <= min
    items = [{"subset": "a", "label": 1}, {"subset": "a", "label": -1}]
    scores = [[0.9, 0.3, 0.1], [0.6, 0.8]]
    t, f = bench.tune_pb(items, scores)
    assert 0.3 < t <= 0.6 and f == 1.0


# ---------------------------------------------------------------------------------------------------------------
# ProcessBench on the real published files


def _pb_files():
    d = shared_data("processbench")
    return [d / f"{s}.json" for s in ("gsm8k", "math", "olympiadbench", "omnimath")]


def _official(records, preds):
    """ProcessBench's formula, written out again: acc on erroneous, acc on correct, harmonic mean."""
    err = [p == r["label"] for r, p in zip(records, preds) if r["label"] != -1]
    cor = [p == -1 for r, p in zip(records, preds) if r["label"] == -1]
    a1, a2 = sum(err) / len(err), sum(cor) / len(cor)
    return 2 * a1 * a2 / (a1 + a2) if a1 + a2 else 0.0


def test_processbench_gold_scores_give_100_and_last_step_gives_official_value(tmp_path):
    files = _pb_files()
    recs = {f.stem: json.loads(f.read_text()) for f in files}
    gold, last, mixed = (tmp_path / n for n in ("gold.jsonl", "last.jsonl", "mixed.jsonl"))
    want_mixed = {}
    with open(gold, "w") as g, open(last, "w") as la, open(mixed, "w") as mx:
        for name, rs in recs.items():
            preds = []
            for i, r in enumerate(rs):
                n, y = len(r["steps"]), r["label"]
                g.write(
                    json.dumps({"id": r["id"], "step_scores": [1.0 if y == -1 or k < y else 0.0 for k in range(n)]})
                )
                g.write("\n")
                la.write(json.dumps({"step_scores": [0.9] * (n - 1) + [0.1]}) + "\n")
                # mixed: flag the last step of every other record, nothing in the rest
                flag = i % 2 == 0
                mx.write(json.dumps({"step_scores": [0.9] * (n - 1) + [0.1 if flag else 0.9]}) + "\n")
                preds.append(n - 1 if flag else -1)
            want_mixed[name] = _official(rs, preds)
    base = ["bench", "--bench", str(files[0].parent), "--bootstrap", "50"]
    assert main(base + ["--scores", str(gold), "--out", str(tmp_path / "g")]) == 0
    res = json.loads((tmp_path / "g" / "results.json").read_text())["processbench"]
    assert all(res[s]["f1"] == 1.0 for s in recs) and res["average_f1"] == 1.0
    assert res["gsm8k"]["n"] == 400 and res["math"]["n_error"] == 594

    assert main(base + ["--scores", str(last), "--out", str(tmp_path / "l")]) == 0
    res = json.loads((tmp_path / "l" / "results.json").read_text())["processbench"]
    # the official formula: every correct sample is flagged (acc 0), so F1 = 0 on every subset
    for s, rs in recs.items():
        n_hit = sum(r["label"] == len(r["steps"]) - 1 for r in rs if r["label"] != -1)
        assert res[s]["acc_error"] == pytest.approx(n_hit / sum(r["label"] != -1 for r in rs))
        assert res[s]["acc_correct"] == 0.0 and res[s]["f1"] == 0.0
    assert res["gsm8k"]["acc_error"] == pytest.approx(16 / 207)  # counted by hand from the published file

    assert main(base + ["--scores", str(mixed), "--out", str(tmp_path / "m")]) == 0
    res = json.loads((tmp_path / "m" / "results.json").read_text())["processbench"]
    for s in recs:
        assert res[s]["f1"] == pytest.approx(want_mixed[s], abs=1e-12)
    assert res["average_f1"] == pytest.approx(sum(want_mixed.values()) / 4, abs=1e-12)
    lo, hi = res["average_f1_ci95"]
    assert lo <= res["average_f1"] <= hi


def test_processbench_single_file_subset_option_and_jsonl(tmp_path):
    f = _pb_files()[0]
    all_rs = json.loads(f.read_text())
    rs = [r for r in all_rs if r["label"] == -1][:10] + [r for r in all_rs if r["label"] != -1][:10]
    jl = tmp_path / "some.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rs))
    sc = tmp_path / "s.jsonl"
    sc.write_text("".join(json.dumps({"step_scores": [1.0] * len(r["steps"])}) + "\n" for r in rs))
    out = tmp_path / "o"
    assert main(["bench", "--bench", str(jl), "--subset", "gsm8k", "--scores", str(sc), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["processbench"]
    assert res["gsm8k"]["acc_correct"] == 1.0 and res["gsm8k"]["acc_error"] == 0.0 and res["gsm8k"]["n_error"] == 10


class _FakeScorer:
    """Scores a step 0.0 when its text contains 'ERR', else 1.0; records the items it saw."""

    def __init__(self):
        self.seen = []

    def score_steps(self, items):
        self.seen += items
        return [[0.0 if "ERR" in s else 1.0 for s in it["steps"]] for it in items]


def test_run_bench_with_engine_loads_images_and_scores_given_steps(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "images" / "a.png")
    steps = ["ok\n\nstill one step", "ERR here", "fine"]
    rec = {"image": ["images/a.png"], "question": "q", "answer": "1", "policy_model": "m", "data_source": "d",
           "response": {"steps": steps, "process_correctness": [1, -1, 1]}}  # fmt: skip
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n")
    eng = _FakeScorer()
    bench.run_bench([str(tmp_path / "b.jsonl")], str(tmp_path / "o"), engine=eng, bootstrap=0)
    assert len(eng.seen) == 1 and len(eng.seen[0]["steps"]) == 3 and eng.seen[0]["images"][0].size == (8, 8)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["overall"]["macro_f1"] == 1.0
    eng2 = _FakeScorer()
    bench.run_bench([str(tmp_path / "b.jsonl")], str(tmp_path / "o2"), engine=eng2, bootstrap=0, no_image=True)
    assert eng2.seen[0]["images"] == []


def test_bad_bench_record_exits_2(tmp_path, capsys):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"question": "q", "response": {"steps": ["a", "b"], "process_correctness": [1]}}) + "\n")
    s = tmp_path / "s.jsonl"
    s.write_text('{"step_scores": [1, 1]}\n')
    assert main(["bench", "--bench", str(p), "--scores", str(s), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "b.jsonl:1" in err and "process_correctness" in err


@pytest.mark.slow
def test_bench_with_a_tiny_prm_matches_direct_scoring(tmp_path):
    from PIL import Image

    from visualprm.scoring import Scorer
    from visualprm.tiny import make_tiny_model

    prm = make_tiny_model(tmp_path / "prm", arch="qwen2_vl")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "g.png")
    steps = ["The bar is green.\n\nIt is tall.", "So 3 + 4 = 8.", "The answer is 8."]
    rec = {"image": ["g.png"], "question": "How tall?", "answer": "7", "policy_model": "P", "data_source": "S",
           "response": {"steps": steps, "process_correctness": [1, -1, -1]}}  # fmt: skip
    (tmp_path / "v.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "data_source": "T"}) + "\n")
    out = tmp_path / "o"
    assert main(["bench", "--bench", str(tmp_path / "v.jsonl"), "--prm", str(prm), "--out", str(out),
                 "--bootstrap", "20"]) == 0  # fmt: skip
    got = [json.loads(x)["step_scores"] for x in (out / "samples.jsonl").read_text().splitlines()]
    item = {"question": "How tall?", "images": [Image.open(tmp_path / "g.png").convert("RGB")], "steps": steps}
    want = Scorer.from_pretrained(prm).score_steps([item])[0]
    assert len(got[0]) == 3 and got[0] == pytest.approx(want, abs=1e-5) and got[1] == pytest.approx(want, abs=1e-5)
    # ProcessBench, text only (no image), first records of one subset
    pb = _pb_files()[0]
    out2 = tmp_path / "p"
    assert main(["bench", "--bench", str(pb), "--prm", str(prm), "--out", str(out2), "--limit", "4",
                 "--no-image", "--bootstrap", "0"]) == 0  # fmt: skip
    res = json.loads((out2 / "results.json").read_text())
    assert res["counts"]["records"] == 4 and "gsm8k" in res["processbench"]
