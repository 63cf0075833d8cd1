"""The `visualprm` command: parses options and calls one job per subcommand.

The core commands (score, bon, make-tiny-model) are defined here; the data pipeline's in cli_data.py, the model
commands' (serve, bench, train, search, make-base-model, demo) in cli_model.py, shared options in cli_common.py.
Nothing here computes anything: each handler imports its module inside the function (so `visualprm --help`
stays instant and needs no torch) and calls the job. Exit status: 0 success, 2 bad usage or bad input (one
line on stderr naming file, line and field), 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import options as opt
from . import package_version
from .boneval import add_bon_eval_command
from .cli_common import (  # noqa: F401 (AGGREGATES, TORCH_THREADS_HELP: importable from here as before)
    AGGREGATES,
    TORCH_THREADS_HELP,
    use_defaults_help,
)
from .cli_common import add_model_options as _add_model_options
from .cli_common import is_local as _local
from .cli_common import positive_int as _positive_int
from .cli_common import set_threads as _threads
from .cli_data import add_data_commands
from .cli_model import add_model_commands
from .convert import add_convert_command
from .ray_jobs import add_ray_options
from .remote_prm import add_engine_options, engine_options, system_prompt_arg
from .schema import InputError

# ---------------------------------------------------------------------------------------------------------------
# core: score, bon, make-tiny-model


def _cmd_score(a: argparse.Namespace) -> int:
    from .scoring import score_file

    if a.ray is not None:  # the same job on a Ray cluster (ray_score.py)
        from functools import partial

        from .ray_score import score_ray

        score_file = partial(score_ray, address=a.ray, num_gpus_per_scorer=a.num_gpus_per_scorer)

    _threads(a, local_model=_local(a.prm))
    return score_file(
        prm=a.prm,
        input_path=a.input,
        out_path=a.out,
        aggregate=a.aggregate,
        batch_size=a.batch_size,
        image_root=a.image_root,
        system_prompt=system_prompt_arg(a),
        device=a.device,
        dtype=a.dtype,
        max_steps=a.max_steps,
        max_length=a.max_length,
        label_mode=a.label_mode,
        splitter=a.splitter,
        api_key=a.api_key,
        engine_options=engine_options(a),
    )


def _cmd_bon(a: argparse.Namespace) -> int:
    from .bon import bon_file

    if a.ray is not None:  # the same job on a Ray cluster (ray_score.py)
        from functools import partial

        from .ray_score import bon_ray

        bon_file = partial(bon_ray, address=a.ray, num_gpus_per_scorer=a.num_gpus_per_scorer)

    _threads(a, local_model=_local(a.prm))
    return _bon(a, bon_file)


def _bon(a: argparse.Namespace, bon_file) -> int:
    return bon_file(
        prm=a.prm,
        input_path=a.input,
        out_dir=a.out,
        aggregate=a.aggregate,
        batch_size=a.batch_size,
        image_root=a.image_root,
        system_prompt=system_prompt_arg(a),
        device=a.device,
        dtype=a.dtype,
        max_steps=a.max_steps,
        max_length=a.max_length,
        label_mode=a.label_mode,
        seed=a.seed,
        limit=a.limit,
        splitter=a.splitter,
        orm=a.orm,
        judge=a.judge,
        concurrency=a.concurrency,
        n_subsets=a.subsets,
        no_image=a.no_image,
        checker=a.checker,
        share_prefix=not a.no_share_prefix,
        max_batch_tokens=a.max_batch_tokens,
        api_key=a.api_key,
        engine_options=engine_options(a),
    )


def _cmd_make_tiny_model(a: argparse.Namespace) -> int:
    from .tiny import make_tiny_model

    t0 = time.time()
    make_tiny_model(a.out, arch=a.arch, seed=a.seed, image_size=a.image_size)
    print(f"wrote a tiny random-weight {a.arch} PRM to {a.out} in {time.time() - t0:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visualprm",
        description="Process reward models for multimodal reasoning (VisualPRM): generate Monte-Carlo process "
        "labels, train a PRM, score steps, pick the best of N, evaluate critics.",
    )
    parser.add_argument("--version", action="version", version=f"visualprm {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("score", help="score every step of every solution with a PRM")
    p.description = (
        "Score every step of every solution in one forward pass per solution. Input: JSONL with "
        "question, images and steps (or a response, split on blank lines). Output: every input record with "
        "step_scores, score and aggregate added."
    )
    p.add_argument(
        "--prm", required=True, help="PRM folder (model + processor), or openai:MODEL@URL[,URL2..] (a served PRM)"
    )
    p.add_argument("--input", required=True, help="JSONL of solutions")
    p.add_argument("--out", required=True, help="output JSONL (written atomically)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="step scores -> one score")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument(
        "--max-steps", type=opt.POSITIVE_INT, default=12, help="when splitting a response: at most this many steps"
    )
    p.add_argument(
        "--splitter",
        default=None,
        help="custom step splitter: blank|markers|re:PATTERN|module:function (default: blank)",
    )
    _add_model_options(p)
    add_engine_options(p)
    add_ray_options(p, "scorer")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("bon", help="Best-of-N: pick the best candidate per problem (and evaluate with gold answers)")
    p.description = (
        "Score the N candidate responses of every problem and pick the argmax of the aggregate (ties: lower "
        "index). Writes OUT/picks.jsonl; with gold answers also the Best-of-N evaluation."
    )
    p.add_argument("--prm", default=None, help="PRM folder, or openai:MODEL@URL[,URL2..] (a served PRM)")
    p.add_argument("--judge", default=None, help="instead of a PRM: an MLLM judge, openai:MODEL@URL")
    p.add_argument(
        "--orm", default=None, help="also evaluate an ORM: a folder, or 'prm' (the PRM, whole solution as one step)"
    )
    p.add_argument("--input", required=True, help="JSONL: {id, images, question, answer?, responses: [..]}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="aggregate used for the pick")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--max-steps", type=opt.POSITIVE_INT, default=12, help="at most this many steps per response")
    p.add_argument(
        "--splitter",
        default=None,
        help="custom step splitter: blank|markers|re:PATTERN|module:function (default: blank)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random subsets and the random pick")
    p.add_argument("--limit", type=opt.POSITIVE_INT, default=None, help="only the first N problems")
    p.add_argument("--subsets", type=_positive_int, default=32, help="random subsets per N on the curves")
    p.add_argument(
        "--checker",
        default=None,
        help="your own answer checker: module:function or file.py:function (default: built-in)",
    )
    p.add_argument(
        "--no-share-prefix", action="store_true", help="score every candidate in full (no prefix-shared groups)"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=_positive_int,
        default=None,
        help="prefix sharing: rows x tokens per batch bound (default: none)",
    )
    p.add_argument("--no-image", action="store_true", help="score without the images (text-only scorer)")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="judge requests in flight")
    _add_model_options(p)
    add_engine_options(p)
    add_ray_options(p, "scorer")
    p.set_defaults(func=_cmd_bon)

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight PRM of a real architecture, offline")
    p.description = (
        "Build a few-MB model of a real architecture (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, LLaVA, "
        "Idefics3) with random weights and its processor, offline, and save it as a PRM folder. Its scores mean "
        "nothing: it is for trying the commands and for tests."
    )
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--arch",
        default="qwen2_vl",
        choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava", "idefics3"),
        help="architecture",
    )
    p.add_argument("--seed", type=int, default=0, help="weight seed")
    p.add_argument("--image-size", type=opt.POSITIVE_INT, default=56, help="input image side in pixels")
    p.set_defaults(func=_cmd_make_tiny_model)

    add_data_commands(sub)
    add_bon_eval_command(sub)
    add_convert_command(sub)

    add_model_commands(sub)

    # Further commands are added below by their issues; keep one block per command.
    for p in sub.choices.values():  # every command: no progress bars with --quiet
        p.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway off a terminal)")
    use_defaults_help(parser)  # every option of every command shows its default in --help
    return parser


# What each writing command writes: (argument, "file" | "dir"), checked by main before any work.
OUTPUTS = {
    "score": ("out", "file"),
    "grade": ("out", "file"),
    "annotate": ("out", "file"),
    "build-data": ("out", "file"),
    "bon": ("out", "dir"),
    "bench": ("out", "dir"),
    "search": ("out", "dir"),
    "train": ("out", "dir"),
    "demo": ("out", "dir"),
    "make-synthetic": ("out_dir", "dir"),
    "make-tiny-model": ("out", "dir"),
    "make-base-model": ("out", "dir"),
    "bon-eval": ("out", "dir"),
}
RESUMING = ("annotate", "score", "bon", "bon-eval")  # a re-run keeps their finished work


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # Hugging Face's save/load bars; ours say more
    from .jobs import prefer_passive_wait

    prefer_passive_wait()  # before torch loads: OpenMP threads sleep instead of spinning (jobs.py, measured)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .jobs import set_quiet
    from .schema import check_output

    set_quiet(getattr(args, "quiet", False))
    try:
        name, kind = OUTPUTS.get(args.command, (None, None))
        if name and getattr(args, name, None):
            check_output(getattr(args, name), kind, "--out" if name == "out" and kind == "file" else "output")
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"visualprm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; finished work is saved: re-run to resume" if args.command in RESUMING else ""
        print(f"visualprm {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:  # a server this command talks to: one line, never a traceback
        from .jobs import service_failure

        failed = service_failure(e)
        if failed is None:
            raise
        line, code = failed
        if args.command in RESUMING and code == 1:
            line += "; finished work is saved: re-run to resume"
        print(f"visualprm {args.command}: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
