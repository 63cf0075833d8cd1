"""The `visualprm` commands that serve, evaluate, train or run a model: serve, bench, train, search,
make-base-model, demo.

Like cli.py, nothing here computes anything: each handler imports its module inside the function (so
`visualprm --help` needs no torch) and calls the job; `add_model_commands` adds the parsers to the `visualprm`
command (cli.py). It does not parse the command line or handle errors and exit statuses (cli.main does).
"""

from __future__ import annotations

import argparse
import os

from . import options as opt
from .cli_common import AGGREGATES, POLICY_HELP, TORCH_THREADS_HELP, add_config_options
from .cli_common import add_model_options as _add_model_options
from .cli_common import is_local as _local
from .cli_common import positive_int as _positive_int
from .cli_common import set_threads as _threads
from .remote_prm import add_engine_options, engine_options, system_prompt_arg


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench

    _threads(a, local_model=_local(a.prm))
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
        sample=a.sample,
        bootstrap=a.bootstrap,
        image_root=a.image_root,
        no_image=a.no_image,
        seed=a.seed,
        heldout=a.heldout,
        device=a.device,
        dtype=a.dtype,
        system_prompt=system_prompt_arg(a),
        batch_size=a.batch_size,
        max_length=a.max_length,
        label_mode=a.label_mode,
        concurrency=a.concurrency,
        api_key=a.api_key,
        engine_options=engine_options(a),
    )


def _cmd_serve(a: argparse.Namespace) -> int:
    from .server import serve

    _threads(a, local_model=_local(a.prm))
    return serve(
        prm=a.prm,
        host=a.host,
        port=a.port,
        device=a.device,
        dtype=a.dtype,
        system_prompt=system_prompt_arg(a),
        engine_options=engine_options(a),
        label_mode=a.label_mode,
        log_level=a.log_level,
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
    system_prompt = system_prompt_arg(a)
    scorer_options["system_prompt"] = None if system_prompt is True else system_prompt
    scorer_options |= engine_options(a)
    # --api-key: the key of the PRM's server (visualprm serve: default $VISUALPRM_API_KEY; openai: $OPENAI_API_KEY)
    prm_key = a.api_key or (os.environ.get("VISUALPRM_API_KEY") if a.prm.startswith("http") else None) or None
    policy_options = {"retries": a.retries, "timeout": a.timeout, "device": a.device, "dtype": a.dtype}
    policy_options["batch_size"] = a.policy_batch_size
    _threads(a, local_model=_local(a.prm) or a.policy.startswith("hf:"))
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
        api_key=prm_key,
    )
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
        chain_steps=a.chain_steps,
        chain_lr=a.chain_lr,
        calc_steps=a.calc_steps,
        calc_lr=a.calc_lr,
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


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Add serve, bench, train, search, make-base-model and demo to the command's subparsers (cli.py)."""
    p = sub.add_parser("serve", help="HTTP scoring service with dynamic batching (for RL training and search)")
    p.description = (
        "Serve a PRM over HTTP: POST /v1/score, POST /v1/bon, GET /health, GET /metrics (Prometheus), docs at "
        "/docs. Concurrent requests are batched together. Binds 127.0.0.1 unless --host says otherwise."
    )
    p.add_argument("--prm", required=True, help="PRM folder (model + processor), or openai:MODEL@URL[,URL2..]")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=opt.port, default=8000, help="port")
    p.add_argument(
        "--max-tiles",
        type=_positive_int,
        default=None,
        help="InternVL: at most N image tiles (default: the folder's max_dynamic_patch)",
    )
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $VISUALPRM_API_KEY)")
    p.add_argument("--image-root", default=None, help="folder that requests' image_paths are read from (else refused)")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (public hosts only)")
    p.add_argument("--max-batch-size", type=_positive_int, default=16, help="solutions per forward pass")
    p.add_argument("--max-wait-ms", type=opt.NONNEG, default=5.0, help="wait for more requests to fill a batch")
    p.add_argument(
        "--share-prefix",
        action="store_true",
        help="score a request's solutions as one prefix-shared group (faster; equal to ~1e-7, not bit for bit)",
    )
    p.add_argument("--max-queue", type=_positive_int, default=4096, help="waiting solutions before 503")
    p.add_argument("--max-body-mb", type=opt.POSITIVE, default=20.0, help="request body limit in MiB")
    p.add_argument("--max-images", type=opt.NONNEG_INT, default=8, help="images per request")
    p.add_argument("--max-image-mb", type=opt.POSITIVE, default=10.0, help="one encoded image, in MiB")
    p.add_argument("--max-image-pixels", type=_positive_int, default=4096 * 4096, help="width*height (4096^2)")
    p.add_argument("--max-solutions", type=_positive_int, default=64, help="solutions per request")
    p.add_argument("--max-steps", type=_positive_int, default=64, help="steps per solution")
    p.add_argument("--max-tokens", type=_positive_int, default=None, help="tokens per sequence (default: no limit)")
    p.add_argument("--split-steps", type=_positive_int, default=12, help="a response splits into at most N steps")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument("--no-system-prompt", action="store_true", help="leave out the VisualPRM system prompt")
    p.add_argument("--label-mode", choices=("auto", "value", "advantage"), default="auto", help="as in `score`")
    p.add_argument("--torch-threads", type=_positive_int, default=None, help=TORCH_THREADS_HELP)
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level",
    )
    add_engine_options(p, api_key=False)  # the engine's key: $OPENAI_API_KEY (--api-key is this service's)
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
    g.add_argument("--prm", help="PRM folder, or openai:MODEL@URL[,URL2..] (a served PRM)")
    g.add_argument("--scores", help='JSONL: one {"step_scores": [..]} line per benchmark record, in order')
    g.add_argument("--judge", help="an MLLM judge: openai:MODEL@URL (API key: $OPENAI_API_KEY)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--threshold", default="0.5", help="step score >= threshold = correct; 'auto': tuned on a held-out part"
    )
    p.add_argument(
        "--heldout",
        type=opt.number_in(0, 1, lo_open=True, hi_open=True),
        default=0.5,
        help="with --threshold auto: fraction held out",
    )
    p.add_argument("--format", choices=("visualprocessbench", "processbench"), default=None, help="default: detect")
    p.add_argument("--subset", default=None, help="ProcessBench subset name (default: the file name)")
    p.add_argument("--limit", type=opt.POSITIVE_INT, default=None, help="only the first N records of each file")
    p.add_argument(
        "--sample",
        type=_positive_int,
        default=None,
        help="a seeded sample of N records in all, stratified: every file/subset, source and class (erroneous and "
        "correct) in it, the rest in proportion (--seed)",
    )
    p.add_argument("--bootstrap", type=opt.NONNEG_INT, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed for the bootstrap, the held-out split and --sample")
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the file's)")
    p.add_argument("--no-image", action="store_true", help="score without the images (text-only PRM or judge)")
    p.add_argument("--concurrency", type=_positive_int, default=8, help="judge requests in flight")
    _add_model_options(p)
    add_engine_options(p)
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
    from .train import TrainConfig  # no torch: train.py imports it inside its functions

    add_config_options(p, TrainConfig)  # one option per TrainConfig field, with its help and default
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("search", help="PRM-guided search: Best-of-N, step-level beam search, lookahead")
    p.description = (
        "Solve every problem with a policy guided by a PRM: bon (N = width x expand full solutions, best "
        "aggregate), beam (one step at a time, keep the best WIDTH partial solutions by their newest step score) "
        "or lookahead (beam search ranking candidates after rolling them LOOKAHEAD steps ahead). Reports accuracy "
        "and the generation cost per problem (tokens, requests, rounds, PRM calls) so methods compare at equal "
        "cost. Writes OUT/results.json and OUT/samples.jsonl and prints the table."
    )
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument(
        "--prm", required=True, help="PRM folder, openai:MODEL@URL[,URL2..], or http(s)://HOST:PORT (visualprm serve)"
    )
    p.add_argument("--problems", required=True, help="JSONL: {id, images, question, answer, options?}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="beam", help="bon, beam, lookahead, or a comma list of them")
    p.add_argument("--width", type=_positive_int, default=4, help="beams kept; bon: solutions per round")
    p.add_argument("--expand", type=_positive_int, default=4, help="next steps per beam; bon: N = width x expand")
    p.add_argument("--budget", type=_positive_int, default=None, help="generated tokens per problem (no cap)")
    p.add_argument("--lookahead", type=opt.NONNEG_INT, default=2, help="lookahead: steps rolled out per candidate")
    p.add_argument("--select", choices=AGGREGATES, default="last", help="rank partial solutions by")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="pick the answer by")
    p.add_argument("--step-sep", default="\\n\\n", help="step delimiter: generation stops at it")
    p.add_argument("--max-steps", type=_positive_int, default=12, help="steps per solution at most")
    p.add_argument("--temperature", type=opt.NONNEG, default=0.7, help="sampling temperature")
    p.add_argument("--top-p", type=opt.PROBABILITY, default=0.95, help="top-p, 0 = off")
    p.add_argument("--top-k", type=opt.NONNEG_INT, default=0, help="top-k, 0 = off")
    p.add_argument("--lookahead-temperature", type=opt.NONNEG, default=0.0, help="rollouts' temperature (0: greedy)")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, help="new tokens per full solution")
    p.add_argument("--max-step-tokens", type=_positive_int, default=1024, help="new tokens per step")
    p.add_argument("--no-dedupe", action="store_true", help="keep identical candidate prefixes as separate beams")
    p.add_argument("--tokens", choices=("words", "prm"), default="words", help="count tokens as words or PRM tokens")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--limit", type=opt.POSITIVE_INT, default=None, help="only the first N problems")
    p.add_argument("--concurrency", type=_positive_int, default=16, help="problems searched at once")
    p.add_argument(
        "--prompt", choices=("final-answer", "boxed"), default="final-answer", help="answer format asked for"
    )
    p.add_argument("--checker", default=None, help="answer checker module:function or file.py:function (built-in)")
    p.add_argument(
        "--splitter", default=None, help="bon: step splitter blank|markers|re:PATTERN|module:function (default: blank)"
    )
    p.add_argument("--image-root", default=None, help="folder for relative image paths (default: the input's)")
    p.add_argument(
        "--api-key", default=None, help="the PRM server's key (default $VISUALPRM_API_KEY, openai: $OPENAI_API_KEY)"
    )
    p.add_argument("--retries", type=opt.NONNEG_INT, default=6, help="openai: retries per request")
    p.add_argument("--timeout", type=opt.POSITIVE, default=600.0, help="openai: seconds per request")
    p.add_argument("--policy-batch-size", type=_positive_int, default=8, help="hf policy: sequences per call")
    _add_model_options(p)
    add_engine_options(p, api_key=False)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "make-base-model", help="pre-train the small base VLM that sees the synthetic domain (the demo's base)"
    )
    p.description = (
        "Pre-train the 2M-parameter Qwen2-VL base model that the demo fine-tunes into a PRM: phase 1 teaches it "
        "to read the synthetic images (counts, bar values, descriptions), phase 2 to check claims about them, phase 3 "
        "(--chain-steps) to check a running list of statements, phase 4 (--calc-steps) to check calculations and "
        "final answers. "
        "Seeded; the shipped model was built with the defaults."
    )
    p.add_argument("out", help="output folder (the shipped one is src/visualprm/assets/base-model)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the data")
    p.add_argument("--steps", type=opt.NONNEG_INT, default=3000, help="steps of the first phase, seeing")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="sequences per step")
    p.add_argument("--lr", type=opt.POSITIVE, default=2e-3, help="peak learning rate of the first phase")
    p.add_argument(
        "--check-steps", type=opt.NONNEG_INT, default=1200, help="steps of the second phase, checking claims (0: none)"
    )
    p.add_argument(
        "--init", default=None, help="start from this base model, not random weights (with --steps 0: phase 2 only)"
    )
    p.add_argument("--check-lr", type=opt.POSITIVE, default=1e-3, help="peak learning rate of the second phase")
    p.add_argument(
        "--chain-steps",
        type=opt.NONNEG_INT,
        default=0,
        help="steps of the third phase, following a chain of statements (0: none; the shipped model ran it from "
        "--init)",
    )
    p.add_argument("--chain-lr", type=opt.POSITIVE, default=5e-4, help="peak learning rate of the third phase")
    p.add_argument(
        "--calc-steps",
        type=opt.NONNEG_INT,
        default=0,
        help="steps of the fourth phase, checking calculations and final answers (0: none; the shipped model ran it "
        "from --init)",
    )
    p.add_argument("--calc-lr", type=opt.POSITIVE, default=5e-4, help="peak learning rate of the fourth phase")
    p.add_argument(
        "--checkpoint-every",
        type=opt.NONNEG_INT,
        default=0,
        help="also save OUT.partial every this many steps (0: never)",
    )
    p.add_argument(
        "--minutes", type=opt.POSITIVE, default=None, help="stop early after this many minutes (not reproducible)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=_cmd_make_base_model)

    p = sub.add_parser("demo", help="the whole VisualPRM method in miniature on the built-in task, on a CPU")
    p.description = (
        "Run the whole method on the built-in synthetic task: make problems, Monte-Carlo annotate, build data, "
        "train a PRM from the shipped base model, Best-of-8 on held-out problems, and a miniature "
        "VisualProcessBench with and without the images. Writes OUT/results.json, OUT/report.html and every "
        "intermediate file, and prints the command of each stage."
    )
    p.add_argument("--out", default="demo-out", help="output folder")
    p.add_argument("--quick", action="store_true", help="smaller run for CI (<= 3 minutes on a 2-core CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems, the policy and training")
    p.add_argument("--base", default=None, help="base model folder (default: the shipped one)")
    p.set_defaults(func=_cmd_demo)
