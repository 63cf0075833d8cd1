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

from . import package_version
from .cli_data import add_data_commands
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
        orm=a.orm,
        judge=a.judge,
        concurrency=a.concurrency,
        n_subsets=a.subsets,
        no_image=a.no_image,
        checker=a.checker,
        share_prefix=not a.no_share_prefix,
        max_batch_tokens=a.max_batch_tokens,
    )


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench
    from .openai_client import ServerUnavailable

    try:
        return run_bench(
            benches=a.bench,
            out_dir=a.out,
            prm=a.prm,
            scores=a.scores,
            judge=a.judge,
            threshold=a.threshold,
            fmt=a.format,
            subset=a.subset,
            limit=a.limit,
            bootstrap=a.bootstrap,
            image_root=a.image_root,
            no_image=a.no_image,
            seed=a.seed,
            heldout=a.heldout,
            device=a.device,
            dtype=a.dtype,
            system_prompt=not a.no_system_prompt,
            batch_size=a.batch_size,
            max_length=a.max_length,
            label_mode=a.label_mode,
            concurrency=a.concurrency,
        )
    except ServerUnavailable as e:
        print(f"visualprm bench: error: {e}", file=sys.stderr)
        return 1


def _cmd_make_tiny_model(a: argparse.Namespace) -> int:
    from .tiny import make_tiny_model

    t0 = time.time()
    make_tiny_model(a.out, arch=a.arch, seed=a.seed, image_size=a.image_size)
    print(f"wrote a tiny random-weight {a.arch} PRM to {a.out} in {time.time() - t0:.1f}s")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from .server import serve

    return serve(
        prm=a.prm,
        host=a.host,
        port=a.port,
        device=a.device,
        dtype=a.dtype,
        system_prompt=not a.no_system_prompt,
        label_mode=a.label_mode,
        log_level=a.log_level,
        torch_threads=a.torch_threads,
        api_key=a.api_key or os.environ.get("VISUALPRM_API_KEY") or None,
        image_root=a.image_root,
        allow_remote_images=a.allow_remote_images,
        max_batch_size=a.max_batch_size,
        max_wait_ms=a.max_wait_ms,
        share_prefix=a.share_prefix,
        max_queue=a.max_queue,
        max_body_bytes=int(a.max_body_mb * 2**20),
        max_images=a.max_images,
        max_image_bytes=int(a.max_image_mb * 2**20),
        max_image_pixels=a.max_image_pixels,
        max_solutions=a.max_solutions,
        max_steps=a.max_steps,
        max_tokens=a.max_tokens,
        split_steps=a.split_steps,
    )


def _cmd_train(a: argparse.Namespace) -> int:
    from .train import CONFIG_FIELDS, train_command

    overrides = {k: v for k, v in vars(a).items() if k in CONFIG_FIELDS}
    return train_command(a.config, overrides)


def _cmd_search(a: argparse.Namespace) -> int:
    from .policy import ServerUnavailable
    from .search import SearchConfig, search_file, unescape

    cfg = SearchConfig(
        width=a.width,
        expand=a.expand,
        budget=a.budget,
        lookahead=a.lookahead,
        max_steps=a.max_steps,
        select=a.select,
        aggregate=a.aggregate,
        step_sep=unescape(a.step_sep),
        temperature=a.temperature,
        top_p=a.top_p or None,
        top_k=a.top_k or None,
        lookahead_temperature=a.lookahead_temperature,
        max_tokens=a.max_tokens,
        max_step_tokens=a.max_step_tokens,
        dedupe=not a.no_dedupe,
        seed=a.seed,
        prompt=a.prompt,
    )
    scorer_options = {"device": a.device, "dtype": a.dtype, "batch_size": a.batch_size}
    scorer_options |= {"max_length": a.max_length, "label_mode": a.label_mode}
    scorer_options["system_prompt"] = None if not a.no_system_prompt else False
    policy_options = {"retries": a.retries, "timeout": a.timeout, "device": a.device, "dtype": a.dtype}
    policy_options["batch_size"] = a.policy_batch_size
    try:
        search_file(
            policy=a.policy,
            prm=a.prm,
            problems=a.problems,
            out_dir=a.out,
            methods=a.method,
            config=cfg,
            limit=a.limit,
            concurrency=a.concurrency,
            checker=a.checker,
            splitter=a.splitter,
            tokens=a.tokens,
            image_root=a.image_root,
            scorer_options=scorer_options,
            policy_options=policy_options,
            api_key=a.api_key or os.environ.get("VISUALPRM_API_KEY") or None,
        )
    except ServerUnavailable as e:
        print(f"visualprm search: error: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_make_base_model(a: argparse.Namespace) -> int:
    from .basemodel import make_base_model

    make_base_model(
        a.out,
        seed=a.seed,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        check_steps=a.check_steps,
        check_lr=a.check_lr,
        minutes=a.minutes,
        device=a.device,
        checkpoint_every=a.checkpoint_every,
        init=a.init,
    )
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(a.out, quick=a.quick, seed=a.seed, base=a.base)
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
    p.add_argument("--prm", default=None, help="PRM folder")
    p.add_argument("--judge", default=None, help="instead of a PRM: an MLLM judge, openai:MODEL@URL")
    p.add_argument(
        "--orm", default=None, help="also evaluate an ORM: a folder, or 'prm' (the PRM, whole solution as one step)"
    )
    p.add_argument("--input", required=True, help="JSONL: {id, images, question, answer?, responses: [..]}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="aggregate used for the pick (mean)")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--max-steps", type=int, default=12, help="at most this many steps per response")
    p.add_argument("--splitter", default=None, help="custom step splitter: blank|markers|re:PATTERN|module:function")
    p.add_argument("--seed", type=int, default=0, help="seed for random subsets and the random pick")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--subsets", type=_positive_int, default=32, help="random subsets per N on the curves (32)")
    p.add_argument("--checker", default=None, help="your own answer checker: module:function or file.py:function")
    p.add_argument(
        "--no-share-prefix", action="store_true", help="score every candidate in full (no prefix-shared groups)"
    )
    p.add_argument(
        "--max-batch-tokens", type=_positive_int, default=None, help="prefix sharing: rows x tokens per batch bound"
    )
    p.add_argument("--no-image", action="store_true", help="score without the images (text-only scorer)")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="judge requests in flight (8)")
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

    add_data_commands(sub)

    p = sub.add_parser("serve", help="HTTP scoring service with dynamic batching (for RL training and search)")
    p.description = (
        "Serve a PRM over HTTP: POST /v1/score, POST /v1/bon, GET /health, GET /metrics (Prometheus), docs at "
        "/docs. Concurrent requests are batched together. Binds 127.0.0.1 unless --host says otherwise."
    )
    p.add_argument("--prm", required=True, help="PRM folder (model + processor)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $VISUALPRM_API_KEY)")
    p.add_argument("--image-root", default=None, help="folder that requests' image_paths are read from (else refused)")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (public hosts only)")
    p.add_argument("--max-batch-size", type=_positive_int, default=16, help="solutions per forward pass (16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="wait for more requests to fill a batch (5)")
    p.add_argument(
        "--share-prefix",
        action="store_true",
        help="score a request's solutions as one prefix-shared group (faster; equal to ~1e-7, not bit for bit)",
    )
    p.add_argument("--max-queue", type=_positive_int, default=4096, help="waiting solutions before 503 (4096)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit in MiB (20)")
    p.add_argument("--max-images", type=int, default=8, help="images per request (8)")
    p.add_argument("--max-image-mb", type=float, default=10.0, help="one encoded image, in MiB (10)")
    p.add_argument("--max-image-pixels", type=_positive_int, default=4096 * 4096, help="width*height (4096^2)")
    p.add_argument("--max-solutions", type=_positive_int, default=64, help="solutions per request (64)")
    p.add_argument("--max-steps", type=_positive_int, default=64, help="steps per solution (64)")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="tokens per sequence (default: no limit)")
    p.add_argument("--split-steps", type=_positive_int, default=12, help="a response splits into at most N steps")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument("--no-system-prompt", action="store_true", help="leave out the VisualPRM system prompt")
    p.add_argument("--label-mode", choices=("auto", "value", "advantage"), default="auto", help="as in `score`")
    p.add_argument("--torch-threads", type=_positive_int, default=None, help="CPU threads for torch (torch's default)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("bench", help="evaluate a critic on VisualProcessBench or ProcessBench")
    p.description = (
        "Score every step of a critic benchmark (steps as given, never re-split) with a PRM, an MLLM judge or a "
        "file of step scores, and report macro-F1 (VisualProcessBench: overall, per source, per policy) or the "
        "ProcessBench F1 per subset and their mean. Writes OUT/results.json (fractions), OUT/samples.jsonl, "
        "OUT/report.html and prints the table (percentages)."
    )
    p.add_argument("--bench", required=True, action="append", help="benchmark file or folder (repeatable)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prm", help="PRM folder")
    g.add_argument("--scores", help='JSONL: one {"step_scores": [..]} line per benchmark record, in order')
    g.add_argument("--judge", help="an MLLM judge: openai:MODEL@URL (API key: $OPENAI_API_KEY)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", default="0.5", help="step score >= threshold = correct; 'auto': tuned (0.5)")
    p.add_argument("--heldout", type=float, default=0.5, help="with --threshold auto: fraction held out (0.5)")
    p.add_argument("--format", choices=("visualprocessbench", "processbench"), default=None, help="default: detect")
    p.add_argument("--subset", default=None, help="ProcessBench subset name (default: the file name)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of each file")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed for the bootstrap and the held-out split")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the file's)")
    p.add_argument("--no-image", action="store_true", help="score without the images (text-only PRM or judge)")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="judge requests in flight (8)")
    _add_model_options(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("train", help="fine-tune a vision-language model into a PRM")
    p.description = (
        "Fine-tune any AutoModelForImageTextToText model on training conversations (build-data output or the "
        "official VisualPRM400K files), loss on the label tokens only. Options override --config YAML, which "
        "overrides the defaults (the paper's: AdamW, wd 0.05, lr 1e-5, 5% warm-up, cosine, 1 epoch, vision "
        "encoder frozen). Multi-GPU: accelerate launch -m visualprm train ... (configs/accelerate_*.yaml). "
        "Re-running the same command resumes from the last checkpoint in OUT/checkpoints."
    )
    p.add_argument("--config", default=None, help="YAML file of options (keys as below, underscores)")
    p.add_argument("--data", default=None, help="training conversations JSONL")
    p.add_argument("--model", default=None, help="base model folder or hub id")
    p.add_argument("--out", default=None, help="output folder (the trained PRM)")
    p.add_argument("--eval-data", dest="eval_data", default=None, help="held-out conversations (else a split)")
    p.add_argument("--eval-split", dest="eval_split", type=float, default=None, help="problems held out (0.1)")
    p.add_argument("--image-root", dest="image_root", default=None, help="folder for relative image paths")
    p.add_argument(
        "--label-mode",
        dest="label_mode",
        choices=("auto", "value", "advantage"),
        default=None,
        help="value (+/-) or advantage (+/=/-); auto: advantage iff the data has '=' (auto)",
    )
    p.add_argument(
        "--label-loss",
        dest="label_loss",
        choices=("vocab", "labels"),
        default=None,
        help="hard labels: cross-entropy over the vocabulary (vocab, the paper's) or over the label tokens only "
        "(labels; for a base model that never wrote a label token) (vocab)",
    )
    p.add_argument("--epochs", type=float, default=None, help="training epochs (1)")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="optimizer steps (-1: epochs)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (1e-5)")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=None, help="per device (1)")
    p.add_argument("--grad-accum", dest="grad_accum", type=_positive_int, default=None, help="accumulation (1)")
    p.add_argument("--max-length", dest="max_length", type=int, default=None, help="longest sequence (0: none)")
    p.add_argument("--seed", type=int, default=None, help="seed (0)")
    p.add_argument("--save-steps", dest="save_steps", type=_positive_int, default=None, help="checkpoint every N")
    p.add_argument("--save-total-limit", dest="save_total_limit", type=_positive_int, default=None, help="keep N (2)")
    p.add_argument("--logging-steps", dest="logging_steps", type=_positive_int, default=None, help="log every N")
    p.add_argument("--eval-steps", dest="eval_steps", type=int, default=None, help="evaluate every N (0: at end)")
    p.add_argument("--torch-dtype", dest="torch_dtype", default=None, help="weights dtype (float32)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config")
    p.add_argument("--num-workers", dest="num_workers", type=int, default=None, help="data loader workers (0)")
    p.add_argument("--torch-threads", dest="torch_threads", type=int, default=None, help="CPU threads (0: default)")
    p.add_argument("--lora-r", dest="lora_r", type=_positive_int, default=None, help="LoRA rank (16)")
    p.add_argument("--lora-alpha", dest="lora_alpha", type=_positive_int, default=None, help="LoRA alpha (32)")
    for flag, dest, value, help_ in (
        ("--lora", "lora", True, "LoRA adapters on the LLM (PEFT), merged on save"),
        ("--full", "full", True, "train the vision encoder too"),
        ("--bf16", "bf16", True, "bf16 mixed precision"),
        ("--gradient-checkpointing", "gradient_checkpointing", True, "recompute activations (less memory)"),
        ("--train-eot", "train_eot", True, "also supervise the end-of-turn token after each label"),
        ("--no-soft-labels", "soft_labels", False, "ignore mc in the data (hard labels only)"),
        ("--drop-long", "drop_long", True, "drop sequences over --max-length instead of failing"),
        ("--no-preencode", "preencode", False, "encode in the data loader (large data), not up front"),
        ("--overwrite", "overwrite", True, "start afresh even if OUT holds checkpoints or a trained PRM"),
    ):
        p.add_argument(flag, dest=dest, action="store_const", const=value, default=None, help=help_)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="PRM-guided search: Best-of-N, step-level beam search, lookahead")
    p.description = (
        "Solve every problem with a policy guided by a PRM: bon (N = width x expand full solutions, best "
        "aggregate), beam (one step at a time, keep the best WIDTH partial solutions by their newest step score) "
        "or lookahead (beam search ranking candidates after rolling them LOOKAHEAD steps ahead). Reports accuracy "
        "and the generation cost per problem (tokens, requests, rounds, PRM calls) so methods compare at equal "
        "cost. Writes OUT/results.json and OUT/samples.jsonl and prints the table."
    )
    p.add_argument("--policy", required=True, help="synthetic | hf:PATH | openai:MODEL@URL | vllm:PATH_OR_ID")
    p.add_argument("--prm", required=True, help="PRM folder, or http(s)://HOST:PORT of `visualprm serve`")
    p.add_argument("--problems", required=True, help="JSONL: {id, images, question, answer, options?}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="beam", help="bon, beam, lookahead, or a comma list of them (beam)")
    p.add_argument("--width", type=_positive_int, default=4, help="beams kept; bon: solutions per round (4)")
    p.add_argument("--expand", type=_positive_int, default=4, help="next steps per beam; bon: N = width x expand (4)")
    p.add_argument("--budget", type=_positive_int, default=None, help="generated tokens per problem (no cap)")
    p.add_argument("--lookahead", type=int, default=2, help="lookahead: steps rolled out per candidate (2)")
    p.add_argument("--select", choices=AGGREGATES, default="last", help="rank partial solutions by (last)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="pick the answer by (mean)")
    p.add_argument("--step-sep", default="\\n\\n", help="step delimiter: generation stops at it (\\n\\n)")
    p.add_argument("--max-steps", type=_positive_int, default=12, help="steps per solution at most (12)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0.7)")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p, 0 = off (0.95)")
    p.add_argument("--top-k", type=int, default=0, help="top-k, 0 = off (0)")
    p.add_argument("--lookahead-temperature", type=float, default=0.0, help="rollouts' temperature (0: greedy)")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, help="new tokens per full solution (4096)")
    p.add_argument("--max-step-tokens", type=_positive_int, default=1024, help="new tokens per step (1024)")
    p.add_argument("--no-dedupe", action="store_true", help="keep identical candidate prefixes as separate beams")
    p.add_argument("--tokens", choices=("words", "prm"), default="words", help="count tokens as words or PRM tokens")
    p.add_argument("--seed", type=int, default=0, help="run seed (0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--concurrency", type=_positive_int, default=16, help="problems searched at once (16)")
    p.add_argument(
        "--prompt", choices=("final-answer", "boxed"), default="final-answer", help="answer format asked for"
    )
    p.add_argument("--checker", default=None, help="answer checker module:function or file.py:function (built-in)")
    p.add_argument("--splitter", default=None, help="bon: step splitter blank|markers|re:PATTERN|module:function")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument("--api-key", default=None, help="--prm URL: the service's key (default $VISUALPRM_API_KEY)")
    p.add_argument("--retries", type=int, default=6, help="openai: retries per request (6)")
    p.add_argument("--timeout", type=float, default=600.0, help="openai: seconds per request (600)")
    p.add_argument("--policy-batch-size", type=_positive_int, default=8, help="hf policy: sequences per call (8)")
    _add_model_options(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "make-base-model", help="pre-train the small base VLM that sees the synthetic domain (the demo's base)"
    )
    p.add_argument("out", help="output folder (the shipped one is src/visualprm/assets/base-model)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the data (0)")
    p.add_argument("--steps", type=int, default=3000, help="steps of the first phase, seeing (3000)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="sequences per step (32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the first phase (2e-3)")
    p.add_argument(
        "--check-steps", type=int, default=1200, help="steps of the second phase, checking claims (1200; 0: none)"
    )
    p.add_argument(
        "--init", default=None, help="start from this base model, not random weights (with --steps 0: phase 2 only)"
    )
    p.add_argument("--check-lr", type=float, default=1e-3, help="peak learning rate of the second phase (1e-3)")
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="also save OUT.partial every this many steps (0: never)"
    )
    p.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes (not reproducible)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=_cmd_make_base_model)

    p = sub.add_parser("demo", help="the whole VisualPRM method in miniature on the built-in task, on a CPU")
    p.add_argument("--out", default="demo-out", help="output folder (demo-out)")
    p.add_argument("--quick", action="store_true", help="smaller run for CI (<= 3 minutes on a 2-core CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems, the policy and training (0)")
    p.add_argument("--base", default=None, help="base model folder (default: the shipped one)")
    p.set_defaults(func=_cmd_demo)

    # Further commands are added below by their issues; keep one block per command.
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # Hugging Face's save/load bars; ours say more
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
