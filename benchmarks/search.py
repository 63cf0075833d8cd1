"""Best-of-N vs beam search vs lookahead search on the synthetic task, at equal generation budget.

    python benchmarks/search.py --out runs/bench-search                       # simulated critics + a trained PRM
    python benchmarks/search.py --out runs/bench-search --critics gold,noisy  # seconds: simulated critics only
    python benchmarks/search.py --out runs/bench-search --prm runs/demo/prm   # your PRM folder

For every budget level N (default 4, 8, 16) it runs Best-of-N with N samples, then beam search and lookahead
search (width x expand = N, lookahead 1 step) each capped, problem by problem, at the tokens Best-of-N generated
for that problem (`search_file(budgets=...)`), so no method spends more than Best-of-N (beyond one round). Tokens
are whitespace words of generated text (search.py's default count). All methods use the scripted synthetic
policy and the same problems.

Critics (`--critics`):
- `gold`: a perfect critic read from the hidden scene (0.9 while every step so far is true, else 0.1): what search
  can do with an ideal PRM;
- `noisy`: the same plus Gaussian noise (sd `--noise`, 0.5; clipped to [0, 1]) per step, fixed per step prefix;
- `prm`: a real PRM. `--prm DIR` uses yours; otherwise one is trained here: `annotate` `--n-train` problems
  (4 solutions, 8 rollouts), `build-data`, `train` `--train-steps` steps from `--base` (default: the package's
  base model that sees the synthetic domain when it is installed, else a tiny random-weight Qwen2-VL, which cannot
  see: then the `prm` rows say little, and the script says so).

Writes OUT/results.json (every row), OUT/search.png (accuracy vs tokens per problem, one panel per critic) and
prints a markdown table and the machine it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from visualprm.policy import policy_prompt  # noqa: E402
from visualprm.schema import Loc, load_image  # noqa: E402
from visualprm.search import SearchConfig, search_file  # noqa: E402
from visualprm.synthetic import SyntheticPolicy, gold_step_correct, make_problems  # noqa: E402

SHAPES = {4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}  # N -> (width, expand) of beam/lookahead
COLOURS = {"bon": "#1f77b4", "beam": "#d62728", "lookahead": "#2ca02c"}


class SimulatedCritic:
    """A critic that reads the hidden scene: 0.9 while every step so far is true, else 0.1, plus optional
    Gaussian noise fixed per (problem, step prefix). Problems are found by question and image pixels."""

    def __init__(self, problems_path: Path, noise: float = 0.0, seed: int = 0):
        self.noise, self.seed, self.by_key = noise, seed, {}
        for line in problems_path.read_text().splitlines():
            p = json.loads(line)
            im = load_image(str(problems_path.parent / p["images"][0]), Loc())
            self.by_key[self.key(policy_prompt(p), im)] = p

    @staticmethod
    def key(question: str, image) -> str:
        return question + hashlib.sha256(image.tobytes()).hexdigest()

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        out = []
        for it in items:
            p = self.by_key[self.key(it["question"], it["images"][0])]
            scores = []
            for k, ok in enumerate(gold_step_correct(p, it["steps"])):
                v = 0.9 if ok else 0.1
                if self.noise:
                    r = random.Random(f"{self.seed}:{p['id']}:" + "\x1f".join(it["steps"][: k + 1]))
                    v = min(1.0, max(0.0, v + r.gauss(0.0, self.noise)))
                scores.append(v)
            out.append(scores)
        return out


def train_prm(out: Path, base: str | None, n_train: int, steps: int, seed: int) -> tuple[str, str]:
    """Annotate, build data and train a PRM on the synthetic task; returns (PRM folder, what the base was)."""
    from visualprm.builddata import build_data_file
    from visualprm.montecarlo import annotate_file
    from visualprm.tiny import make_tiny_model
    from visualprm.train import TrainConfig, train

    what = base
    if base is None:
        try:
            from visualprm.basemodel import shipped_path

            if (shipped_path() / "config.json").is_file():
                base, what = str(shipped_path()), "the shipped base model (sees the synthetic domain)"
        except ImportError:
            pass
    if base is None:
        base = str(make_tiny_model(out / "tiny-base", seed=seed, image_size=56))
        what = "a tiny random-weight Qwen2-VL (cannot see: the prm rows say little)"
    make_problems(out / "train", n=n_train, seed=seed + 1000)
    annotate_file(
        str(out / "train" / "problems.jsonl"), SyntheticPolicy(), str(out / "annotated.jsonl"), solutions=4,
        rollouts=8, seed=seed, progress=False,
    )  # fmt: skip
    build_data_file(str(out / "annotated.jsonl"), str(out / "train.jsonl"))
    lr = 1e-4 if "shipped" in what else 5e-4
    cfg = TrainConfig(
        data=str(out / "train.jsonl"), model=base, out=str(out / "prm"), max_steps=steps, lr=lr, batch_size=4,
        eval_split=0.1, logging_steps=max(1, steps // 5), save_steps=max(1, steps), seed=seed,
        overwrite=True,
    )  # fmt: skip
    train(cfg)
    return str(out / "prm"), what


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    critics = list(dict.fromkeys(r["critic"] for r in rows))
    fig, axes = plt.subplots(1, len(critics), figsize=(4.6 * len(critics), 3.8), squeeze=False)
    for ax, critic in zip(axes[0], critics):
        for method in ("bon", "beam", "lookahead"):
            pts = sorted(
                (r["tokens"], r["accuracy"], r["N"]) for r in rows if r["critic"] == critic and r["method"] == method
            )
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", color=COLOURS[method], label=method)
            for x, y, n in pts:
                ax.annotate(f"N={n}", (x, 100 * y), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sorted({r["budget"] for r in rows if r["critic"] == critic}))
        ax.set_title(f"critic: {critic}")
        ax.set_xlabel("generated tokens per problem (words)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-search", help="output folder")
    ap.add_argument("--n", type=int, default=200, help="evaluation problems for the simulated critics (200)")
    ap.add_argument("--n-prm", type=int, default=60, help="evaluation problems for the prm critic (60)")
    ap.add_argument("--levels", default="4,8,16", help="Best-of-N sizes = budget levels (4,8,16)")
    ap.add_argument("--critics", default="gold,noisy,prm", help="gold, noisy, prm (comma list)")
    ap.add_argument("--noise", type=float, default=0.5, help="sd of the noisy critic (0.5)")
    ap.add_argument("--lookahead", type=int, default=1, help="lookahead steps (1)")
    ap.add_argument("--prm", default=None, help="PRM folder for the prm critic (default: train one here)")
    ap.add_argument("--base", default=None, help="base model to train the PRM from (default: see the docstring)")
    ap.add_argument("--n-train", type=int, default=300, help="problems annotated to train the PRM (300)")
    ap.add_argument("--train-steps", type=int, default=400, help="PRM training steps (400)")
    ap.add_argument("--seed", type=int, default=1, help="problem seed (1)")
    a = ap.parse_args(argv)

    t0 = time.time()
    out = Path(a.out)
    levels = [int(x) for x in a.levels.split(",")]
    for n in levels:
        if n not in SHAPES:
            sys.exit(f"--levels: N must be one of {sorted(SHAPES)}")
    critics = [c.strip() for c in a.critics.split(",") if c.strip()]
    make_problems(out / "eval", n=max(a.n, a.n_prm), seed=a.seed)
    problems = out / "eval" / "problems.jsonl"
    notes = {}
    engines = {}
    for critic in critics:
        if critic == "gold":
            engines[critic] = (SimulatedCritic(problems), a.n)
        elif critic == "noisy":
            engines[critic] = (SimulatedCritic(problems, noise=a.noise), a.n)
        elif critic == "prm":
            prm, what = (a.prm, f"--prm {a.prm}") if a.prm else train_prm(out / "prm-train", a.base, a.n_train,
                                                                          a.train_steps, a.seed)  # fmt: skip
            notes["prm"] = what
            from visualprm.scoring import Scorer

            engines[critic] = (Scorer.from_pretrained(prm, batch_size=16), a.n_prm)
        else:
            sys.exit(f"unknown critic {critic!r} (gold, noisy, prm)")

    rows = []
    for critic, (engine, n_problems) in engines.items():
        for n in levels:
            w, k = SHAPES[n]
            run_dir = out / "runs" / f"{critic}-N{n}"
            bon = search_file(SyntheticPolicy(), engine, str(problems), str(run_dir / "bon"), "bon",
                              SearchConfig(width=n, expand=1), limit=n_problems, progress=False)  # fmt: skip
            spent = {}
            for line in (run_dir / "bon" / "samples.jsonl").read_text().splitlines():
                r = json.loads(line)
                spent[r["id"]] = r["cost"]["tokens"]
            budget = math.ceil(bon["methods"]["bon"]["tokens"])
            cfg = SearchConfig(width=w, expand=k, lookahead=a.lookahead)
            res = search_file(SyntheticPolicy(), engine, str(problems), str(run_dir / "search"), "beam,lookahead",
                              cfg, limit=n_problems, budgets=spent, progress=False)  # fmt: skip
            for method, m in {**bon["methods"], **res["methods"]}.items():
                row = {"critic": critic, "N": n, "budget": budget, "method": method}
                row["shape"] = (
                    f"N={n}"
                    if method == "bon"
                    else f"W={w},K={k}" + (f",D={a.lookahead}" if method == "lookahead" else "")
                )
                row.update({key: m[key] for key in ("problems", "accuracy", "oracle", "tokens", "requests", "rounds")})
                row.update(prm_solutions=m["prm_solutions"], budget_hit=m["budget_hit"], seconds=m["seconds"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)

    plot(rows, out / "search.png")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    results = {"rows": rows, "notes": notes, "machine": machine, "seconds": round(time.time() - t0, 1)}
    results["args"] = vars(a)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print("| critic | N | bon tokens (= budget) | method | shape | accuracy % | oracle % | tokens/problem | rounds | "
          "PRM solutions | budget hit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['critic']} | {r['N']} | {r['budget']} | {r['method']} | {r['shape']} | {100 * r['accuracy']:.1f} | "
            f"{100 * r['oracle']:.1f} | {r['tokens']:.1f} | {r['rounds']:.1f} | {r['prm_solutions']:.1f} | "
            f"{r['budget_hit']}/{r['problems']} |"
        )
    for k, v in notes.items():
        print(f"\n{k}: {v}")
    print(f"\nmachine: {machine}; {results['seconds']}s; -> {out / 'results.json'}, {out / 'search.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
