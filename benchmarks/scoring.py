"""Best-of-N scoring speed: one pass per step prefix, one candidate at a time, plain batching, prefix sharing.

A random-weight Qwen-VL-shaped PRM (the tiny models' tokenizer and processor, a larger text model) scores G
groups of N candidates that share a prefix of P tokens (system prompt, image, question; the image fills most
of it) and differ in S tokens of their own, in `--steps` steps. In one run it times four ways of getting every
step score of every candidate:

- per-step: one forward pass per step prefix (`Scorer.score_per_prefix`), what a judge-style critic costs;
- sequential: one candidate at a time, one full pass each (`score_steps([item])`), as the released code does;
- batched: all candidates padded into batches (`score_steps(items)`);
- shared: prefix sharing (`score_groups`): the prefix runs once per group, the suffixes as one batch on its cache.

Every way starts from text and PIL images (encoding included), after a warm-up; the best of `--repeat` timed
rounds counts (rounds interleave the ways, so a busy machine slows them alike; on CPU one torch thread by
default, which gives steadier figures on a shared machine). The token-count bound on what sharing can gain
over one full pass per candidate is N(P+S)/(P+NS); sharing also saves N-1 of N image preprocessings and vision
encoder passes per group, which that bound does not count, while its suffix tokens attend to more keys than an
average token of a full pass. On a GPU it also prints model FLOP utilisation (MFU: dense FLOPs of the tokens
each way really runs, vision tower counted as its linear layers, / time / `--peak-tflops`). The vocabulary is
the tiny models' (640 words): only the label rows of the output layer are ever computed, so it costs nothing
either way. The last line is one JSON object.

    python benchmarks/scoring.py                       # the CPU case: hidden 256, P=1200, N=8, S=300, 8 steps
    python benchmarks/scoring.py --preset 7b           # Qwen2.5-VL-7B shape, bf16, cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESETS = {
    # The CPU case of the acceptance check: a small random-weight Qwen2-VL-shaped model.
    "cpu": dict(
        arch="qwen2_vl",
        hidden_size=256,
        intermediate_size=1376,  # 5.4 x hidden, as in Qwen2-VL-7B
        layers=4,
        heads=4,
        kv_heads=2,
        vision_depth=2,  # the tiny models' tower: about a fifth of a full pass, as the 7B's ViT is
        vision_dim=32,
        vision_heads=2,
        device="cpu",
        dtype="float32",
        groups=1,
        threads=1,  # steady figures on a shared machine; --threads 2 uses both cores
    ),
    # Qwen2.5-VL-7B-Instruct's shape (text 3584 x 28 layers, GQA 28/4, MLP 18944; ViT 1280 x 32, windowed).
    "7b": dict(
        arch="qwen2_5_vl",
        hidden_size=3584,
        intermediate_size=18944,
        layers=28,
        heads=28,
        kv_heads=4,
        vision_depth=32,
        vision_dim=1280,
        vision_heads=16,
        device="cuda",
        dtype="bfloat16",
        groups=4,
        threads=0,
    ),
}
WORDS = (
    "the red circle is left of the blue square so we count 3 + 4 = 7 and then 12 - 5 = 7 bar reaches 8 green "
    "reaches 5 difference total answer triangle large small top bottom right therefore"
).split()


def build(a):
    """(model, processor) of a random-weight Qwen-VL-shaped model with the tiny models' tokenizer and processor."""
    import torch

    from visualprm.model import resolve_device_dtype
    from visualprm.tiny import build_tiny

    tiny, processor = build_tiny(a.arch, seed=a.seed, image_size=max(56, 28 * a.image_grid))
    cfg = tiny.config
    t = cfg.text_config
    head_dim = a.hidden_size // a.heads
    u = head_dim // 16  # mrope sections t/h/w in the real models' proportions (16/24/24 for head_dim 128)
    section = [head_dim // 2 - 6 * u, 3 * u, 3 * u]
    t.hidden_size, t.intermediate_size, t.num_hidden_layers = a.hidden_size, a.intermediate_size, a.layers
    t.num_attention_heads, t.num_key_value_heads, t.head_dim = a.heads, a.kv_heads, head_dim
    t.layer_types = ["full_attention"] * a.layers
    t.rope_parameters = {"rope_type": "default", "mrope_section": section, "rope_theta": 1000000.0}
    v = cfg.vision_config
    v.depth, v.num_heads = a.vision_depth, a.vision_heads
    if a.arch == "qwen2_vl":
        v.embed_dim, v.hidden_size = a.vision_dim, a.hidden_size
    else:
        v.hidden_size, v.out_hidden_size, v.window_size = a.vision_dim, a.hidden_size, 112
        v.intermediate_size = a.vision_dim * 8 // 3 if a.vision_dim != 1280 else 3420
        v.fullatt_block_indexes = [i for i in range(a.vision_depth) if i % 8 == 7] or [a.vision_depth - 1]
    device, dtype = resolve_device_dtype(a.device, a.dtype)
    torch.manual_seed(a.seed)
    with torch.device(device):
        model = type(tiny)._from_config(cfg, dtype=dtype)
    model.eval()
    return model, processor


def make_workload(scorer, a) -> list[dict]:
    """G groups of N candidates: prefix of exactly `--prefix-tokens`, suffixes of exactly `--suffix-tokens`."""
    from PIL import Image

    from visualprm.model import get_tokenizer
    from visualprm.sharing import _media_token_ids, encode_group, prefix_length

    rng = random.Random(a.seed)
    media = _media_token_ids(scorer.model)
    tok = get_tokenizer(scorer.processor)
    vocab = [w for w in WORDS if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]  # 1 token each
    groups = []
    for gi in range(a.groups):
        side = 28 * a.image_grid
        images = [Image.frombytes("RGB", (side, side), rng.randbytes(3 * side * side))] if side else []
        per = max(1, (a.suffix_tokens - 12 * a.steps) // a.steps)  # words per step; turn headers take the rest
        # A distinct first word per candidate, so that the shared prefix ends where the steps start.
        words = [[rng.choices(vocab, k=per) for _ in range(a.steps)] for c in range(a.n)]
        for c, cand in enumerate(words):
            cand[0].insert(0, f"Candidate {gi}.{c}:")
        fill = 1
        for _ in range(30):
            sols = [[" ".join(w) for w in cand] for cand in words]
            g = {"question": f"Problem {gi}. " + " ".join(["red"] * fill), "images": images, "solutions": sols}
            enc = encode_group(scorer, g)
            p = prefix_length(enc, media)
            over = [e.length - p - a.suffix_tokens for e in enc]
            if p == a.prefix_tokens and not any(over):
                break
            fill = max(1, fill + a.prefix_tokens - p)
            for cand, o in zip(words, over):  # add or drop words, one per step from the last step backwards
                for k in range(abs(o)):
                    w = cand[-1 - k % a.steps]
                    if o < 0:
                        w.append(rng.choice(vocab))
                    elif len(w) > 1:
                        w.pop()
        else:
            raise SystemExit(f"cannot fit the workload (prefix {p}, suffixes off by {over}); change the sizes")
        groups.append(g)
    return groups


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_per_token(model, context: float) -> float:
    """Dense forward FLOPs of one text token attending to `context` keys (2 x matmul weights + attention)."""
    t = model.config.text_config
    lm = model.model.language_model
    params = sum(p.numel() for n, p in lm.named_parameters() if "embed" not in n and p.dim() >= 2)
    return 2.0 * params + 4.0 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * context


def vision_flops(model, patches: int) -> float:
    return 2.0 * sum(p.numel() for p in model.model.visual.parameters() if p.dim() >= 2) * patches


def method_flops(model, groups: list[dict], p: int, s: int, per_step_k: int) -> dict:
    """Dense FLOPs each way really runs (padding excluded), text and vision."""
    fp = lambda n, start: n * flops_per_token(model, start + n / 2)  # noqa: E731 - n tokens after `start` keys
    g, n, steps = len(groups), len(groups[0]["solutions"]), len(groups[0]["solutions"][0])
    img = groups[0]["images"][0] if groups[0]["images"] else None
    vis = vision_flops(model, (img.size[0] // 14) * (img.size[1] // 14)) if img is not None else 0.0
    full = g * n * (fp(p + s, 0) + vis)
    return {
        "per-step": g * per_step_k * sum(fp(p + s * (k + 1) / steps, 0) + vis for k in range(steps)),
        "sequential": full,
        "batched": full,
        "shared": g * (fp(p, 0) + vis + n * fp(s, p)),
    }


def time_ways(scorer, a, groups: list[dict], cuda: bool) -> tuple[dict, dict]:
    """Time the four ways, rounds interleaved; returns (seconds per round per way, scores per way)."""
    import torch

    items = [{"question": g["question"], "images": g["images"], "steps": s} for g in groups for s in g["solutions"]]
    per_step_items = [it for i, it in enumerate(items) if i % a.n < a.per_step_candidates]
    ways = {
        "per-step": lambda: [scorer.score_per_prefix(it) for it in per_step_items],
        "sequential": lambda: [scorer.score_steps([it])[0] for it in items],
        "batched": lambda: scorer.score_steps(items),
        "shared": lambda: [x for g in scorer.score_groups(groups) for x in g],
    }
    ways = {k: f for k, f in ways.items() if k not in a.skip}
    # Warm-up (the per-step way runs the same kernels as the sequential one).
    scorer.score_steps(items[:2])
    scorer.score_groups(groups[:1])
    times: dict[str, list[float]] = {k: [] for k in ways}
    scores: dict[str, list] = {}
    for _ in range(a.repeat):
        for k, f in ways.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            scores[k] = f()
            if cuda:
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    if "per-step" in scores:  # line its candidates up with the others'
        done = iter(scores["per-step"])
        scores["per-step"] = [next(done) if i % a.n < a.per_step_candidates else None for i in range(len(items))]
    return times, scores


def report(a, groups: list[dict], times: dict, scores: dict, machine: str, model=None) -> dict:
    """Print the table of one workload and return its figures."""
    n, p, s = len(groups) * a.n, a.prefix_tokens, a.suffix_tokens
    ref = scores.get("batched") or scores.get("sequential") or next(iter(scores.values()))
    diff = max((abs(x - y) for k in scores for u, v in zip(scores[k], ref) if u for x, y in zip(u, v)), default=0.0)
    best = {k: min(v) for k, v in times.items()}
    done = {k: (len(groups) * a.per_step_candidates if k == "per-step" else n) for k in best}
    rate = {k: done[k] / t for k, t in best.items()}
    row = {
        "steps": a.steps,
        "groups": len(groups),
        "n": a.n,
        "prefix_tokens": p,
        "suffix_tokens": s,
        "image_tokens": a.image_grid**2,
        "token_bound": round(a.n * (p + s) / (p + a.n * s), 3),
        "candidates_per_s": {k: round(v, 3) for k, v in rate.items()},
        "seconds_best": {k: round(v, 4) for k, v in best.items()},
        "seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "max_score_diff": float(f"{diff:.3g}"),
    }
    for k in ("sequential", "per-step", "batched"):
        if k in rate and "shared" in rate:
            row[f"shared_vs_{k.replace('-', '_')}"] = round(rate["shared"] / rate[k], 3)
    if model is not None:
        fl = method_flops(model, groups, p, s, a.per_step_candidates)
        row["mfu"] = {k: round(fl[k] / best[k] / (a.peak_tflops * 1e12), 4) for k in best}
    print(f"\n{len(groups)} x N={a.n} candidates, P={p} shared + S={s} own tokens, {a.steps} steps ({machine})")
    print(f"{'way':<12}{'cand/s':>10}{'best s':>10}{'median s':>10}{'shared is':>11}" + ("    MFU" if model else ""))
    for k in best:
        mfu = f"{row['mfu'][k]:>7.1%}" if model is not None else ""
        vs = f"{rate['shared'] / rate[k]:>9.2f}x" if "shared" in rate else ""
        print(f"{k:<12}{rate[k]:>10.2f}{best[k]:>10.3f}{row['seconds_median'][k]:>10.3f} {vs:>10}{mfu}")
    print(f"token-count bound N(P+S)/(P+NS) = {row['token_bound']}; max |score difference| = {diff:.2g}")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default="cpu", help="model shape, device and dtype (cpu)")
    ap.add_argument("--arch", choices=("qwen2_vl", "qwen2_5_vl"), help="architecture (preset's)")
    for name in ("hidden-size", "intermediate-size", "layers", "heads", "kv-heads"):
        ap.add_argument(f"--{name}", type=int, help="text model shape (preset's)")
    for name in ("vision-depth", "vision-dim", "vision-heads"):
        ap.add_argument(f"--{name}", type=int, help="vision tower shape (preset's)")
    ap.add_argument("--device", help="cpu or cuda (preset's)")
    ap.add_argument("--dtype", help="float32 or bfloat16 (preset's)")
    ap.add_argument("--groups", type=int, help="problems (cpu: 1, 7b: 4)")
    ap.add_argument("--n", type=int, default=8, help="candidates per problem (8)")
    ap.add_argument("--prefix-tokens", type=int, default=1200, help="shared prefix P: system, image, question (1200)")
    ap.add_argument(
        "--image-grid", type=int, default=30, help="image of G x G merged patches = G^2 tokens; 0: text only (30)"
    )
    ap.add_argument("--suffix-tokens", type=int, default=300, help="tokens of each candidate after the prefix (300)")
    ap.add_argument("--steps", default="8", help="steps per candidate; a comma list runs several workloads (8)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per batch, batched and shared ways (8)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="shared way: rows x (P + S) per batch")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds; the best counts (5)")
    ap.add_argument(
        "--per-step-candidates",
        type=int,
        default=1,
        help="the per-step way scores only the first K candidates of each group (all\n"
        "cost the same; its candidates/s counts those): it is ~(steps+1)/2 times slower (1)",
    )
    ap.add_argument("--skip", default="", help="ways not to run, comma list (e.g. per-step)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak for MFU (989: H100/H200)")
    ap.add_argument("--threads", type=int, help="torch CPU threads; 0 = torch's default (cpu: 1)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for k, v in PRESETS[a.preset].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)

    import torch

    from visualprm.scoring import Scorer

    if a.threads:
        torch.set_num_threads(a.threads)
    model, processor = build(a)
    scorer = Scorer(model, processor, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens)
    cuda = model.device.type == "cuda"
    gpu = torch.cuda.get_device_name() if cuda else None
    machine = gpu or f"{cpu_name()}, {os.cpu_count()} CPU cores"
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"# {a.arch}-shaped random model, {n_params / 1e6:.1f}M parameters, text {a.hidden_size} x {a.layers} layers,"
        f" {a.dtype} on {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        file=sys.stderr,
    )
    a.skip = {x for x in a.skip.split(",") if x}
    a.per_step_candidates = min(a.per_step_candidates, a.n)
    runs = []
    for steps in [int(x) for x in str(a.steps).split(",")]:
        a.steps = steps
        groups = make_workload(scorer, a)
        times, scores = time_ways(scorer, a, groups, cuda)
        runs.append(report(a, groups, times, scores, machine, model if cuda else None))
    out = dict(runs[0])
    out.update({"machine": machine, "preset": a.preset, "dtype": a.dtype, "hidden_size": a.hidden_size})
    out["layers"] = a.layers
    if len(runs) > 1:
        out["runs"] = runs
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
