"""`visualprm train`: fine-tune a vision-language model into a PRM on training conversations (REFERENCE.md §2, §6).

Data: the VisualPRM400K conversation layout (`build-data` output or the official files, unchanged), read and
validated by `builddata.read_conversations`. Every conversation is encoded up front with `model.encode` (labels
at their real values; its verified label positions are the loss positions), so bad input (no label turns, a label
outside the label mode or not one token in the model's vocabulary, a missing image, mc outside [0, 1], a sequence
over max_length) stops the run before any training step. `preencode: false` keeps memory flat for large data: the
up-front pass then checks the text encoding and that every image opens, and items are encoded in the data loader.

Loss: only the label token of every assistant turn is supervised (and, with `train_eot`, the end-of-turn token
after it, as the original does); every other position is masked (`supervised_labels` builds the masked label
row, -100 elsewhere). Hard labels: next-token cross-entropy over the whole vocabulary. Soft labels (`mc` in the
record): cross-entropy against (mc, 1 - mc) over the logits of the `+` and `-` tokens. The loss, the logits at the
supervised positions and the `Trainer` subclass live in prm_trainer.py (`label_logits` and `prm_loss` are
re-exported here).

Trainer: the Hugging Face `Trainer` with our collator and `compute_loss`, so `accelerate launch` runs it on many
GPUs (configs/accelerate_*.yaml). Defaults are the paper's: AdamW (0.9, 0.999), weight decay 0.05, lr 1e-5, 5%
warm-up then cosine, 1 epoch; the vision encoder is frozen (its projector trains) unless `full`; LoRA through
PEFT (LLM linear layers), merged on save (the adapter alone is kept in OUT/adapter). Checkpoints go to
OUT/checkpoints; re-running the same command resumes from the last complete one (with the same data order and
RNG state, so the result equals an uninterrupted run; we load the weights through `from_pretrained` because the
Trainer's own resume misses every key of Qwen-VL-style checkpoints in transformers 5.x). A held-out split (whole
problems) is scored as `visualprm score` scores (`+` in every assistant turn) and its step accuracy and macro-F1
are written to OUT/eval.json.

Output: OUT holds the model, the processor (`model.save_processor`) and `visualprm.json` (label mode, labels,
system prompt), so `visualprm score --prm OUT` scores with what it was trained for, plus eval.json, train_log.json
(the Trainer's log: loss, label_acc, lr) and train_config.json. This module does not build, read or encode data
(builddata.py) or score files (scoring.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as opt
from .builddata import (
    Examples,
    check_label_mode,
    collate_items,
    encode_example,
    read_conversations,
    split_problems,
    system_prompt_of,
)
from .model import ADVANTAGE_LABELS, PRM_CONFIG, VALUE_LABELS, get_tokenizer, read_prm_config
from .prm_trainer import (  # noqa: F401  (label_logits, prm_loss: re-exported, train.label_logits ...)
    _make_trainer_class,
    _metrics_fn,
    label_logits,
    prm_loss,
)
from .schema import InputError, check_image, check_output, share_modes, write_json


def _f(default, help: str, **meta):  # noqa: A002 - the field's help text
    """A TrainConfig field; `visualprm train`'s option is generated from it (cli_common.add_config_options):
    help, and optionally `choices` and `min`."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """Every option of `visualprm train` (YAML keys and --options share these names, dashes for underscores)."""

    data: str = _f("", "training conversations (JSONL, VisualPRM400K layout)")
    model: str = _f("", "base model folder or hub id (any AutoModelForImageTextToText model)")
    out: str = _f("", "output folder: the trained PRM, eval.json, checkpoints/")
    eval_data: str = _f("", "held-out conversations; default: split eval_split of the problems off the data")
    eval_split: float = _f(
        0.1, "fraction of problems held out for evaluation (0: no evaluation)", type=opt.number_in(0, 1, hi_open=True)
    )
    image_root: str = _f("", "folder for relative image paths (default: the data file's folder)")
    label_mode: str = _f(
        "auto",
        "value (+/-), advantage (+/=/-) or auto (advantage iff the data has '=')",
        choices=("auto", "value", "advantage"),
    )
    soft_labels: bool = _f(True, "train on mc (when records have it) as soft targets over + and -")
    train_eot: bool = _f(False, "also supervise the end-of-turn token after each label (as the original)")
    label_loss: str = _f(
        "vocab",
        "hard labels: cross-entropy over the whole vocabulary (vocab, as the paper) or over the label tokens only "
        "(labels: what the scorer reads; for a base model that has never written a label token)",
        choices=("vocab", "labels"),
    )
    context_labels: str = _f(
        "labels",
        "what the assistant turns before a label show in training: labels (the true ones, teacher forcing, as the "
        "paper) or placeholder (the `+` that scoring puts in every turn, so training sees what scoring sees)",
        choices=("labels", "placeholder"),
    )
    epochs: float = _f(1.0, "training epochs", type=opt.POSITIVE)
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: epochs decide)")
    lr: float = _f(1e-5, "peak learning rate (0: no update, e.g. to re-save a model)", type=opt.NONNEG)
    weight_decay: float = _f(0.05, "AdamW weight decay", type=opt.NONNEG)
    adam_beta1: float = _f(0.9, "AdamW beta1", type=opt.number_in(0, 1, hi_open=True))
    adam_beta2: float = _f(0.999, "AdamW beta2", type=opt.number_in(0, 1, hi_open=True))
    warmup_ratio: float = _f(0.05, "fraction of the steps for linear warm-up", type=opt.PROBABILITY)
    lr_scheduler: str = _f("cosine", "learning-rate schedule after warm-up (transformers name)")
    max_grad_norm: float = _f(1.0, "gradient clipping", type=opt.POSITIVE)
    batch_size: int = _f(1, "conversations per device per forward pass", min=1)
    grad_accum: int = _f(1, "gradient accumulation steps", min=1)
    max_length: int = _f(0, "longest sequence in tokens (0: no limit); longer ones fail unless drop_long")
    drop_long: bool = _f(False, "drop sequences over max_length instead of failing")
    bf16: bool = _f(False, "bf16 mixed precision")
    torch_dtype: str = _f("float32", "dtype the weights are loaded in: float32, bfloat16 or float16")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (less memory)")
    full: bool = _f(False, "train the vision encoder too (else it stays frozen; the projector and the LLM train)")
    freeze_llm: bool = _f(False, "freeze the language model (train projector/vision only)")
    lora: bool = _f(False, "train LoRA adapters on the LLM's linear layers instead of all weights")
    lora_r: int = _f(16, "LoRA rank", min=1)
    lora_alpha: int = _f(32, "LoRA alpha", min=1)
    lora_dropout: float = _f(0.05, "LoRA dropout", type=opt.number_in(0, 1, hi_open=True))
    lora_target: str = _f(
        r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        "regular expression over module names that get LoRA adapters",
    )
    seed: int = _f(0, "seed for the split, the data order and initialisation")
    logging_steps: int = _f(10, "log loss, label accuracy and lr every N optimizer steps", min=1)
    save_steps: int = _f(500, "checkpoint every N optimizer steps", min=1)
    save_total_limit: int = _f(2, "keep the last N checkpoints", min=1)
    eval_steps: int = _f(0, "also evaluate every N optimizer steps (0: only at the end)")
    preencode: bool = _f(True, "encode every conversation up front and keep it in memory (else lazily)")
    num_workers: int = _f(0, "data loader worker processes")
    torch_threads: int = _f(0, "torch CPU threads (0: as in score: one per core, at most 4; CUDA: torch's own)")
    limit: int = _f(0, "use only the first N records of the data (0: all)")
    deepspeed: str = _f("", "DeepSpeed JSON config (or pass an accelerate config with DeepSpeed)")
    overwrite: bool = _f(False, "start afresh even if OUT holds checkpoints or a finished model")


CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Settings that must match for a re-run to resume the checkpoints in OUT.
RUN_KEYS = ("data", "model", "eval_data", "eval_split", "label_mode", "soft_labels", "train_eot", "label_loss")
RUN_KEYS += ("context_labels",)
RUN_KEYS += ("epochs", "max_steps", "lr", "weight_decay", "warmup_ratio", "lr_scheduler", "batch_size", "grad_accum")
RUN_KEYS += ("max_length", "full", "freeze_llm", "lora", "lora_r", "lora_alpha", "lora_target", "seed", "limit")


def load_config(yaml_path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < YAML file < command-line options (those not None). Unknown keys raise `InputError`."""
    values: dict[str, Any] = {}
    if yaml_path:
        import yaml

        p = Path(yaml_path)
        if not p.is_file():
            raise InputError("file not found", yaml_path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML ({str(e).splitlines()[0]})", yaml_path) from None
        if not isinstance(doc, dict):
            raise InputError("expected a mapping of option: value", yaml_path)
        for k, v in doc.items():
            if k.replace("-", "_") not in CONFIG_FIELDS:
                raise InputError(f"unknown option (valid: {', '.join(CONFIG_FIELDS)})", yaml_path, field=k)
            values[k.replace("-", "_")] = v
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig()
    for k, v in values.items():
        default = CONFIG_FIELDS[k].default
        try:
            if isinstance(default, bool):
                if not isinstance(v, bool):
                    raise ValueError
            elif isinstance(default, (int, float)) and not isinstance(v, bool):
                v = type(default)(v) if not (isinstance(default, int) and isinstance(v, float)) else int(v)
            elif isinstance(default, str):
                v = "" if v is None else str(v)
        except (TypeError, ValueError):
            raise InputError(f"expected a {type(default).__name__}, got {v!r}", yaml_path, field=k) from None
        setattr(cfg, k, v)
    for k in ("data", "model", "out"):
        if not getattr(cfg, k):
            raise InputError("missing (give --" + k + " or set it in --config)", field=k)
    if cfg.label_mode not in ("auto", "value", "advantage"):
        raise InputError("expected auto, value or advantage", field="label_mode")
    if cfg.label_loss not in ("vocab", "labels"):
        raise InputError("expected vocab or labels", field="label_loss")
    if cfg.context_labels not in ("labels", "placeholder"):
        raise InputError("expected labels or placeholder", field="context_labels")
    if not 0.0 <= cfg.eval_split < 1.0:
        raise InputError("expected a fraction in [0, 1)", field="eval_split")
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise InputError("batch_size and grad_accum must be >= 1", field="batch_size")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Model set-up and saving


VISION_PARTS = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder")


def freeze(model, vision: bool = True, llm: bool = False) -> dict:
    """Freeze the vision encoder (not its projector: Qwen's `merger` sits inside `visual`) and/or the LLM.

    Returns parameter counts {trainable, frozen}."""
    for name, p in model.named_parameters():
        parts = name.split(".")
        is_vision = any(x in VISION_PARTS for x in parts) and "merger" not in name
        is_llm = "language_model" in parts or parts[0] == "lm_head"
        if (vision and is_vision) or (llm and is_llm):
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that finished saving (the Trainer writes trainer_state.json last)."""
    if not ckpt_dir.is_dir():
        return None
    done = []
    for d in ckpt_dir.glob("checkpoint-*"):
        if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").is_file():
            done.append((int(d.name.split("-")[-1]), d))
    return max(done)[1] if done else None


def _steps_per_epoch(n: int, batch: int, processes: int, accum: int) -> int:
    """Optimizer steps per epoch: accelerate gives every process ceil(ceil(n / batch) / processes) batches (the
    last ones padded by wrapping around), and the Trainer steps every `accum` of them (a remainder counts)."""
    per_process = math.ceil(math.ceil(n / batch) / processes)
    return max(per_process // accum + int(per_process % accum > 0), 1)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(msg: str) -> None:
    if _is_main():
        print(f"train: {msg}", flush=True)


def train(cfg: TrainConfig) -> dict:
    """Run a training job; returns {model, processor, label_mode, system_prompt, eval, summary}."""
    t0 = time.time()
    out = Path(cfg.out)
    prm_json = out / PRM_CONFIG
    if prm_json.is_file() and not cfg.overwrite and json.loads(prm_json.read_text()).get("train_done"):
        _say(f"{out} already holds a trained PRM; pass --overwrite to train again")
        return {"summary": {"already_done": True}}
    # -- data: read and validate everything before loading the model --
    image_root = cfg.image_root or None
    examples = read_conversations(cfg.data, image_root, cfg.limit or None)
    if cfg.eval_data:
        train_ex, eval_ex = examples, read_conversations(cfg.eval_data, image_root)
    else:
        train_ex, eval_ex = split_problems(examples, cfg.eval_split, cfg.seed)
    label_mode = check_label_mode(train_ex + eval_ex, cfg.label_mode, cfg.soft_labels)
    system_prompt = system_prompt_of(train_ex + eval_ex)
    base_system = read_prm_config(cfg.model).get("system_prompt") if Path(cfg.model).is_dir() else None
    if isinstance(base_system, str) and system_prompt is True:
        # A converted released PRM (visualprm convert) records its own system message: it trains and scores
        # with that one, in place of the standard PRM prompt of the data.
        system_prompt = base_system
        for ex in train_ex + eval_ex:
            ex["system"] = base_system
    labels = VALUE_LABELS if label_mode == "value" else ADVANTAGE_LABELS
    if not cfg.soft_labels:
        for ex in train_ex + eval_ex:
            ex["mc"] = None

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers as tf

    from .jobs import set_torch_threads
    from .model import label_prefix, label_token_ids, load_model, load_processor, save_processor

    set_torch_threads(cfg.torch_threads if cfg.torch_threads > 0 else None)
    tf.set_seed(cfg.seed)
    processor = load_processor(cfg.model)
    tok = get_tokenizer(processor)
    try:  # label_token_ids also refuses an unknown character that encodes as the one <unk> token
        ids = label_token_ids(processor, labels, label_prefix(processor, system_prompt))
    except InputError as e:
        raise InputError(f"{e.message} (model {cfg.model})", cfg.data, field="label") from None
    label_ids = dict(zip(labels, ids))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    placeholder = labels[0]

    def enc_train(ex):
        shown = placeholder if cfg.context_labels == "placeholder" else None  # None: the true labels
        return encode_example(processor, ex, label_ids, shown, cfg.max_length, cfg.train_eot)

    def enc_eval(ex):
        return encode_example(processor, ex, label_ids, placeholder, cfg.max_length)

    from .jobs import bar as progress_bar

    def encode_all(exs, fn, what):
        kept, n_long = [], 0
        for ex in progress_bar(len(exs), f"encoding {what}", "conv", enabled=_is_main(), iterable=exs):
            try:
                if cfg.preencode:
                    kept.append(fn(ex))
                else:  # text and label positions now, images opened below; full encoding in the loader
                    encode_example(processor, ex, label_ids, with_images=False)
                    kept.append(ex)
            except InputError as e:
                if cfg.drop_long and e.field == "max_length":
                    n_long += 1
                    continue
                raise
        return kept, n_long

    if not cfg.preencode:
        for ex in train_ex + eval_ex:
            for p in ex["images"]:
                check_image(p, ex["loc"])
    train_items, long_t = encode_all(train_ex, enc_train, "train")
    eval_items, long_e = encode_all(eval_ex, enc_eval, "held-out")
    if not train_items:
        raise InputError("no training conversations left", cfg.data)
    train_ds = Examples(train_items, None if cfg.preencode else enc_train, cfg.drop_long)
    eval_ds = Examples(eval_items, None if cfg.preencode else enc_eval, cfg.drop_long) if eval_items else None

    # -- resume or start --
    ckpt_dir = out / "checkpoints"
    run = {k: getattr(cfg, k) for k in RUN_KEYS}
    run_file = out / "train_config.json"
    resume = None if cfg.overwrite else _latest_checkpoint(ckpt_dir)
    if resume is not None and run_file.is_file():
        old = json.loads(run_file.read_text()).get("run", {})
        diff = [k for k in RUN_KEYS if k in old and old[k] != run[k]]
        if diff:
            k = diff[0]
            raise InputError(
                f"{out} holds checkpoints of a run with {k}={old[k]!r} (now {run[k]!r}); use another --out or "
                "--overwrite",
                field=k,
            )
    if _is_main():
        if cfg.overwrite:
            prm_json.unlink(missing_ok=True)  # a crash below must not leave an old "train_done" behind
            if ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
        if ckpt_dir.is_dir():  # a kill during a save leaves a checkpoint without trainer_state.json
            for d in ckpt_dir.glob("checkpoint-*"):
                if d.is_dir() and not (d / "trainer_state.json").is_file():
                    shutil.rmtree(d, ignore_errors=True)
        write_json(run_file, {"config": dataclasses.asdict(cfg), "run": run})

    ckpt_args = {}
    if cfg.gradient_checkpointing:  # renamed activation_checkpointing in transformers 5.x
        names = {f.name for f in dataclasses.fields(tf.TrainingArguments)}
        name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        ckpt_args = {name: True, f"{name}_kwargs": {"use_reentrant": False}}
    from .jobs import bars_off

    args = tf.TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the steps
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if cfg.eval_steps > 0 and eval_ds is not None else "no",
        eval_steps=cfg.eval_steps if cfg.eval_steps > 0 else None,
        seed=cfg.seed,
        data_seed=cfg.seed,  # a fixed sampler seed: a resumed run sees the batches an uninterrupted one would
        bf16=cfg.bf16,
        use_cpu=not torch.cuda.is_available(),
        **ckpt_args,
        remove_unused_columns=False,
        dataloader_num_workers=cfg.num_workers,
        report_to=[],
        deepspeed=cfg.deepspeed or None,
        # a text-only batch leaves the (trainable) projector unused, which DDP must be told about
        ddp_find_unused_parameters=any(not ex["images"] for ex in train_ex),
        disable_tqdm=not _is_main() or bars_off(),  # the Trainer's bar follows --quiet and a non-terminal stderr
    )
    # -- model (after TrainingArguments, so DeepSpeed ZeRO-3 can partition it while loading) --
    model, _ = load_model(cfg.model, device="cpu", dtype=cfg.torch_dtype)
    model.config.use_cache = False
    counts = freeze(model, vision=not cfg.full, llm=cfg.freeze_llm)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_target
        )
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise InputError(f"LoRA: {e}", field="lora_target") from None
        n_tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
        counts = {"trainable": n_tr, "frozen": sum(p.numel() for p in model.parameters()) - n_tr}
    if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    n_labels = sum(len(it["targets"] if cfg.preencode else it["labels"]) for it in train_items)
    expected = _steps_per_epoch(len(train_ds), cfg.batch_size, world, cfg.grad_accum)
    _say(
        f"{len(train_ds)} training conversations ({n_labels} labels), "
        f"{len(eval_items)} held out; {label_mode} labels {' '.join(labels)}; {world} process(es) x batch "
        f"{cfg.batch_size} x accumulation {cfg.grad_accum} -> {expected} optimizer steps per epoch; "
        f"parameters {counts['trainable']:,} trainable, {counts['frozen']:,} frozen"
        + (f"; dropped {long_t + long_e} over max_length" if long_t + long_e else "")
    )
    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        data_collator=functools.partial(collate_items, pad_id=pad_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        compute_metrics=_metrics_fn(label_mode) if eval_ds is not None else None,
        label_ids=ids,
        label_mode=label_mode,
        input_dtype=model.dtype,
        label_loss=cfg.label_loss,
    )
    if resume is not None:
        _say(f"resuming from {resume}")
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    t_train = time.time() - t_train
    metrics = {}
    if eval_ds is not None:
        raw = trainer.evaluate()
        metrics = {k.removeprefix("eval_"): v for k, v in raw.items()}
    # -- save: model (merged LoRA), processor, visualprm.json last (it marks a finished run) --
    in_memory = trainer.model
    if cfg.lora:
        adapter = out / "adapter"
        trainer.save_model(str(adapter))
        in_memory = trainer.model.get_base_model()
        if _is_main():  # merged into a fresh copy of the base model, so that any backend's adapter loads
            from peft import PeftModel

            base, _ = load_model(cfg.model, device="cpu", dtype=cfg.torch_dtype)
            merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            merged.save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    summary = {
        "examples_train": len(train_ds),
        "examples_eval": len(eval_items),
        "labels_train": n_labels,
        "dropped_long": long_t + long_e + train_ds.n_long,  # encoded in loader workers: those are not counted
        "processes": world,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "per_device_batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "steps_per_epoch_expected": expected,
        "global_step": trainer.state.global_step,
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else 0,
        "train_loss": result.training_loss,
        "train_seconds": round(t_train, 2),
        "total_seconds": round(time.time() - t0, 2),
        "parameters": counts,
    }
    if _is_main():
        save_processor(processor, out)
        share_modes(out)  # safetensors writes 0600: a colleague or a server of another user must read the PRM
        write_json(out / "eval.json", {"label_mode": label_mode, "metrics": metrics, "train": summary})
        write_json(out / "train_log.json", trainer.state.log_history)
        prm = {
            "label_mode": label_mode,
            "labels": list(labels),
            "system_prompt": system_prompt,
            "base_model": cfg.model,
            "soft_labels": any(ex["mc"] is not None for ex in train_ex),
            "train_eot": cfg.train_eot,
            "lora": cfg.lora,
            "train_done": True,
        }
        write_json(prm_json, prm)
        line = f"done in {summary['total_seconds']:.1f}s: {trainer.state.global_step} optimizer steps"
        if metrics:
            line += (
                f"; held-out {metrics.get('steps', 0)} steps: accuracy {metrics.get('step_accuracy', 0):.3f}, "
                f"macro-F1 {metrics.get('macro_f1', 0):.3f}"
            )
        _say(line + f" -> {out}")
    in_memory.eval()
    return {
        "model": in_memory,
        "processor": processor,
        "label_mode": label_mode,
        "system_prompt": system_prompt,
        "eval": metrics,
        "summary": summary,
    }


def train_command(yaml_path: str | None, overrides: dict[str, Any]) -> int:
    """`visualprm train`: config from YAML and options, then `train`."""
    cfg = load_config(yaml_path, overrides)
    if cfg.out:  # also when it comes from --config (cli.main checked --out)
        check_output(cfg.out, "dir", "out")
    train(cfg)
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Leave the process group before exiting: left to interpreter shutdown, gloo's threads were sometimes
        # killed mid-teardown ("terminate called without an active exception", exit status != 0).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
