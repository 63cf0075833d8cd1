"""A small vision-language model that already sees the synthetic domain (`visualprm make-base-model`).

The demo fine-tunes a PRM the way VisualPRM does, from a base model that can already read its images. A
Qwen2-VL model trained from scratch on `+`/`-` step labels alone never learns to see (binary labels are too weak a
signal), so the project ships a base model pre-trained here on dense signals about generated images of the
synthetic task (synthetic.py), and rebuilds it with seeded commands (one per phase, README).

Architecture: a real `Qwen2VLForConditionalGeneration` (text: hidden 128, 4 layers, 4 heads, 2 KV heads; vision:
dim 128, depth 4, patch 14, 2x2 merge); the processor resizes every image to 84 x 84 pixels -> 9 image tokens,
one per cell of the task's 3 x 3 grid; about 2.1M parameters, with a byte-level BPE tokenizer (at most 1,024
tokens) trained here on the domain's texts and Qwen2's special tokens and chat
template. Saved in float16 (about 4 MB) with `dtype: float32` in its config, so it loads as float32.

Pre-training (next-token loss on the answer tokens only, one image per sequence in the model's chat template,
several question/answer turns per image, images rendered from `synthetic.sample_problem` scenes):

- counting and reading: "How many red shapes are there?" -> "3", "How many shapes are there in total?" -> "7",
  "What is the value of the blue bar?" -> "4" (zero counts included);
- yes/no questions about the image, phrased as the task's claims, half of them false with the near misses the
  scripted policy makes: "True or false: There are 3 red shapes." -> "false";
- descriptions (`synthetic.describe_scene`): "Describe the image." -> "2 red shapes, 1 blue shape. 3 shapes in
  total.";
- arithmetic in the task's range, as text turns: "What is 3 + 4?" -> "7", "True or false: 4 × 3 = 11." ->
  "false".

Each sequence asks about distinct quantities, so no answer can be copied from an earlier turn. One sequence in
five of the first phase is a one-colour image and "What colour are the shapes?": without it the model learnt
shape totals but never the colour words (per-colour counts at chance). A second phase (`check_example`) teaches
checking statements: mostly true/false claims about one image, half of them bare statements without "True or
false:". A third phase (`chain_example`, basedata.py) teaches following a chain: a running list of claims and
arithmetic on numbers stated earlier, each answered "yes" iff it and everything before it are true (after phase 2
the demo's PRM judged every step on its own: a true claim after a misread was called correct, and no arithmetic
step or final answer could be judged at all). A fourth phase (`calc_example`, `--calc-steps`) teaches
checking calculations and final answers (the shipped model ran 8,500 steps of it, in four schedules). The
model never sees a PRM conversation, a solution, a question of
the task or a `+`/`-` label: turning it into a PRM is the demo's fine-tuning. Everything is
drawn from the seed (data: one random stream per step; weights: `torch.manual_seed`), so a run on CPU with the
same seed, steps and batch size gives the same model. `evaluate_perception` measures, on images from a separate
stream, the exact-answer accuracy of each kind of question (greedy, teacher-forced).

The pre-training sequences are drawn in basedata.py. This module does not train PRMs (train.py) and downloads
nothing.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

from .basedata import (  # noqa: F401  (the pre-training data, re-exported: basemodel.check_example, ...)
    CHAIN_PLACEHOLDER,
    QUESTION_ARITH,
    QUESTION_BAR,
    QUESTION_CHAIN,
    QUESTION_CLAIM,
    QUESTION_COLOUR,
    QUESTION_COUNT,
    QUESTION_DESCRIBE,
    QUESTION_INVENTORY_BARS,
    QUESTION_INVENTORY_SHAPES,
    QUESTION_TOTAL,
    RENDER_SIZE,
    _arith_turn,
    _near_miss,
    arith_claim,
    calc_example,
    calc_turns,
    chain_example,
    chain_sequence,
    chain_turns,
    check_example,
    inventory,
    pretrain_example,
    scene_turns,
)
from .schema import InputError, share_modes, write_json
from .synthetic import COLORS, MAX_BAR, describe_scene, render_scene, sample_problem, scene_values, see_text

# Architecture (flat constants; `build_base` takes them as arguments)
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 128, 4, 4, 2, 512
VISION_DIM, VISION_DEPTH, VISION_HEADS, PATCH = 128, 4, 4, 14
IMAGE_SIZE, VOCAB = 84, 1024  # images are drawn at basedata.RENDER_SIZE; the processor resizes them to IMAGE_SIZE
INFO_FILE = "base_model.json"  # how the shipped model was built, and its measured perception


def shipped_path() -> Path:
    """The base model shipped inside the package (`src/visualprm/assets/base-model`)."""
    return Path(__file__).parent / "assets" / "base-model"


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and model


def _corpus() -> list[str]:
    """Texts of the domain: the task's questions and steps, the pre-training questions, the PRM prompt."""
    from .policy import ANSWER_FORMATS
    from .steps import PRM_SYSTEM_PROMPT
    from .synthetic import _QUESTIONS, BARS_PREAMBLE
    from .tiny import _CORPUS

    rng = random.Random("base-model-corpus")
    out = [
        PRM_SYSTEM_PROMPT,
        ANSWER_FORMATS["final-answer"],
        BARS_PREAMBLE,
        QUESTION_TOTAL,
        QUESTION_DESCRIBE,
        QUESTION_INVENTORY_SHAPES,
        QUESTION_INVENTORY_BARS,
        QUESTION_COLOUR.format("shapes"),
        QUESTION_COLOUR.format("bars"),
        "You are a helpful assistant.",
    ]
    out += list(_CORPUS)
    colors = list(COLORS)
    for (_, _), q in _QUESTIONS.items():
        for _ in range(3):
            a, b, c = rng.sample(colors, 3)
            out.append(q.format(a, b, c, c=rng.randint(2, 4)))
    for c in colors:
        out += [QUESTION_COUNT.format(c), QUESTION_BAR.format(c)]
        for n in range(0, 10):
            out += [see_text("shapes", c, n), see_text("bars", c, n), QUESTION_CLAIM.format(see_text("shapes", c, n))]
    for n in range(0, 10):
        out.append(see_text("shapes", "total", n))
    for _ in range(200):
        p = sample_problem(rng)
        out += [describe_scene(p["scene"]), inventory(p["scene"])[1]]
    for sym in "+-×":
        for _ in range(20):
            x, y = rng.randint(0, 9), rng.randint(0, 9)
            out += [f"{x} {sym} {y} = {x + y}.", QUESTION_ARITH.format(x, sym, y)]
    out += ["Final answer: 12", "true", "false", "yes", "no", "### Question:\n", "\n\n### Solution Process:\n"]
    return out


def build_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE tokenizer trained on the domain's texts (tiny.py's builder, Qwen2's pre-tokenizer pattern,
    so `+` and `-` in an assistant turn are tokens of their own), with Qwen2's special tokens and chat template."""
    from transformers import PreTrainedTokenizerFast

    from .tiny import _QWEN_TEMPLATE
    from .tiny import build_tokenizer as build_bpe

    tok = build_bpe("qwen", vocab_size, corpus=_corpus(), repeats=2)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=_QWEN_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def build_base(
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    vision_dim: int = VISION_DIM,
    vision_depth: int = VISION_DEPTH,
):
    """`(model, processor)`: a randomly initialised Qwen2-VL of the base model's shape (weights from `seed`)."""
    import torch
    import transformers as tf

    from .model import image_only_processor_class
    from .tiny import _QWEN_TEMPLATE

    if image_size % (2 * PATCH):
        raise InputError(f"image size must be a multiple of {2 * PATCH}, got {image_size}", field="image_size")
    tok = build_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    ids.update({t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")})
    ids.update({t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")})
    pixels = image_size * image_size
    image_processor = tf.Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=PATCH, merge_size=2
    )
    half = hidden // HEADS // 2  # M-RoPE sections (temporal, height, width) must add up to head_dim / 2
    rope = {"rope_type": "default", "mrope_section": [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]}
    rope["rope_theta"] = 10000.0
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        rope_parameters=rope,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
    )
    vision = dict(
        depth=vision_depth,
        embed_dim=vision_dim,
        hidden_size=hidden,
        num_heads=VISION_HEADS,
        patch_size=PATCH,
        mlp_ratio=2,
        spatial_merge_size=2,
    )
    config = tf.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = tf.Qwen2VLForConditionalGeneration(config)
    processor = image_only_processor_class("qwen2_vl")(
        image_processor=image_processor, tokenizer=tok, chat_template=_QWEN_TEMPLATE
    )
    return model, processor


# ---------------------------------------------------------------------------------------------------------------
# Pre-training data


def encode_turns(processor, image, turns: list[tuple[str, str]], shown: list[str] | None = None):
    """Encode one sequence; returns (model.Encoded whose label_positions are every answer token and the
    end-of-turn token after it). `shown`: put these in the assistant turns instead of the answers (each the
    same number of tokens as its answer; `answer_targets` then gives the answers' token ids)."""
    from .model import SENTINEL, Encoded, render_with_labels

    messages = []
    for i, (q, _) in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": q}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": SENTINEL}]
    answers = list(shown) if shown is not None else [a for _, a in turns]
    text, offsets = render_with_labels(processor, messages, answers)
    tok = processor.tokenizer
    plain = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = plain["offset_mapping"]
    positions = []
    for a, off in zip(answers, offsets):
        idx = [i for i, (s, e) in enumerate(spans) if s >= off and e <= off + len(a) and e > s]
        if not idx or spans[idx[0]][0] != off or spans[idx[-1]][1] != off + len(a):
            raise ValueError(f"answer {a!r} does not start and end on token boundaries")
        positions += idx + [idx[-1] + 1]  # the answer and <|im_end|>
    inputs = dict(processor(text=[text], images=[[image]], add_special_tokens=False, return_tensors="pt"))
    shift = inputs["input_ids"].shape[1] - len(plain["input_ids"])
    positions = [p + shift for p in positions]
    if inputs["input_ids"][0, positions].tolist() != [plain["input_ids"][p - shift] for p in positions]:
        raise ValueError("the processor's tokens disagree with the tokenizer's after the image")
    return Encoded(inputs=inputs, label_positions=positions)


def encode_example(processor, example: tuple):
    """(Encoded, target token ids at its label positions) of one `(image, turns[, shown])` example: the answers'
    tokens, also where the input shows `shown` in their place."""
    image, turns = example[0], example[1]
    shown = example[2] if len(example) > 2 else None
    enc = encode_turns(processor, image, turns, shown)
    truth = enc if shown is None else encode_turns(processor, image, turns)
    if truth.label_positions != enc.label_positions:
        raise ValueError("a shown answer is not as many tokens as its answer")
    return enc, truth.inputs["input_ids"][0, truth.label_positions].tolist()


def answer_loss(model, batch: dict, positions: list[list[int]], targets: list[list[int]] | None = None):
    """(mean cross-entropy over answer tokens, number correct, number of tokens); logits read one position before.
    `targets`: the token ids to predict per item (default: the input's tokens at the positions)."""
    import torch

    out = model.model(**batch, use_cache=False).last_hidden_state
    b = torch.tensor([i for i, ps in enumerate(positions) for _ in ps])
    t = torch.tensor([p for ps in positions for p in ps])
    logits = model.lm_head(out[b, t - 1])
    target = batch["input_ids"][b, t] if targets is None else torch.tensor([x for ts in targets for x in ts])
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    return loss, int((logits.argmax(-1) == target).sum()), len(t)


# ---------------------------------------------------------------------------------------------------------------
# Perception measurement


def evaluate_perception(model, processor, n: int = 300, seed: int = 0, image_size: int = RENDER_SIZE) -> dict:
    """Exact-answer accuracy (teacher-forced greedy) on `n` held-out images per question kind: shape counts
    (every colour, zeros included, and the total), bar values, true/false claims, arithmetic, and chains of
    statements (`chain`: every "is everything so far true?" answer of a sequence right), bare arithmetic
    statements judged true or false (`arith_check`) and calculation chains (`calc`, every answer right)."""
    import torch

    from .model import collate

    rng = random.Random(f"base-model-eval:{seed}")
    groups: dict[str, list] = {"count": [], "total": [], "bar": [], "claim": [], "arith": []}
    for _ in range(n):
        scene = sample_problem(rng)["scene"]
        image, values = render_scene(scene, image_size), scene_values(scene)
        if scene["kind"] == "shapes":
            c = rng.choice(list(COLORS))
            groups["count"].append((image, [(QUESTION_COUNT.format(c), str(values[c]))]))
            groups["total"].append((image, [(QUESTION_TOTAL, str(values["total"]))]))
        else:
            c = rng.choice(list(values))
            groups["bar"].append((image, [(QUESTION_BAR.format(c), str(values[c]))]))
        key = rng.choice(list(values))
        v = values[key]
        lo, hi = (1, MAX_BAR) if scene["kind"] == "bars" else (0, 9)
        claim = v if rng.random() < 0.5 else _near_miss(v, lo, hi, rng)
        q = QUESTION_CLAIM.format(see_text(scene["kind"], key, claim))
        groups["claim"].append((image, [(q, "true" if claim == v else "false")]))
        groups["arith"].append((image, [_arith_turn(rng)]))
    chain_rng = random.Random(f"base-model-eval-chain:{seed}")  # its own stream: the groups above stay as they were
    groups["chain"] = []
    for _ in range(n):
        scene = sample_problem(chain_rng)["scene"]
        groups["chain"].append((render_scene(scene, image_size), *chain_sequence(scene, chain_rng)))
    arith_rng = random.Random(f"base-model-eval-arith:{seed}")  # likewise
    groups["arith_check"] = []
    for _ in range(n):
        scene = sample_problem(arith_rng)["scene"]
        groups["arith_check"].append((render_scene(scene, image_size), [arith_claim(arith_rng)]))
    calc_rng = random.Random(f"base-model-eval-calc:{seed}")  # likewise
    groups["calc"] = []
    for _ in range(n):
        scene = sample_problem(calc_rng)["scene"]
        groups["calc"].append((render_scene(scene, image_size), *chain_sequence(scene, calc_rng, calc_turns)))
    pad = processor.tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    out = {}
    with torch.inference_mode():
        for name, items in groups.items():
            right = 0
            for i in range(0, len(items), 32):
                pairs = [encode_example(processor, item) for item in items[i : i + 32]]
                batch, _ = collate([e for e, _ in pairs], pad)
                hidden = model.model(**batch, use_cache=False).last_hidden_state
                for j, (e, targets) in enumerate(pairs):
                    ps = torch.tensor(e.label_positions[:-1])  # the answer tokens, not <|im_end|>
                    pred = model.lm_head(hidden[j, ps - 1]).argmax(-1)
                    right += bool((pred == torch.tensor(targets[:-1])).all())
            out[name] = round(right / max(1, len(items)), 4)
            out[f"{name}_n"] = len(items)
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The job


def make_base_model(
    out: str | os.PathLike,
    seed: int = 0,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 2e-3,
    warmup: int = 100,
    check_steps: int = 1200,
    check_lr: float = 1e-3,
    chain_steps: int = 0,
    chain_lr: float = 5e-4,
    calc_steps: int = 0,
    calc_lr: float = 5e-4,
    init: str | os.PathLike | None = None,
    minutes: float | None = None,
    device: str | None = None,
    threads: int = 1,
    eval_images: int = 300,
    log_every: int = 50,
    checkpoint_every: int = 0,
) -> dict:
    """Pre-train the base model and save it (float16 weights) with its tokenizer, processor and INFO_FILE.

    Up to three phases with one optimizer: `steps` steps of `pretrain_example` (seeing: warmup, then cosine from
    `lr` to lr/10), then `check_steps` steps of `check_example` (checking claims: 50 steps of warmup to
    `check_lr`, then cosine to check_lr/10), then `chain_steps` steps of `chain_example` (following a chain of
    statements: likewise with `chain_lr`), then `calc_steps` steps of `calc_example` (checking calculations:
    likewise with `calc_lr`). `init`: start from that base model's weights and tokenizer instead of
    building one from the seed (to run the phases as separate commands; `steps` may then be 0)."""
    import torch

    from .model import collate

    if steps < (0 if init else 1) or batch_size < 1 or min(check_steps, chain_steps, calc_steps) < 0:
        raise InputError(
            "--steps (unless --init) and --batch-size must be >= 1, --check-steps, --chain-steps and --calc-steps"
            " >= 0",
            field="steps",
        )
    if steps + check_steps + chain_steps + calc_steps < 1:
        raise InputError(
            "nothing to do: --steps, --check-steps, --chain-steps and --calc-steps are all 0", field="steps"
        )
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    if init:
        from .model import load_processor

        model, processor = load_base(init), load_processor(str(init))
    else:
        model, processor = build_base(seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"base model: Qwen2-VL, {n_params / 1e6:.2f}M parameters,"
        f" {steps} + {check_steps} + {chain_steps} + {calc_steps} steps x {batch_size}",
        file=sys.stderr,
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )

    def lr_at(step: int) -> float:
        if step < steps:
            peak, start, n, warm = lr, 0, steps, warmup
        elif step < steps + check_steps:
            peak, start, n, warm = check_lr, steps, check_steps, 50
        elif step < steps + check_steps + chain_steps:
            peak, start, n, warm = chain_lr, steps + check_steps, chain_steps, 50
        else:
            peak, start, n, warm = calc_lr, steps + check_steps + chain_steps, calc_steps, 50
        k = step - start
        if k < warm:
            return peak * (k + 1) / warm
        frac = (k - warm) / max(1, n - warm)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    pad = processor.tokenizer.pad_token_id
    log, run_loss, run_right, run_n, done = [], 0.0, 0, 0, 0
    total = steps + check_steps + chain_steps + calc_steps
    bounds = [(steps, pretrain_example), (steps + check_steps, check_example)]
    bounds.append((steps + check_steps + chain_steps, chain_example))
    for step in range(total):
        if minutes is not None and time.time() - t0 > 60 * minutes:
            print(f"stopping at step {step}: --minutes {minutes} reached", file=sys.stderr)
            break
        rng = random.Random(f"base-model:{seed}:{step}")
        example = next((f for end, f in bounds if step < end), calc_example)
        pairs = [encode_example(processor, example(rng)) for _ in range(batch_size)]
        batch, positions = collate([e for e, _ in pairs], pad)
        batch = {k: v.to(dev) for k, v in batch.items()}
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, right, n = answer_loss(model, batch, positions, [t for _, t in pairs])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        run_loss, run_right, run_n, done = run_loss + float(loss.detach()), run_right + right, run_n + n, step + 1
        if done % log_every == 0 or done == total:
            k = (done - 1) % log_every + 1
            row = {"step": done, "loss": round(run_loss / k, 4), "token_acc": round(run_right / run_n, 4)}
            row["seconds"] = round(time.time() - t0, 1)
            log.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            run_loss, run_right, run_n = 0.0, 0, 0
        if checkpoint_every and done % checkpoint_every == 0 and done < total:
            partial = Path(f"{out}.partial")  # to look at while training goes on
            _swap_in(_save(model, processor, partial), partial)
    train_seconds = time.time() - t0
    out = Path(out)
    staged = _save(model, processor, out)
    reloaded = load_base(staged)
    perception = evaluate_perception(reloaded, processor, n=eval_images) if eval_images else {}
    info = {
        "command": f"visualprm make-base-model OUT --seed {seed} --steps {steps} --batch-size {batch_size} --lr {lr}"
        f" --check-steps {check_steps} --check-lr {check_lr}"
        + (f" --chain-steps {chain_steps} --chain-lr {chain_lr}" if chain_steps else "")
        + (f" --calc-steps {calc_steps} --calc-lr {calc_lr}" if calc_steps else "")
        + (f" --init {init}" if init else ""),
        "arch": "qwen2_vl",
        "parameters": n_params,
        "seed": seed,
        "steps_done": done,
        "batch_size": batch_size,
        "lr": lr,
        "check_steps": check_steps,
        "check_lr": check_lr,
        "chain_steps": chain_steps,
        "chain_lr": chain_lr,
        "calc_steps": calc_steps,
        "calc_lr": calc_lr,
        "init": str(init) if init else None,
        "init_info": _lineage(init),
        "image_size": IMAGE_SIZE,
        "train_seconds": round(train_seconds, 1),
        "device": str(dev),
        "threads": threads,
        "perception_heldout": perception,
        "log": log,
    }
    write_json(staged / INFO_FILE, info)
    _swap_in(staged, out)  # OUT appears whole, with its INFO_FILE, or not at all
    print(f"saved {out} ({train_seconds / 60:.1f} min); held-out accuracy: {json.dumps(perception)}")
    return info


def _lineage(init) -> dict | None:
    """The INFO_FILE of the model that `init` names, without its training log (so the shipped model records
    every phase that made it, one command each)."""
    f = Path(init) / INFO_FILE if init else None
    if f is None or not f.is_file():
        return None
    info = json.loads(f.read_text())
    info.pop("log", None)
    return info


def _save(model, processor, out: Path) -> Path:
    """Save float16 weights (a small package) with `dtype: float32` in the config (loads and computes in fp32)
    into a staging folder beside `out`; returns it (`_swap_in` puts it in place)."""
    import torch

    from .model import save_processor

    staged = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    half = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    model.save_pretrained(staged, state_dict=half)
    save_processor(processor, staged)
    cfg_path = staged / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    share_modes(staged)  # safetensors writes 0600
    return staged


def _swap_in(staged: Path, out: Path) -> None:
    """Replace the folder `out` by `staged` (renames only, so `out` is never half-written)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staged.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def load_base(path: str | os.PathLike | None = None):
    """The base model (float32, train mode off) from `path`, default the shipped one."""
    import transformers as tf

    p = Path(path) if path is not None else shipped_path()
    if not (p / "config.json").is_file():
        raise InputError("no base model here (build it with `visualprm make-base-model`)", p, field="model")
    tf.utils.logging.disable_progress_bar()
    import torch

    return tf.Qwen2VLForConditionalGeneration.from_pretrained(p, dtype=torch.float32).eval()
