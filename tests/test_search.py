"""PRM-guided search: request shapes (one step at a time, prefixes, seeds), beam bookkeeping (width, dedupe,
finishing), lookahead rollouts, budget and token accounting, outputs, determinism, a perfect critic on the
synthetic task (exact accuracies), the CLI with a tiny model."""

import hashlib
import json
from pathlib import Path

import pytest

from visualprm.cli import main
from visualprm.policy import policy_prompt
from visualprm.schema import InputError, Loc, load_image
from visualprm.search import SearchConfig, first_step, search_file, states_answer, word_count
from visualprm.synthetic import SyntheticPolicy, gold_step_correct, make_problems


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    make_problems(d, n=20, seed=2)
    return d / "problems.jsonl"


def problems(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


class GoldCritic:
    """A perfect critic for the synthetic task: 0.9 while every step so far is true, else 0.1. Problems are found
    by question and image (several problems share a question)."""

    def __init__(self, path):
        self.by_key = {}
        for p in problems(path):
            im = load_image(str(Path(path).parent / p["images"][0]), Loc())
            self.by_key[self.key(policy_prompt(p), im)] = p
        self.calls = []

    @staticmethod
    def key(question, image):
        return question + hashlib.sha256(image.tobytes()).hexdigest()

    def score_steps(self, items):
        self.calls.append(len(items))
        out = []
        for it in items:
            p = self.by_key[self.key(it["question"], it["images"][0])]
            out.append([0.9 if ok else 0.1 for ok in gold_step_correct(p, it["steps"])])
        return out


class Recording:
    """Wraps a policy and records every request."""

    def __init__(self, policy):
        self.policy, self.name, self.requests, self.texts = policy, policy.name, [], []

    def generate(self, requests):
        out = self.policy.generate(requests)
        self.requests += requests
        self.texts += [t for ts in out for t in ts]
        return out

    def close(self):
        pass


class LengthCritic:
    """Scores a step by its length (longer is better): deterministic, no model."""

    def score_steps(self, items):
        return [[min(1.0, len(s) / 40) for s in it["steps"]] for it in items]


def run(syn, tmp_path, methods, critic=None, policy=None, limit=None, **cfg):
    out = tmp_path / "out"
    res = search_file(
        policy or SyntheticPolicy(), critic or GoldCritic(syn), str(syn), str(out), methods=methods,
        config=SearchConfig(**cfg), limit=limit, progress=False,
    )  # fmt: skip
    return res, [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def test_first_step_and_states_answer():
    assert first_step("\n\nThere are 3 red shapes.", "\n\n") == "There are 3 red shapes."
    assert first_step("a\n\nb", "\n\n") == "a"  # a policy that ignores stop still gives one step
    assert first_step("  \n\n ", "\n\n") == ""
    assert states_answer("Final answer: 4") and states_answer("So the answer is \\boxed{3}.")
    assert states_answer("Answer: blue") and not states_answer("3 + 1 = 4.")
    assert word_count(" There are  3\nred ") == 4


# ---------------------------------------------------------------------------------------------------------------
# Request shapes and bookkeeping


def test_beam_requests_one_step_at_a_time(syn, tmp_path):
    pol = Recording(SyntheticPolicy())
    res, rows = run(syn, tmp_path, "beam", policy=pol, width=2, expand=3)
    reqs = [r for r in pol.requests if r.problem["id"] == rows[0]["id"]]
    assert all(r.stop == ["\n\n"] for r in reqs)
    assert reqs[0].prefix == "" and reqs[0].n == 6  # the root is expanded into width x expand first steps
    assert all(r.prefix.endswith("\n\n") and r.n == 3 for r in reqs[1:])
    assert all(r.temperature == 0.7 and r.top_p == 0.95 and r.max_tokens == 1024 for r in reqs)
    assert len({r.seed for r in reqs}) == len(reqs)
    # at most `width` beams are extended per round, and every prefix is made of earlier steps
    rounds = rows[0]["cost"]["rounds"]
    assert rows[0]["cost"]["requests"] == len(reqs) <= 1 + 2 * (rounds - 1)
    assert rows[0]["n_finished"] <= 2
    assert rows[0]["response"] == "\n\n".join(rows[0]["steps"])
    assert states_answer(rows[0]["steps"][-1])


def test_bon_and_lookahead_requests(syn, tmp_path):
    pol = Recording(SyntheticPolicy())
    _, rows = run(syn, tmp_path, "bon", policy=pol, width=2, expand=3)
    assert all(r.n == 6 and r.stop is None and r.prefix == "" and r.max_tokens == 4096 for r in pol.requests)
    assert all(row["n_finished"] == 6 and row["cost"]["requests"] == 1 for row in rows)
    pol = Recording(SyntheticPolicy())
    _, rows = run(syn, tmp_path, "lookahead", policy=pol, width=2, expand=2, lookahead=2)
    look = [r for r in pol.requests if r.n == 1]
    assert look and all(r.temperature == 0.0 and r.stop == ["\n\n"] and r.prefix.endswith("\n\n") for r in look)


def test_tokens_are_words_of_all_generated_text(syn, tmp_path):
    for method in ("bon", "beam", "lookahead"):
        pol = Recording(SyntheticPolicy())
        res, rows = run(syn, tmp_path, method, policy=pol, width=2, expand=2)
        assert sum(r["cost"]["tokens"] for r in rows) == sum(word_count(t) for t in pol.texts)
        assert sum(r["cost"]["samples"] for r in rows) == sum(r.n for r in pol.requests)
        assert res["methods"][method]["tokens"] == pytest.approx(sum(word_count(t) for t in pol.texts) / 20)


def test_dedupe_keeps_identical_prefixes_once(syn, tmp_path):
    class Same:
        name = "same"

        def generate(self, requests):  # every sample is the same step; the 3rd step answers
            return [[f"Step {r.prefix.count(chr(10) * 2) + 1}." if r.prefix.count("\n\n") < 2 else "Final answer: 1"]
                    * r.n for r in requests]  # fmt: skip

        def close(self):
            pass

    _, rows = run(syn, tmp_path, "beam", critic=LengthCritic(), policy=Same(), width=3, expand=2)
    assert rows[0]["steps"] == ["Step 1.", "Step 2.", "Final answer: 1"]
    assert rows[0]["n_finished"] == 1 and rows[0]["cost"]["prm_solutions"] == 3
    _, rows = run(syn, tmp_path, "beam", critic=LengthCritic(), policy=Same(), width=3, expand=2, dedupe=False)
    assert rows[0]["n_finished"] == 3


def test_budget_stops_rounds_and_completes_the_best_beam(syn, tmp_path):
    pol = Recording(SyntheticPolicy())
    res, rows = run(syn, tmp_path, "beam", policy=pol, width=2, expand=2, budget=5)
    for row in rows:  # one round of 4 first steps (>= 5 words), then the best beam is completed in one request
        assert row["budget_hit"] and row["cost"]["rounds"] == 2 and row["cost"]["requests"] == 2
        assert row["n_finished"] == 1 and states_answer(row["steps"][-1])
    assert res["methods"]["beam"]["budget_hit"] == 20
    assert pol.requests[-1].stop is None and pol.requests[-1].n == 1
    res, rows = run(syn, tmp_path, "bon", width=3, expand=1, budget=40)
    for row in rows:  # bon draws `width` solutions per round until the budget is spent
        assert row["cost"]["tokens"] >= 40 and row["cost"]["samples"] == 3 * row["cost"]["rounds"]
        assert row["cost"]["tokens"] - 40 < row["cost"]["tokens"] / row["cost"]["rounds"]


def test_determinism_independent_of_concurrency(syn, tmp_path):
    rows = []
    for conc in (1, 16):
        out = tmp_path / f"c{conc}"
        search_file(
            SyntheticPolicy(), GoldCritic(syn), str(syn), str(out), methods="bon,beam,lookahead",
            config=SearchConfig(width=2, expand=2), concurrency=conc, progress=False,
        )  # fmt: skip
        rows.append((out / "samples.jsonl").read_text())
    assert rows[0] == rows[1]


def test_batches_across_problems(syn, tmp_path):
    critic = GoldCritic(syn)
    search_file(SyntheticPolicy(), critic, str(syn), str(tmp_path / "o"), "beam", SearchConfig(), progress=False)
    assert max(critic.calls) > 16  # partial solutions of several problems share one score_steps call


# ---------------------------------------------------------------------------------------------------------------
# A perfect critic on the synthetic task: exact numbers


def test_perfect_critic_accuracies(syn, tmp_path, capsys):
    res, rows = run(syn, tmp_path, "bon,beam,lookahead", width=2, expand=2)
    acc = {m: r["accuracy"] for m, r in res["methods"].items()}
    oracle = {m: r["oracle"] for m, r in res["methods"].items()}
    assert acc == {"bon": 0.75, "beam": 0.8, "lookahead": 0.8}
    assert oracle == {"bon": 0.8, "beam": 0.8, "lookahead": 0.8}
    tokens = {m: r["tokens"] for m, r in res["methods"].items()}
    assert tokens == {"bon": 73.8, "beam": 65.4, "lookahead": 106.25}
    # a pick whose every step is true has the right answer (the perfect critic scores a true process 0.9 throughout)
    assert all(r["correct"] for r in rows if r["step_scores"] == [0.9] * len(r["steps"]))
    assert sum(r["step_scores"] == [0.9] * len(r["steps"]) for r in rows) >= 45
    table = capsys.readouterr().out
    assert "bon" in table and "lookahead" in table and "acc %" in table
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["methods"] == ["bon", "beam", "lookahead"] and saved["config"]["width"] == 2
    assert saved["counts"] == {"problems": 20, "bad_problems": 0}
    assert len(rows) == 60 and {r["method"] for r in rows} == {"bon", "beam", "lookahead"}


# ---------------------------------------------------------------------------------------------------------------
# openai: a local OpenAI-compatible server answering with the synthetic policy


def test_openai_policy_gives_the_same_search(syn, tmp_path):
    from fake_openai import FakeOpenAI

    from visualprm.schema import read_jsonl, resolve_images

    probs = []
    for loc, r in read_jsonl(syn):
        r["images"] = resolve_images(r["images"], loc, syn.parent)
        probs.append(r)
    fake = FakeOpenAI(probs)
    url = fake.start()
    try:
        _, remote = run(syn, tmp_path / "r", "bon,beam", policy=f"openai:syn@{url}", limit=5, width=2, expand=2)
    finally:
        fake.stop()
    _, local = run(syn, tmp_path / "l", "bon,beam", limit=5, width=2, expand=2)
    assert len(local) == 10
    steps = [b for b in fake.bodies if b.get("stop")]
    assert steps and all(b["stop"] == ["\n\n"] and b["temperature"] == 0.7 and b["top_p"] == 0.95 for b in steps)
    assert all(b["continue_final_message"] for b in steps if len(b["messages"]) == 2)
    assert all(b["messages"][-1]["content"].endswith("\n\n") for b in steps if len(b["messages"]) == 2)
    # The fake server ignores `stop` and returns every remaining step; the search keeps the first one, so the
    # same solutions come out (only the token counts differ).
    assert [(r["id"], r["method"], r["response"], r["correct"]) for r in remote] == [
        (r["id"], r["method"], r["response"], r["correct"]) for r in local
    ]


def test_prm_behind_the_http_service(syn, tmp_path):
    from fastapi.testclient import TestClient

    from visualprm.client import Client
    from visualprm.rewards import RemoteScorer
    from visualprm.server import FakeScorer, build_app

    with TestClient(build_app(FakeScorer())) as tc:
        _, remote = run(syn, tmp_path / "r", "bon,beam", critic=RemoteScorer(client=Client(http=tc)), limit=6)
    _, local = run(syn, tmp_path / "l", "bon,beam", critic=FakeScorer(), limit=6)
    assert [r["response"] for r in remote] == [r["response"] for r in local]
    assert [r["step_scores"] for r in remote] == [r["step_scores"] for r in local]


# ---------------------------------------------------------------------------------------------------------------
# Bad input, CLI


def test_bad_options_fail_before_work(syn, tmp_path):
    for methods, cfg, msg in [
        ("dfs", {}, "unknown method"),
        ("beam,beam", {}, "distinct"),
        ("beam", {"width": 0}, "--width"),
        ("lookahead", {"lookahead": 0}, "--lookahead"),
        ("beam", {"select": "median"}, "unknown select"),
        ("beam", {"budget": 0}, "--budget"),
    ]:
        with pytest.raises(InputError, match=msg):
            search_file(SyntheticPolicy(), LengthCritic(), str(syn), str(tmp_path / "x"), methods, SearchConfig(**cfg))
    assert not (tmp_path / "x").exists()
    assert main(["search", "--policy", "nope", "--prm", "x", "--problems", str(syn), "--out", "o"]) == 2


@pytest.mark.slow
def test_cli_with_tiny_model(syn, tmp_path, capsys):
    from visualprm.tiny import make_tiny_model

    make_tiny_model(tmp_path / "prm")
    args = ["search", "--policy", "synthetic", "--prm", str(tmp_path / "prm"), "--problems", str(syn)]
    args += ["--out", str(tmp_path / "o"), "--method", "bon,beam", "--width", "2", "--expand", "2", "--limit", "2"]
    assert main(args + ["--tokens", "prm", "--step-sep", "\\n\\n"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["step_sep"] == "\n\n" and res["config"]["tokens"] == "prm"
    assert res["methods"]["bon"]["problems"] == 2 and res["methods"]["beam"]["problems"] == 2
    # the same generations counted as words: fewer than this small byte-level tokenizer's tokens
    args[args.index("bon,beam")] = "bon"
    assert main(args[:7] + ["--out", str(tmp_path / "w")] + args[9:]) == 0
    words = json.loads((tmp_path / "w" / "results.json").read_text())["methods"]["bon"]
    assert words["samples"] == res["methods"]["bon"]["samples"] == 4
    assert 0 < words["tokens"] < res["methods"]["bon"]["tokens"]
