"""The tally task end to end: make problems -> annotate -> build data -> train a PRM -> score -> search.

    PYTHONPATH=examples python examples/own_task/run.py --out runs/tally            # a few minutes on a CPU
    PYTHONPATH=examples python examples/own_task/run.py --out runs/tally --quick    # the test's size

Every stage is the library's own job, given the task's splitter and checker as `module:function` strings, exactly
as the CLI takes them (`--splitter own_task.tally:split_steps --checker own_task.tally:check`). Only the policy is
a Python object (`TallyPolicy`): with a real model the annotate and search stages are the CLI commands printed at
the end, with `--policy openai:MODEL@URL` (or `hf:PATH`).

The PRM starts from `--base` (default: a tiny random-weight Qwen2-VL made here, which cannot see much after a few
hundred CPU steps: the numbers show the plumbing, not a good critic). Prints the PRM's step accuracy against the
task's gold step labels on held-out solutions, and the search table; writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPLITTER, CHECKER = "own_task.tally:split_steps", "own_task.tally:check"


def held_out_solutions(problems_path: Path, out: Path, policy, n_per_problem: int = 2, seed: int = 7) -> list[dict]:
    """Policy responses to score (the `score` input: {id, images, question, response}) with their gold labels."""
    from own_task.tally import gold_step_correct, split_steps
    from visualprm.policy import GenRequest

    recs = []
    problems = [json.loads(x) for x in problems_path.read_text().splitlines()]
    texts = policy.generate([GenRequest(p, "", n=n_per_problem, seed=seed + i) for i, p in enumerate(problems)])
    for p, ts in zip(problems, texts):
        for j, t in enumerate(ts):
            images = [os.path.relpath(problems_path.parent / x, out.parent) for x in p["images"]]
            rec = {"id": f"{p['id']}-{j}", "images": images, "question": p["prompt"], "response": t}
            rec["gold_step_correct"] = gold_step_correct(p, split_steps(t))
            recs.append(rec)
    from visualprm.schema import write_jsonl

    write_jsonl(out, recs)
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/tally")
    ap.add_argument("--base", default=None, help="base model folder for the PRM (default: a tiny random Qwen2-VL)")
    ap.add_argument("--n-train", type=int, default=120, help="training problems (120)")
    ap.add_argument("--n-test", type=int, default=40, help="test problems (40)")
    ap.add_argument("--steps", type=int, default=300, help="PRM training steps (300)")
    ap.add_argument("--lr", type=float, default=5e-4, help="PRM learning rate (5e-4: a tiny model from scratch)")
    ap.add_argument("--quick", action="store_true", help="a tiny run for tests (8/4 problems, 10 steps)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.quick:
        a.n_train, a.n_test, a.steps = 8, 4, 10

    from own_task.tally import TallyPolicy, make_problems
    from visualprm.builddata import build_data_file
    from visualprm.montecarlo import annotate_file
    from visualprm.scoring import score_file
    from visualprm.search import SearchConfig, search_file
    from visualprm.tiny import make_tiny_model
    from visualprm.train import TrainConfig, train

    t0 = time.time()
    out = Path(a.out)
    policy = TallyPolicy()
    # 1. problems
    make_problems(out / "train", a.n_train, seed=1)
    make_problems(out / "test", a.n_test, seed=2)
    # 2. Monte-Carlo labels with the task's own steps and checker
    annotate_file(
        str(out / "train" / "problems.jsonl"), policy, str(out / "annotated.jsonl"), solutions=4, rollouts=8,
        checker=CHECKER, splitter=SPLITTER, seed=a.seed, progress=False,
    )  # fmt: skip
    # 3. training conversations, 4. the PRM
    build_data_file(str(out / "annotated.jsonl"), str(out / "train.jsonl"))
    base = a.base or str(make_tiny_model(out / "base", arch="qwen2_vl", seed=a.seed, image_size=84))
    cfg = TrainConfig(
        data=str(out / "train.jsonl"), model=base, out=str(out / "prm"), max_steps=a.steps, lr=a.lr,
        batch_size=4, eval_split=0.1, logging_steps=max(1, a.steps // 5), save_steps=max(1, a.steps),
        seed=a.seed, overwrite=True,
    )  # fmt: skip
    trained = train(cfg)
    # 5. score held-out policy solutions, split by the task's splitter
    sols = held_out_solutions(out / "test" / "problems.jsonl", out / "solutions.jsonl", policy)
    score_file(str(out / "prm"), str(out / "solutions.jsonl"), str(out / "scored.jsonl"), splitter=SPLITTER)
    scored = [json.loads(x) for x in (out / "scored.jsonl").read_text().splitlines()]
    pairs = [(s >= 0.5, g) for r, sol in zip(scored, sols) for s, g in zip(r["step_scores"], sol["gold_step_correct"])]
    step_acc = sum(p == g for p, g in pairs) / len(pairs)
    majority = max(sum(g for _, g in pairs), sum(not g for _, g in pairs)) / len(pairs)
    # 6. search with the task's step delimiter (one line per step)
    res = search_file(
        policy, str(out / "prm"), str(out / "test" / "problems.jsonl"), str(out / "search"), methods="bon,beam",
        config=SearchConfig(width=2, expand=2, step_sep="\n"), checker=CHECKER, splitter=SPLITTER, progress=False,
    )  # fmt: skip
    summary = {
        "train_problems": a.n_train,
        "test_solutions": len(sols),
        "train_summary": trained.get("summary"),
        "heldout_eval": trained.get("eval"),
        "step_accuracy_at_0.5": round(step_acc, 4),
        "step_majority_baseline": round(majority, 4),
        "search_accuracy": {m: r["accuracy"] for m, r in res["methods"].items()},
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"tally: PRM step accuracy {step_acc:.3f} (majority class {majority:.3f}) on {len(pairs)} held-out steps")
    print(f"tally: done in {summary['seconds']}s -> {out / 'summary.json'}")
    print(
        "with a real policy model, the same stages from the command line (PYTHONPATH=examples):\n"
        f"  visualprm annotate --problems {out}/train/problems.jsonl --policy openai:MODEL@URL "
        f"--out {out}/annotated.jsonl --splitter {SPLITTER} --checker {CHECKER}\n"
        f"  visualprm build-data --annotated {out}/annotated.jsonl --out {out}/train.jsonl\n"
        f"  visualprm train --data {out}/train.jsonl --model BASE --out {out}/prm\n"
        f"  visualprm score --prm {out}/prm --input {out}/solutions.jsonl --out {out}/scored.jsonl "
        f"--splitter {SPLITTER}\n"
        f"  visualprm search --policy openai:MODEL@URL --prm {out}/prm --problems {out}/test/problems.jsonl "
        f"--out {out}/search --method bon,beam --step-sep '\\n' --splitter {SPLITTER} --checker {CHECKER}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
