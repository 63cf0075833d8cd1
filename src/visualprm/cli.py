"""The `visualprm` command: parses options and calls one job per subcommand.

Nothing here computes anything: each handler imports its module inside the function (so `visualprm --help`
stays instant and needs no torch) and calls the job. Exit status: 0 success, 2 bad usage or bad input (one
line on stderr naming file, line and field), 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .schema import InputError


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


AGGREGATES = ("mean", "min", "max", "last", "prod")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument(
        "--no-system-prompt", action="store_true", help="leave out the VisualPRM system prompt (on by default)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=8, help="solutions per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=None, help="fail on sequences longer than this many tokens")
    p.add_argument(
        "--label-mode",
        choices=("auto", "value", "advantage"),
        default="auto",
        help="value: P(+); advantage: P(+) - P(-); auto: what the checkpoint records (default value)",
    )


# ---------------------------------------------------------------------------------------------------------------
# core: score, bon, make-tiny-model


def _cmd_score(a: argparse.Namespace) -> int:
    from .scoring import score_file

    return score_file(
        prm=a.prm,
        input_path=a.input,
        out_path=a.out,
        aggregate=a.aggregate,
        batch_size=a.batch_size,
        image_root=a.image_root,
        system_prompt=not a.no_system_prompt,
        device=a.device,
        dtype=a.dtype,
        max_steps=a.max_steps,
        max_length=a.max_length,
        label_mode=a.label_mode,
        splitter=a.splitter,
    )


def _cmd_bon(a: argparse.Namespace) -> int:
    from .bon import bon_file

    return bon_file(
        prm=a.prm,
        input_path=a.input,
        out_dir=a.out,
        aggregate=a.aggregate,
        batch_size=a.batch_size,
        image_root=a.image_root,
        system_prompt=not a.no_system_prompt,
        device=a.device,
        dtype=a.dtype,
        max_steps=a.max_steps,
        max_length=a.max_length,
        label_mode=a.label_mode,
        seed=a.seed,
        limit=a.limit,
        splitter=a.splitter,
    )


def _cmd_make_tiny_model(a: argparse.Namespace) -> int:
    from .tiny import make_tiny_model

    t0 = time.time()
    make_tiny_model(a.out, arch=a.arch, seed=a.seed, image_size=a.image_size)
    print(f"wrote a tiny random-weight {a.arch} PRM to {a.out} in {time.time() - t0:.1f}s")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualprm",
        description="Process reward models for multimodal reasoning (VisualPRM): generate Monte-Carlo process "
        "labels, train a PRM, score steps, pick the best of N, evaluate critics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("score", help="score every step of every solution with a PRM")
    p.description = (
        "Score every step of every solution in one forward pass per solution. Input: JSONL with "
        "question, images and steps (or a response, split on blank lines). Output: every input record with "
        "step_scores, score and aggregate added."
    )
    p.add_argument("--prm", required=True, help="PRM folder (model + processor), or a hub id where online")
    p.add_argument("--input", required=True, help="JSONL of solutions")
    p.add_argument("--out", required=True, help="output JSONL (written atomically)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="step scores -> one score (mean)")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--max-steps", type=int, default=12, help="when splitting a response: at most this many steps")
    p.add_argument("--splitter", default=None, help="custom step splitter: blank|markers|re:PATTERN|module:function")
    _add_model_options(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("bon", help="Best-of-N: pick the best candidate per problem (and evaluate with gold answers)")
    p.description = (
        "Score the N candidate responses of every problem and pick the argmax of the aggregate (ties: lower "
        "index). Writes OUT/picks.jsonl; with gold answers also the Best-of-N evaluation."
    )
    p.add_argument("--prm", required=True, help="PRM folder")
    p.add_argument("--input", required=True, help="JSONL: {id, images, question, answer?, responses: [..]}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="aggregate used for the pick (mean)")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--max-steps", type=int, default=12, help="at most this many steps per response")
    p.add_argument("--splitter", default=None, help="custom step splitter: blank|markers|re:PATTERN|module:function")
    p.add_argument("--seed", type=int, default=0, help="seed for random subsets and the random pick")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    _add_model_options(p)
    p.set_defaults(func=_cmd_bon)

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight PRM of a real architecture, offline")
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--arch",
        default="qwen2_vl",
        choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava", "idefics3"),
        help="architecture (default qwen2_vl)",
    )
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--image-size", type=int, default=56, help="input image side in pixels (default 56)")
    p.set_defaults(func=_cmd_make_tiny_model)

    p = sub.add_parser("make-synthetic", help="write the built-in synthetic visual task: problems + images")
    p.description = (
        "Generate counting and bar-chart problems whose answer needs the image, with exact gold answers and "
        "the hidden scene (for the synthetic policy and per-step ground truth). Writes OUT_DIR/problems.jsonl "
        "and OUT_DIR/images/*.png; deterministic under --seed."
    )
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--n", type=_positive_int, default=200, help="number of problems (default 200)")
    p.add_argument("--seed", type=int, default=1, help="problem seed (default 1)")
    p.add_argument("--image-size", type=int, default=112, help="image side in pixels (default 112)")
    p.add_argument("--kinds", default="shapes,bars", help="comma list of image kinds: shapes, bars (default both)")
    p.set_defaults(func=_cmd_make_synthetic)

    # Further commands are added below by their issues; keep one block per command.
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"visualprm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"visualprm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
