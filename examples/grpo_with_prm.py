"""GRPO with a PRM as the reward: a few steps of TRL's `GRPOTrainer` on the synthetic task, on CPU, in minutes.

    pip install -e '.[torch,serve,rl]'
    python examples/grpo_with_prm.py --out runs/grpo                      # tiny random policy and PRM
    python examples/grpo_with_prm.py --out runs/grpo --prm demo-out/prm  # a trained PRM folder
    visualprm serve --prm demo-out/prm --port 8000 &                     # or the PRM behind the HTTP service
    python examples/grpo_with_prm.py --out runs/grpo --prm-url http://127.0.0.1:8000

What it does: writes `--problems` synthetic problems (images + questions), turns them into a TRL dataset
(`prompt` = the question in the policy's answer format as a chat message, `image`, `question`, `answer`),
and trains the policy with two reward functions: `visualprm.rewards.prm_reward` (the PRM's mean step score of
each completion, in-process or over HTTP) and `visualprm.rewards.answer_reward` (1.0 for a correct final
answer), weighted by `--prm-weight` and `--answer-weight`. TRL logs both per step (`rewards/prm_mean/mean`,
`rewards/answer/mean`); the example prints them and writes OUT/log.json.

The defaults exist to run the plumbing end to end on a laptop CPU: the policy and the PRM are tiny random-weight
Qwen2-VL models (`visualprm make-tiny-model`), so the policy writes noise and the rewards carry no signal. With
a real policy on GPUs, use `configs/grpo_gpu.yaml` (Qwen2.5-VL-7B policy with TRL's colocated vLLM generation, the
PRM served by `visualprm serve` on its own GPU, `$VISUALPRM_API_KEY` as its key):

    accelerate launch --num_processes 4 examples/grpo_with_prm.py --config configs/grpo_gpu.yaml --out runs/grpo

The config's keys model, prm, prm_url, problems, n, prm_weight and answer_weight are this script's; every other
key goes to `GRPOConfig` as it is. Process-level advantages (one reward per step) need a trainer that accepts
them: `prm_reward(..., per_step=True)` and `visualprm.rewards.process_advantages` give what it needs.
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

OWN_KEYS = ("model", "prm", "prm_url", "problems", "prm_weight", "answer_weight", "n")


def build_dataset(problems_path: str, n: int | None = None):
    """A `datasets.Dataset`: prompt (chat), image (PIL), question (the PRM's question), answer."""
    from datasets import Dataset

    from visualprm.policy import policy_prompt
    from visualprm.schema import Loc, load_image

    base = Path(problems_path).parent
    rows = []
    for line in Path(problems_path).read_text().splitlines()[:n]:
        p = json.loads(line)
        question = policy_prompt(p)
        rows.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "image": load_image(str(base / p["images"][0]), Loc(problems_path)),
                "question": question,
                "answer": str(p["answer"]),
            }
        )
    return Dataset.from_list(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/grpo", help="output folder (policy checkpoints, log.json)")
    ap.add_argument("--config", default=None, help="YAML: our keys + GRPOConfig keys (see the docstring)")
    ap.add_argument("--model", default=None, help="policy model folder or hub id (default: a tiny random Qwen2-VL)")
    ap.add_argument("--prm", default=None, help="PRM folder (default: a tiny random Qwen2-VL PRM)")
    ap.add_argument("--prm-url", default=None, help="score through `visualprm serve` at this URL instead")
    ap.add_argument("--problems", default=None, help="problems JSONL (default: synthetic problems written to OUT)")
    ap.add_argument("--n", type=int, default=16, help="problems used (16)")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps (3)")
    ap.add_argument("--prm-weight", type=float, default=1.0)
    ap.add_argument("--answer-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import yaml
    from trl import GRPOConfig, GRPOTrainer

    from visualprm.rewards import answer_reward, prm_reward
    from visualprm.scoring import Scorer
    from visualprm.synthetic import make_problems
    from visualprm.tiny import make_tiny_model

    cfg = yaml.safe_load(Path(a.config).read_text()) if a.config else {}
    own = {k: cfg.pop(k) for k in OWN_KEYS if k in cfg}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    model = a.model or own.get("model")
    if not model:
        model = str(make_tiny_model(out / "policy-init", seed=a.seed + 1))
    problems = a.problems or own.get("problems")
    if not problems:
        make_problems(out / "problems", n=a.n, seed=a.seed + 100)
        problems = str(out / "problems" / "problems.jsonl")
    prm_url = a.prm_url or own.get("prm_url")
    if prm_url:
        prm = prm_reward(url=prm_url, api_key=os.environ.get("VISUALPRM_API_KEY"), aggregate="mean")
    else:
        prm_path = a.prm or own.get("prm") or str(make_tiny_model(out / "prm", seed=a.seed))
        prm = prm_reward(Scorer.from_pretrained(prm_path, batch_size=8), aggregate="mean")
    weights = [own.get("prm_weight", a.prm_weight), own.get("answer_weight", a.answer_weight)]

    args = {"output_dir": str(out / "trainer"), "report_to": "none", "seed": a.seed, "reward_weights": weights}
    if cfg:  # a GPU config: GRPOConfig keys as given
        args.update(cfg)
    else:  # a few tiny steps on CPU
        args.update(max_steps=a.steps, per_device_train_batch_size=4, num_generations=4, max_completion_length=24)
        args.update(learning_rate=1e-5, logging_steps=1, save_strategy="no", use_cpu=True, bf16=False)
    processor = None
    if Path(model).is_dir():  # our folders: the processor loader that knows image-only Qwen2-VL processors
        from visualprm.model import load_processor

        processor = load_processor(model)
    trainer = GRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=[prm, answer_reward()],
        args=GRPOConfig(**args),
        train_dataset=build_dataset(problems, own.get("n", a.n)),
    )
    trainer.train()
    log = [
        {k: v for k, v in row.items() if k.startswith(("rewards/", "reward", "loss", "step", "epoch"))}
        for row in trainer.state.log_history
    ]
    for row in log:
        print(json.dumps(row), file=sys.stderr)
    (out / "log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"GRPO: {trainer.state.global_step} steps in {time.time() - t0:.0f}s; log -> {out / 'log.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
