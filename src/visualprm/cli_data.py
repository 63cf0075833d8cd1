"""The `visualprm` commands of the data pipeline: make-synthetic, grade, annotate, build-data.

Like cli.py, nothing here computes anything: each handler imports its module inside the function and calls
the job; `add_data_commands` adds the parsers to the `visualprm` command (cli.py).
"""

from __future__ import annotations

import argparse
import time

from . import options as opt
from .cli_common import POLICY_HELP
from .cli_common import positive_int as _positive_int


def _cmd_make_synthetic(a: argparse.Namespace) -> int:
    from collections import Counter

    from .synthetic import make_problems

    t0 = time.time()
    kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
    recs = make_problems(a.out_dir, n=a.n, seed=a.seed, image_size=a.image_size, kinds=kinds)
    by_kind = Counter(r["scene"]["kind"] for r in recs)
    kinds_txt = ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items()))
    print(
        f"wrote {len(recs)} problems ({kinds_txt}) to {a.out_dir}/problems.jsonl and {a.out_dir}/images/ "
        f"in {time.time() - t0:.1f}s"
    )
    return 0


def _cmd_grade(a: argparse.Namespace) -> int:
    from .grade import grade_file

    grade_file(a.input, a.out, mode=a.mode, checker=a.checker, choice_fallback=a.choice_fallback)
    return 0


def _cmd_annotate(a: argparse.Namespace) -> int:
    from .montecarlo import annotate_file

    opts = {"retries": a.retries, "timeout": a.timeout, "device": a.device, "dtype": a.dtype}
    opts["batch_size"] = a.batch_size
    if a.policy.startswith("hf:"):
        from .jobs import set_torch_threads

        set_torch_threads(a.torch_threads, a.device)
    if a.ray is not None:  # the same job on a Ray cluster (ray_jobs.py)
        from functools import partial

        from .ray_jobs import annotate_ray

        annotate_file = partial(annotate_ray, address=a.ray, num_gpus_per_engine=a.num_gpus_per_engine)
    annotate_file(
        problems=a.problems,
        policy=a.policy,
        out=a.out,
        solutions=a.solutions,
        rollouts=a.rollouts,
        max_steps=a.max_steps,
        strategy=a.strategy,
        temperature=a.temperature,
        top_k=a.top_k or None,
        top_p=a.top_p,
        max_tokens=a.max_tokens,
        concurrency=a.concurrency,
        shard=a.shard,
        seed=a.seed,
        prompt=a.prompt,
        checker=a.checker,
        splitter=a.splitter,
        image_root=a.image_root,
        policy_options=opts,
        first_round=a.first_round,
        threshold=a.threshold,
    )
    return 0


def _cmd_build_data(a: argparse.Namespace) -> int:
    from .builddata import build_data_file

    build_data_file(
        annotated_path=a.annotated,
        out_path=a.out,
        labels=a.labels,
        threshold=a.threshold,
        orm=a.orm,
        system_prompt=not a.no_system_prompt,
        image_root=a.image_root,
        dedup=a.dedup,
    )
    return 0


def add_data_commands(sub) -> None:
    """Add the data-pipeline subcommands to `visualprm`'s subparsers."""
    p = sub.add_parser("make-synthetic", help="write the built-in synthetic visual task: problems + images")
    p.description = (
        "Generate counting and bar-chart problems whose answer needs the image, with exact gold answers and "
        "the hidden scene (for the synthetic policy and per-step ground truth). Writes OUT_DIR/problems.jsonl "
        "and OUT_DIR/images/*.png; deterministic under --seed."
    )
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--n", type=_positive_int, default=200, help="number of problems")
    p.add_argument("--seed", type=int, default=1, help="problem seed")
    p.add_argument("--image-size", type=int, default=112, help="image side in pixels")
    p.add_argument("--kinds", default="shapes,bars", help="comma list of image kinds: shapes, bars")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("grade", help="check model answers against gold answers")
    p.description = (
        "Extract the final answer from every record's response and check it against its gold answer. Input: "
        "JSONL, a JSON list, or a JSON object keyed by id (MathVista's output files), with response and answer "
        "(options or choices for multiple choice). Output: every record with correct, extracted and parsed "
        "added (JSONL, or JSON in the input's shape when --out ends in .json). Prints accuracy and the number "
        "of unparseable answers."
    )
    p.add_argument("--input", required=True, help="records with response and answer")
    p.add_argument("--out", required=True, help="output file (written atomically)")
    p.add_argument(
        "--mode",
        choices=("auto", "exact", "numeric", "choice", "math", "vqa", "relaxed", "anls"),
        default="auto",
        help="answer check for every record; auto: per record from mode, question_type, options, answer_type, "
        "source and the gold answer's form",
    )
    p.add_argument(
        "--checker", default=None, help="your own checker: module:function or file.py:function (default: built-in)"
    )
    p.add_argument(
        "--choice-fallback",
        choices=("none", "closest"),
        default="none",
        help="multiple choice naming no option: none = wrong; closest = the option nearest by edit "
        "distance, as MathVista's official scorer does (still counted unparseable)",
    )
    p.set_defaults(func=_cmd_grade)

    p = sub.add_parser("annotate", help="Monte-Carlo step labels: sample solutions, roll out every step prefix")
    p.description = (
        "Sample N solutions per problem from a policy, split them into steps, continue step prefixes K times, "
        "check every final answer and write one line per solution with mc per step (VisualPRM400K-Raw style). "
        "Appends problem by problem; re-running the same command resumes."
    )
    p.add_argument("--problems", required=True, help="JSONL: {id, images, question, answer, options?, source?}")
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--out", required=True, help="output JSONL (appended; resumed when it exists)")
    p.add_argument("--solutions", type=_positive_int, default=4, help="solutions sampled per problem")
    p.add_argument("--rollouts", type=_positive_int, default=16, help="continuations per step prefix")
    p.add_argument("--max-steps", type=_positive_int, default=12, help="at most this many steps per solution")
    p.add_argument(
        "--strategy",
        choices=("all", "early-stop", "binary", "adaptive", "adaptive-early-stop", "adaptive-binary"),
        default="all",
        help="all: every step; early-stop: stop at the first mc=0; binary: binary search for it; adaptive[-X]: "
        "the same labels at --threshold as all [X], drawing a step's rollouts only until its label is decided",
    )
    p.add_argument(
        "--threshold",
        type=opt.number_in(0, 1, hi_open=True),
        default=0.0,
        help="adaptive: the value-label threshold (+ iff mc > it) to decide; recorded, use it in build-data",
    )
    p.add_argument(
        "--first-round",
        type=_positive_int,
        default=None,
        help="continuations per request (block); the adaptive strategies draw them block by block: larger means "
        "fewer requests and rounds, more rollouts. Same N, same continuations in every strategy "
        "(default: 1 for adaptive, K otherwise)",
    )
    p.add_argument("--temperature", type=opt.NONNEG, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=opt.NONNEG_INT, default=50, help="top-k sampling, 0 = off (hosted APIs need 0)")
    p.add_argument("--top-p", type=opt.number_in(0, 1, lo_open=True), default=None, help="top-p sampling (off)")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, help="new tokens per generation")
    p.add_argument(
        "--concurrency", type=_positive_int, default=8, help="problems at once; openai: HTTP requests in flight"
    )
    p.add_argument("--shard", default=None, help="I/N: only problems at positions I, I+N, ... (0 <= I < N)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each problem's randomness derives from it")
    p.add_argument(
        "--prompt", choices=("final-answer", "boxed"), default="final-answer", help="answer format asked for"
    )
    p.add_argument("--checker", default=None, help="answer checker module:function or file.py:function (built-in)")
    p.add_argument(
        "--splitter", default=None, help="step splitter: blank|markers|re:PATTERN|module:function (default: blank)"
    )
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--retries", type=opt.NONNEG_INT, default=6, help="openai: retries per request on 429/5xx/timeouts")
    p.add_argument("--timeout", type=opt.POSITIVE, default=600.0, help="openai: seconds per request")
    p.add_argument("--device", default=None, help="hf: torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="hf: float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="hf: sequences per generate call")
    p.add_argument("--torch-threads", type=_positive_int, default=None, help="hf: CPU threads for torch (as in score)")
    from .ray_jobs import add_ray_options

    add_ray_options(p, "engine")
    p.set_defaults(func=_cmd_annotate)

    p = sub.add_parser("build-data", help="annotated solutions -> PRM training conversations (VisualPRM400K layout)")
    p.description = (
        "Turn Monte-Carlo annotated solutions into training conversations: value labels (+ iff mc > threshold), "
        "advantage labels (+/=/- from mc_i - mc_{i-1}, mc_{-1} = the problem's pass rate), soft labels (mc kept "
        "as the target) or ORM data (--orm). Image paths are written relative to the output file. Prints records, "
        "steps, label balance and dropped records."
    )
    p.add_argument("--annotated", required=True, help="annotated JSONL (annotate's output or VisualPRM400K-Raw)")
    p.add_argument("--out", required=True, help="output JSONL (written atomically)")
    p.add_argument("--labels", choices=("value", "advantage", "soft"), default="value", help="label kind")
    p.add_argument(
        "--threshold",
        type=opt.number_in(0, 1, hi_open=True),
        default=0.0,
        help="value/soft: + iff mc > threshold",
    )
    p.add_argument("--orm", action="store_true", help="ORM data: all steps in one turn, the last step's mc")
    p.add_argument("--no-system-prompt", action="store_true", help="leave out the VisualPRM system turn")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--dedup", action="store_true", help="drop repeated identical solutions (kept by default)")
    p.set_defaults(func=_cmd_build_data)
