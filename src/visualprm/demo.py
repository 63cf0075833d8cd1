"""`visualprm demo`: the whole VisualPRM method in miniature on the built-in synthetic task, on a CPU.

Stages, each through the job function of the real command (called in-process) and each printed with the command
that re-runs it by hand:

1. `make-synthetic`: training problems and held-out problems (other seeds) with their images.
2. `annotate` (training problems): the scripted synthetic policy samples solutions; Monte-Carlo rollouts label
   every step prefix.
3. `build-data`: value labels (`+` iff mc > threshold) in the VisualPRM400K conversation layout, without the
   system prompt (see below).
4. `train`: fine-tune the shipped base model (basemodel.py: a 2M-parameter Qwen2-VL pre-trained to see this
   domain, never shown a PRM conversation) into a PRM.
5. `annotate` (held-out problems, 8 solutions each; cheap binary-search rollouts): the Best-of-8 candidates with
   the synthetic policy's per-step ground truth (`gold_step_correct`, `gold_error_kind`).
6. `bon`: Best-of-8 with the PRM (mean, min, max, ...), majority vote, random, pass@1, oracle, curves over N.
7. `bench`: a miniature VisualProcessBench from the held-out candidates (steps labelled by the ground truth,
   `data_source` = the kind of the solution's first error, or `correct`), scored with the PRM's scores from stage
   6, and again with every image replaced by a blank one: the text-only reference.

Outputs in DIR: `results.json` (exactly the keys of the issue, so runs compare: `bon.*`, `steps.*`, `mc.*`,
`seconds`), `details.json` (the text-only reference, configuration, per-stage seconds, commands, label
balance), `report.html`, and every intermediate file (`train/`, `heldout/`, `prm/`, `bon/`, `bench/`,
`bench_blank/`).

Step macro-F1 (the VisualProcessBench rule: a step is predicted correct when its score >= 0.5, F1 pooled over
steps, mean of the F1 of both classes) against process correctness: `steps.macro_f1` over all held-out
candidates; `steps.macro_f1_perception` over the correct solutions plus those whose first error is a perception
error (a misread count or bar); `steps.macro_f1_reasoning` likewise for reasoning errors.

Departures from the paper, each measured on this task:
- no system prompt (it would triple the sequence length on a CPU budget);
- value labels `+` iff mc > 0.25, not mc > 0: the scripted policy recovers from a misread by chance far more
  often than an MLLM (a second misread that cancels the first), so with 8 rollouts mc > 0 labelled 48% of
  the first perception errors `+` (agreement with the truth 82%); mc > 0.25 labels 8% of them `+` (91%);
- the loss over the label tokens only (`train --label-loss labels`): the base model has never written `+` or
  `-`, its full-vocabulary loss starts near 20 nats, and the large early updates wiped out what it could see
  (the PRM came out exactly as good as the text-only reference);
- lr 1e-4 and several epochs (the paper's 1e-5 and one epoch are for an 8B model on 400K conversations; 1e-3
  also wiped out the base model's perception; 3e-4 trained slower than 1e-4, and 2e-4 was no better);
- training shows `+` in every earlier assistant turn, as scoring does (`train --context-labels placeholder`),
  not the true labels (teacher forcing, the paper's): with the true labels in the input the PRM learnt "after a
  `-`, predict `-`", which scoring never offers (seed 101, 100 held-out problems, a base model whose phase 3 also
  showed its answers: 89% training label accuracy, 58% on the same conversations scored as `score` scores them;
  step macro-F1 0.554, against 0.749 trained with placeholders);
- the base model was pre-trained to check a running list of statements, its input too holding a placeholder in
  every answer turn (basemodel.py, phase 3). Seed 101, 500 held-out problems, step macro-F1: two-phase base
  0.708 (the PRM judged each step on its own: a correct calculation was called correct 1% of the time, a true
  claim after a misread correct 54%); phase 3 with its answers in the input 0.728; phase 3 with placeholders
  (its step-500 checkpoint) 0.874;
- the base model was then pre-trained to check calculations and final answers (basemodel.py, phase 4, 8,500
  steps in four runs): seed 101, PRM mean Best-of-8 77.8 against 72.8 after 6,000 steps (2-core AMD EPYC VM) and
  60.8 without phase 4 (majority 59.6; on the Intel Xeon VM 1,000 steps gave 61.4, 3,500 67.8, 6,000 73.0), step
  macro-F1 0.944 against 0.877 without;
- the held-out candidates are sampled at the policy's one temperature (the synthetic policy has no greedy
  mode, so pass@1 is its first sample).

This module computes no metrics of its own beyond pooling bench's per-source counts, and does not build the base
model (basemodel.py).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from .schema import InputError, read_jsonl, write_json, write_jsonl

# Sizes of a run. `default`: <= 10 minutes on a 2-core CPU (two at once: 408-442 s AMD EPYC VM, 283-297 s Intel
# Xeon VM); `quick`: <= 3 minutes (CI).
# Training is what costs; held-out scoring is cheap (500 problems x 8: about 100 s), so both evaluate on many
# problems: a Best-of-8 figure on 100 problems has a standard error of 5 points, the size of the margins it is
# read for (2 on 500), and on 40 the quick run's image gap moved by 0.05 between thread counts and CPUs
# (benchmarks/demo_spread.py, benchmarks/demo_seeds.py).
_DEFAULT = dict(
    train_problems=600,
    solutions=4,
    rollouts=8,
    threshold=0.25,
    label_loss="labels",
    context_labels="placeholder",
    train_policy="synthetic",  # writes the training solutions (the held-out candidates are always `synthetic`'s)
    epochs=3.0,
    lr=1e-4,
    batch_size=8,
    heldout_problems=500,
    candidates=8,
    torch_threads=1,  # training and scoring: 1 is fastest for this model on a small CPU (figures move a little)
)
SIZES = {"default": _DEFAULT, "quick": {**_DEFAULT, "train_problems": 240, "heldout_problems": 200}}
TRAIN_SEED, HELDOUT_SEED = 1000, 2000  # problem seeds are these + --seed
HELDOUT_ROLLOUTS = 4  # binary-search rollouts per held-out candidate: only its ground truth matters for Best-of-N
KINDS = ("perception", "reasoning")


class _Stages:
    """Prints each stage with its re-run command, times it, and keeps the commands for details.json."""

    def __init__(self, n: int):
        self.n, self.k, self.seconds, self.commands = n, 0, {}, {}
        self.t0 = time.time()

    def start(self, name: str, *commands: list[str]) -> None:
        self.k += 1
        self.name, self.t = name, time.time()
        self.commands[name] = [shlex.join(c) for c in commands]
        print(f"\n[{self.k}/{self.n}] {name}  (elapsed {time.time() - self.t0:.0f}s)", flush=True)
        for c in self.commands[name]:
            print(f"    $ {c}", flush=True)

    def done(self, note: str = "") -> None:
        dt = time.time() - self.t
        self.seconds[self.name] = round(dt, 1)
        print(f"    done in {dt:.1f}s{'; ' + note if note else ''}", flush=True)


def candidates_from_annotated(annotated: list[dict]) -> list[dict]:
    """Best-of-N candidate records (one per problem, solutions in sampled order) from annotate's lines."""
    by: dict[str, list[dict]] = {}
    for r in annotated:
        by.setdefault(r["problem_id"], []).append(r)
    out = []
    for pid, sols in by.items():
        sols.sort(key=lambda r: r["solution_index"])
        first = sols[0]
        out.append(
            {
                "id": pid,
                "images": first["images"],
                "question": first["question"],
                "answer": first["answer"],
                "source": "synthetic",
                "responses": [[s["text"] for s in r["steps"]] for r in sols],
                "correct": [bool(r["correct"]) for r in sols],
                "extracted": [r.get("extracted") for r in sols],
                "gold_step_correct": [r["gold_step_correct"] for r in sols],
                "gold_error_kind": [r["gold_error_kind"] for r in sols],
            }
        )
    return out


def heldout_candidates(problems: str, annotated: Path, out: Path, n: int, seed: int, progress: bool = False) -> list:
    """Sample `n` Best-of-N candidates per held-out problem with the synthetic policy, with their ground truth and
    cheap Monte-Carlo values (`annotate --strategy binary --rollouts HELDOUT_ROLLOUTS`), into `annotated` (a fresh
    file) and the candidate records into `out`; returns the records. Stage 5 of the demo, and
    benchmarks/demo_curve.py for more candidates."""
    from .montecarlo import annotate_file

    annotated.unlink(missing_ok=True)  # a fresh run (annotate would resume into an existing file)
    annotate_file(
        problems,
        "synthetic",
        str(annotated),
        solutions=n,
        rollouts=HELDOUT_ROLLOUTS,
        strategy="binary",
        seed=seed,
        progress=progress,
    )
    cands = candidates_from_annotated([r for _, r in read_jsonl(annotated)])
    write_jsonl(out, cands)
    return cands


def first_error_kind(kinds: list) -> str:
    """`perception` / `reasoning` (the kind of the first wrong step) or `correct`."""
    return next((k for k in kinds if k), "correct")


def bench_records(cands: list[dict], image: str | None = None) -> list[dict]:
    """VisualProcessBench records, one per candidate solution (`image` replaces every image when given)."""
    out = []
    for c in cands:
        for j, (steps, gold, kinds) in enumerate(zip(c["responses"], c["gold_step_correct"], c["gold_error_kind"])):
            out.append(
                {
                    "id": f"{c['id']}-{j}",
                    "image": [image] if image else c["images"],
                    "question": c["question"],
                    "answer": c["answer"],
                    "response": {"steps": steps, "process_correctness": [1 if g else -1 for g in gold]},
                    "data_source": first_error_kind(kinds),
                    "policy_model": "synthetic",
                }
            )
    return out


def pooled_f1(by_source: dict, sources: tuple[str, ...]) -> float | None:
    """Macro-F1 pooled over the step counts of some of bench's sources."""
    from .bench import vpb_from_counts

    counts = [sum(by_source[s][k] for s in sources if s in by_source) for k in ("tp", "fp", "fn", "tn")]
    return vpb_from_counts(*counts)["macro_f1"]


def step_figures(bench_results: dict) -> dict:
    by = bench_results["by_source"]
    return {
        "macro_f1": bench_results["overall"]["macro_f1"],
        "macro_f1_perception": pooled_f1(by, ("correct", "perception")),
        "macro_f1_reasoning": pooled_f1(by, ("correct", "reasoning")),
    }


def _r(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


def run_demo(
    out: str = "demo-out", quick: bool = False, seed: int = 0, base: str | None = None, sizes: dict | None = None
) -> dict:
    """Run every stage into `out`; returns the results dict (also written to OUT/results.json). `sizes`
    overrides entries of SIZES (tests)."""
    import os

    from . import basemodel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    size = {**SIZES["quick" if quick else "default"], **(sizes or {})}
    base = str(base or basemodel.shipped_path())
    if not (Path(base) / "config.json").is_file():
        raise InputError("no base model here (build one with `visualprm make-base-model`)", base, field="base")
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    vp = "visualprm"
    st = _Stages(7)
    tr, ho = d / "train", d / "heldout"
    print(
        f"visualprm demo{' --quick' if quick else ''} --seed {seed}: {size['train_problems']} training problems, "
        f"{size['heldout_problems']} held-out problems x {size['candidates']} candidates -> {d}"
    )

    # 1. problems
    from .synthetic import make_problems

    st.start(
        "make-synthetic",
        [vp, "make-synthetic", str(tr), "--n", str(size["train_problems"]), "--seed", str(TRAIN_SEED + seed)],
        [vp, "make-synthetic", str(ho), "--n", str(size["heldout_problems"]), "--seed", str(HELDOUT_SEED + seed)],
    )
    make_problems(tr, n=size["train_problems"], seed=TRAIN_SEED + seed)
    make_problems(ho, n=size["heldout_problems"], seed=HELDOUT_SEED + seed)
    st.done()

    # 2. Monte-Carlo labels for the training problems
    from .montecarlo import annotate_file

    ann = tr / "annotated.jsonl"
    ann.unlink(missing_ok=True)  # a fresh run (annotate would resume into an existing file)
    sol, roll = str(size["solutions"]), str(size["rollouts"])
    st.start(
        "annotate (training problems)",
        [vp, "annotate", "--problems", str(tr / "problems.jsonl"), "--policy", size["train_policy"], "--out", str(ann)]
        + ["--solutions", sol, "--rollouts", roll, "--seed", str(seed)],
    )
    mc = annotate_file(
        str(tr / "problems.jsonl"),
        size["train_policy"],
        str(ann),
        solutions=size["solutions"],
        rollouts=size["rollouts"],
        seed=seed,
        progress=False,
    )
    st.done()

    # 3. training conversations
    from .builddata import build_data_file

    data = tr / "train.jsonl"
    thr = size["threshold"]
    st.start(
        "build-data",
        [vp, "build-data", "--annotated", str(ann), "--out", str(data), "--threshold", str(thr), "--no-system-prompt"],
    )
    built = build_data_file(str(ann), str(data), labels="value", threshold=thr, system_prompt=False)
    st.done()

    # 4. fine-tune the base model into a PRM
    from .train import TrainConfig, train

    prm = d / "prm"
    opts = dict(epochs=size["epochs"], lr=size["lr"], batch_size=size["batch_size"], seed=seed)
    opts["label_loss"], opts["context_labels"] = size["label_loss"], size["context_labels"]
    cfg = TrainConfig(
        data=str(data),
        model=base,
        out=str(prm),
        eval_split=0.0,
        save_steps=100000,
        logging_steps=20,
        torch_threads=size["torch_threads"],
        overwrite=True,
        **opts,
    )
    st.start(
        "train",
        [vp, "train", "--data", str(data), "--model", base, "--out", str(prm), "--eval-split", "0"]
        + ["--epochs", str(opts["epochs"]), "--lr", str(opts["lr"]), "--batch-size", str(opts["batch_size"])]
        + ["--seed", str(seed), "--label-loss", opts["label_loss"], "--context-labels", opts["context_labels"]]
        + ["--torch-threads", str(size["torch_threads"])]
        + ["--overwrite"],
    )
    trained = train(cfg)
    st.done(f"{trained['summary'].get('global_step')} optimizer steps")

    # 5. held-out candidates with their ground truth
    hann = ho / "annotated.jsonl"
    st.start(
        "annotate (held-out candidates)",
        [vp, "annotate", "--problems", str(ho / "problems.jsonl"), "--policy", "synthetic", "--out", str(hann)]
        + ["--solutions", str(size["candidates"]), "--rollouts", str(HELDOUT_ROLLOUTS), "--strategy", "binary"]
        + ["--seed", str(seed + 1)],
    )
    cands = heldout_candidates(str(ho / "problems.jsonl"), hann, ho / "candidates.jsonl", size["candidates"], seed + 1)
    st.done(f"{len(cands)} problems -> {ho / 'candidates.jsonl'}")

    # 6. Best-of-N
    from .bon import bon_file
    from .scoring import Scorer

    scorer = Scorer.from_pretrained(str(prm), batch_size=16)
    st.start("bon", [vp, "bon", "--prm", str(prm), "--input", str(ho / "candidates.jsonl"), "--out", str(d / "bon")])
    bon_file(str(prm), str(ho / "candidates.jsonl"), str(d / "bon"), seed=seed, engine=scorer, report=True)
    bon_res = json.loads((d / "bon" / "results.json").read_text())
    st.done()

    # 7. the miniature VisualProcessBench, with the images and with a blank image
    from PIL import Image

    from .bench import run_bench

    write_jsonl(ho / "bench.jsonl", bench_records(cands))
    Image.new("RGB", (112, 112), (255, 255, 255)).save(ho / "blank.png")
    write_jsonl(ho / "bench_blank.jsonl", bench_records(cands, "blank.png"))
    picks = [r for _, r in read_jsonl(d / "bon" / "picks.jsonl")]
    write_jsonl(d / "bench" / "scores.jsonl", [{"step_scores": s} for p in picks for s in p["step_scores"]])
    st.start(
        "bench (with the image, and the text-only reference)",
        [vp, "bench", "--bench", str(ho / "bench.jsonl"), "--scores", str(d / "bench" / "scores.jsonl")]
        + ["--out", str(d / "bench")],
        [vp, "bench", "--bench", str(ho / "bench_blank.jsonl"), "--prm", str(prm), "--out", str(d / "bench_blank")],
    )
    run_bench([str(ho / "bench.jsonl")], str(d / "bench"), scores=str(d / "bench" / "scores.jsonl"), bootstrap=200)
    run_bench([str(ho / "bench_blank.jsonl")], str(d / "bench_blank"), engine=scorer, bootstrap=200)
    bench_res = json.loads((d / "bench" / "results.json").read_text())
    blank_res = json.loads((d / "bench_blank" / "results.json").read_text())
    st.done()

    # results
    acc, curves = bon_res["accuracy"], bon_res["curves"]
    steps_img, steps_blank = step_figures(bench_res), step_figures(blank_res)
    gold_pairs = [
        (s["mc"] > thr, g) for _, r in read_jsonl(ann) for s, g in zip(r["steps"], r.get("gold_step_correct") or [])
    ]
    seconds = round(time.time() - st.t0, 1)
    results = {
        "bon": {
            "n": size["candidates"],
            "pass_at_1": _r(acc["pass@1"]),
            "majority": _r(acc["majority_vote"]),
            "prm_mean": _r(acc["prm_mean"]),
            "prm_min": _r(acc["prm_min"]),
            "prm_max": _r(acc["prm_max"]),
            "oracle": _r(acc["oracle"]),
            "random": _r(acc["random"]),
            "curve": {
                "n": curves["n"],
                **{m: [_r(v) for v in curves[m]] for m in curves if m not in ("n", "subsets")},
            },
        },
        "steps": {k: _r(v) for k, v in steps_img.items()},
        "mc": {
            "label_agreement": _r(sum(a == b for a, b in gold_pairs) / max(1, len(gold_pairs))),
            "rollouts": int(mc["rollouts"]),
        },
        "seconds": seconds,
    }
    details = {
        "config": {"quick": quick, "seed": seed, "base_model": base, **size},
        "text_only_reference": {
            "what": "the same PRM, every image replaced by a blank white one",
            **{k: _r(v) for k, v in steps_blank.items()},
        },
        "steps_by_source": {
            k: {kk: v[kk] for kk in ("macro_f1", "n_steps", "n_records")} for k, v in bench_res["by_source"].items()
        },
        "bon_all_methods": {k: _r(v) for k, v in acc.items()},
        "build_data": {k: built[k] for k in ("records_out", "steps", "label_counts") if k in built},
        "train": trained.get("summary", {}),
        "stage_seconds": st.seconds,
        "commands": st.commands,
    }
    write_json(d / "results.json", results)
    write_json(d / "details.json", details)
    from .demo_report import write_demo_report

    write_demo_report(d, results, details, bon_res)
    print(format_summary(results, details))
    print(f"\nwrote {d / 'results.json'}, {d / 'details.json'} and {d / 'report.html'} in {seconds:.0f}s")
    return results


def format_summary(results: dict, details: dict) -> str:
    b, s, t = results["bon"], results["steps"], details["text_only_reference"]
    lines = [
        f"\nBest-of-{b['n']} on held-out problems (accuracy %):",
        f"  pass@1 {100 * b['pass_at_1']:.1f} | majority vote {100 * b['majority']:.1f}"
        f" | random {100 * b['random']:.1f}"
        f" | PRM mean {100 * b['prm_mean']:.1f}, min {100 * b['prm_min']:.1f}, max {100 * b['prm_max']:.1f}"
        f" | oracle {100 * b['oracle']:.1f}",
        "Step macro-F1 vs the synthetic ground truth (PRM | text-only reference):",
        f"  overall {s['macro_f1']:.3f} | {t['macro_f1']:.3f};  perception errors {s['macro_f1_perception']:.3f} | "
        f"{t['macro_f1_perception']:.3f};  reasoning errors {s['macro_f1_reasoning']:.3f} | "
        f"{t['macro_f1_reasoning']:.3f}",
        f"MC labels: agreement with the ground truth {100 * results['mc']['label_agreement']:.1f}%, "
        f"{results['mc']['rollouts']} rollouts",
        "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in details["stage_seconds"].items()),
    ]
    return "\n".join(lines)
