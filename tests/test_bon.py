"""Best-of-N selection and evaluation (REFERENCE.md §9): exact hand-computed values, perfect and constant scorers,
and the `bon` job end to end with a fake scorer."""

import json
import random

import pytest

from visualprm import bon


def test_select_best_ties_go_to_lower_index():
    assert bon.select_best([0.2, 0.7, 0.7, 0.1]) == 1
    assert bon.select_best([0.5, 0.5]) == 0
    assert bon.select_best([float("nan"), 0.1]) == 1
    assert bon.select_best([-1.0, -0.5]) == 1


def _random_records(seed, n_problems=40, n=8, scorer="perfect"):
    rng = random.Random(seed)
    recs = []
    for i in range(n_problems):
        correct = [rng.random() < 0.35 for _ in range(n)]
        steps = []
        for c in correct:
            k = rng.randint(1, 4)
            if scorer == "perfect":
                steps.append([rng.uniform(0.95, 1.0) for _ in range(k)] if c else [rng.uniform(0.0, 0.4)] * k)
            else:  # constant: every step 1.0 (so that all five aggregates are constant too)
                steps.append([1.0] * k)
        answers = [str(rng.randint(1, 3)) if not c else "42" for c in correct]
        recs.append({"id": str(i), "source": "A" if i % 2 else "B", "correct": correct, "step_scores": steps,
                     "answers": answers})  # fmt: skip
    return recs


def test_perfect_scorer_equals_oracle_at_every_n():
    ev = bon.evaluate_bon(_random_records(1), seed=3)
    for how in bon.AGGREGATES:
        assert ev["accuracy"][f"prm_{how}"] == ev["accuracy"]["oracle"]
        assert ev["curves"][f"prm_{how}"] == pytest.approx(ev["curves"]["oracle"], abs=1e-12)
    assert ev["curves"]["n"] == [1, 2, 4, 8]
    assert ev["accuracy"]["oracle"] > ev["accuracy"]["pass@1"]


def test_constant_scorer_equals_pass_at_1():
    ev = bon.evaluate_bon(_random_records(2, scorer="constant"), seed=0)
    for how in bon.AGGREGATES:
        assert ev["accuracy"][f"prm_{how}"] == ev["accuracy"]["pass@1"]


def test_curve_at_n1_is_the_same_for_every_method():
    ev = bon.evaluate_bon(_random_records(4), seed=0)
    vals = {m: ev["curves"][m][0] for m in ev["methods"] if m != "pass@1"}
    assert len(set(round(v, 12) for v in vals.values())) == 1
    # the full-N point equals the full-N accuracy
    assert "pass@1" not in ev["curves"]
    for m in ev["methods"]:
        if m != "pass@1":
            assert ev["curves"][m][-1] == pytest.approx(ev["accuracy"][m])


def test_votes_hand_computed():
    # answers 5 5 7 7 7; 5 is right. Majority -> 7 (wrong); PRM-weighted (mean scores .9 .9 .1 .1 .1) -> 5 (right).
    # The PRM's own pick (argmax of the mean) is candidate 0; random = 2/5; oracle = 1; pass@1 = 1.
    r1 = {"id": "a", "correct": [True, True, False, False, False], "answers": ["5", "5.0", "7", " 7", "7"],
          "step_scores": [[0.9], [0.9], [0.1], [0.1], [0.1]]}  # fmt: skip
    # tie 1:1 between answers -> the answer whose first candidate comes first ("x", wrong); None does not vote
    r2 = {"id": "b", "correct": [False, True, True], "answers": ["x", None, "y"], "step_scores": [[0.2], [0.3], [0.2]]}
    # no candidate has an answer: the votes fall back to the first candidate
    r3 = {"id": "c", "correct": [False, True], "answers": [None, None], "step_scores": [[0.1], [0.9]]}
    ev = bon.evaluate_bon([r1, r2, r3], seed=0)
    pp = ev["per_problem"]
    assert [p["majority_vote"] for p in pp] == [0.0, 0.0, 0.0]
    assert [p["prm_weighted_vote"] for p in pp] == [1.0, 0.0, 0.0]  # r2: x .2 = y .2 -> tie -> x (wrong)
    assert [p["prm_mean"] for p in pp] == [1.0, 1.0, 1.0]
    assert pp[0]["random"] == pytest.approx(0.4) and pp[1]["random"] == pytest.approx(2 / 3)
    assert [p["oracle"] for p in pp] == [1.0, 1.0, 1.0]
    assert [p["pass@1"] for p in pp] == [1.0, 0.0, 0.0]
    assert ev["accuracy"]["majority_vote"] == 0.0


def test_orm_and_per_source_tables():
    recs = [
        {"id": "1", "source": "A", "correct": [False, True], "step_scores": [[0.9], [0.1]], "orm_scores": [0.2, 0.8]},
        {"id": "2", "source": "B", "correct": [True, False], "step_scores": [[0.9], [0.1]], "orm_scores": [0.2, 0.8]},
        {"id": "3", "source": "B", "correct": [True, False], "step_scores": [[0.9], [0.1]], "orm_scores": [0.9, 0.8]},
    ]
    ev = bon.evaluate_bon(recs, seed=0)
    assert "majority_vote" not in ev["methods"]  # no extracted answers given
    assert ev["accuracy"]["orm"] == pytest.approx(2 / 3) and ev["accuracy"]["prm_mean"] == pytest.approx(2 / 3)
    assert ev["by_source"]["A"]["orm"] == 1.0 and ev["by_source"]["B"]["orm"] == 0.5
    assert ev["by_source"]["A"]["prm_mean"] == 0.0 and ev["by_source"]["B"]["prm_mean"] == 1.0
    assert ev["source_mean"]["orm"] == pytest.approx(0.75)  # unweighted mean over sources


def test_curves_are_seeded():
    a = bon.evaluate_bon(_random_records(5, n=6), seed=11)["curves"]
    b = bon.evaluate_bon(_random_records(5, n=6), seed=11)["curves"]
    assert a == b and a["n"] == [1, 2, 4, 6]


STEP_SCORES = {"We add.": 0.2, "The answer is 7.": 0.2, "Add them.": 0.9, "The answer is 5.": 0.5}
STEP_SCORES.update({"So \\boxed{5}.": 0.1, "Multiply.": 0.7, "The answer is 6.": 0.7, "Thus the answer is 5.": 0.9})


class _FakeScorer:
    """Scores each step from STEP_SCORES (0.5 for any other text); keeps the groups it saw."""

    def __init__(self):
        self.groups = []

    def score_groups(self, groups):
        self.groups += groups
        return [[[STEP_SCORES.get(s, 0.5) for s in sol] for sol in g["solutions"]] for g in groups]


def _write_candidates(path, with_answer=True):
    recs = [
        {"id": "p1", "question": "2+3?", "answer": "5", "source": "S1",
         "responses": ["We add.\n\nThe answer is 7.", "Add them.\n\nThe answer is 5.", "So \\boxed{5}."]},
        {"id": "p2", "question": "2*3?", "answer": "6", "source": "S2",
         "responses": [["Multiply.", "The answer is 6."], "Thus the answer is 5."]},
    ]  # fmt: skip
    if not with_answer:
        for r in recs:
            r.pop("answer")
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_bon_file_end_to_end_with_fake_scorer(tmp_path, capsys):
    # p1 (gold 5): c0 [.2 .2] says 7; c1 [.9 .5] says 5; c2 [.1] says 5.  p2 (gold 6): c0 [.7 .7] says 6; c1 [.9] 5.
    # Every aggregate picks c1 in both: right, wrong -> 1/2. Majority: p1 5 (right), p2 6-vs-5 tie -> 6 (right).
    # Weighted (mean): p1 5: .7+.1 > 7: .2 (right); p2 5: .9 > 6: .7 (wrong). pass@1: wrong, right. Random 7/12.
    inp = tmp_path / "cands.jsonl"
    _write_candidates(inp)
    out = tmp_path / "out"
    orm = _FakeScorer()
    assert bon.bon_file(None, str(inp), str(out), engine=_FakeScorer(), orm_engine=orm, n_subsets=4) == 0
    picks = [json.loads(x) for x in (out / "picks.jsonl").read_text().splitlines()]
    assert [p["best"] for p in picks] == [1, 1]
    assert picks[0]["step_scores"] == [[0.2, 0.2], [0.9, 0.5], [0.1]] and picks[0]["scores"][1] == pytest.approx(0.7)
    assert picks[1]["response"] == "Thus the answer is 5."
    res = json.loads((out / "results.json").read_text())
    acc = res["accuracy"]
    assert all(acc[f"prm_{h}"] == 0.5 for h in bon.AGGREGATES)
    assert acc["majority_vote"] == 1.0 and acc["prm_weighted_vote"] == 0.5
    assert acc["pass@1"] == 0.5 and acc["oracle"] == 1.0 and acc["random"] == pytest.approx(7 / 12)
    # ORM on whole solutions: multi-step texts are unknown (0.5), one-step ones keep their score:
    # p1 [.5 .5 .1] -> c0 (wrong); p2 [.5 .9] -> c1 (wrong)
    assert acc["orm"] == 0.0
    assert all(len(sol) == 1 for g in orm.groups for sol in g["solutions"])  # whole solution as one step
    assert res["by_source"]["S1"]["prm_mean"] == 1.0 and res["by_source"]["S2"]["prm_mean"] == 0.0
    assert res["curves"]["n"] == [1, 2] and res["counts"]["problems"] == 2
    assert (out / "bon_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.html").exists()
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["correct"] == [False, True, True] and samples[0]["answers"][0] == "7"
    table = capsys.readouterr().out
    assert "prm_mean" in table and "50.0" in table and "100.0" in table


def test_bon_file_without_gold_writes_picks_only(tmp_path):
    inp = tmp_path / "cands.jsonl"
    _write_candidates(inp, with_answer=False)
    out = tmp_path / "out"
    assert bon.bon_file(None, str(inp), str(out), engine=_FakeScorer()) == 0
    assert (out / "picks.jsonl").exists() and not (out / "results.json").exists()


def test_bon_precomputed_correct_flags_must_match(tmp_path):
    from visualprm.schema import InputError

    inp = tmp_path / "c.jsonl"
    inp.write_text(json.dumps({"id": "x", "question": "q", "responses": ["a", "b"], "correct": [True]}) + "\n")
    with pytest.raises(InputError, match="correct"):
        bon.bon_file(None, str(inp), str(tmp_path / "o"), engine=_FakeScorer())


@pytest.mark.slow
def test_bon_cli_with_a_tiny_prm_and_the_prm_as_orm(tmp_path):
    from visualprm.cli import main
    from visualprm.scoring import Scorer, aggregate
    from visualprm.tiny import make_tiny_model

    prm = make_tiny_model(tmp_path / "prm", arch="qwen2_vl")
    inp = tmp_path / "cands.jsonl"
    _write_candidates(inp)
    out = tmp_path / "out"
    assert main(["bon", "--prm", str(prm), "--input", str(inp), "--out", str(out), "--orm", "prm",
                 "--aggregate", "min"]) == 0  # fmt: skip
    picks = [json.loads(x) for x in (out / "picks.jsonl").read_text().splitlines()]
    scorer = Scorer.from_pretrained(prm)
    want = scorer.score_steps([{"question": "2+3?", "images": [], "steps": ["We add.", "The answer is 7."]}])[0]
    assert picks[0]["step_scores"][0] == pytest.approx(want, abs=1e-5)
    assert picks[0]["scores"][0] == pytest.approx(aggregate(want, "min"), abs=1e-5)
    assert picks[0]["best"] == bon.select_best(picks[0]["scores"])
    res = json.loads((out / "results.json").read_text())
    assert res["aggregate"] == "min" and "orm" in res["accuracy"] and res["config"]["orm"] == "prm"
    assert (out / "bon_curve.png").exists() and (out / "report.html").exists()


def test_bon_custom_checker_changes_verdicts(tmp_path):
    """`--checker module:function` replaces the built-in answer check in the Best-of-N evaluation."""
    import json

    from visualprm.bon import bon_file

    class Const:  # a scorer that prefers the first candidate
        def score_groups(self, groups):
            return [[[1.0 - 0.1 * i] for i in range(len(g["solutions"]))] for g in groups]

    (tmp_path / "chk.py").write_text("def check(response, record):\n    return 'yes' in response\n")
    inp = tmp_path / "c.jsonl"
    inp.write_text(json.dumps({"id": "p", "question": "q", "answer": "7", "responses": ["no 7", "yes 3"]}) + "\n")
    bon_file(None, str(inp), str(tmp_path / "a"), engine=Const(), report=False)
    builtin = json.loads((tmp_path / "a" / "results.json").read_text())
    bon_file(None, str(inp), str(tmp_path / "b"), engine=Const(), report=False, checker=f"{tmp_path}/chk.py:check")
    custom = json.loads((tmp_path / "b" / "results.json").read_text())
    assert builtin["accuracy"]["pass@1"] == 1.0 and builtin["accuracy"]["prm_mean"] == 1.0
    assert custom["accuracy"]["pass@1"] == 0.0 and custom["accuracy"]["prm_mean"] == 0.0
    assert custom["accuracy"]["oracle"] == 1.0
