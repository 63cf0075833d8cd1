"""PRM scores from a serving engine (`--prm openai:MODEL@URL`) vs the in-process scorer: requests, cache, speed.

CPU (runs anywhere, the default): a tiny random-weight PRM (`--arch`) is served by the test suite's fake
OpenAI-compatible server (tests/fake_engine.py: renders each request with the model's chat template and runs
the model on the whole prompt, one request at a time, no batching and no real prefix cache; it reports
`cached_tokens` from a simulated block cache, so the cached fraction is what a prefix-caching server could
skip, not time saved). G groups of N candidates of S steps each (an image per group) are scored three ways:
`OpenAIScorer.score_groups` against the fake (one request per step), the in-process `Scorer.score_steps`
(batched, one pass per candidate) and `Scorer.score_groups` (prefix-shared). It prints requests per solution,
the prompt tokens sent and the cached share, step scores per second for each way, and the largest difference
between engine and in-process step scores. On CPU the engine is expected to be far slower: n full prompts per
solution against one pass, with no cache to absorb them; the figure is the cost of the portable route without
an engine's prefix cache and batching.

GPU (`--vllm FOLDER`, needs vllm and a CUDA device; written for such a machine, not run on the CPU machine this
was developed on): starts `vllm serve FOLDER` (prefix caching on, `--max-logprobs 20`, prompt token details on)
on a free port, scores the same workload through it with `OpenAIScorer` (label token ids from the folder,
so vLLM's `logprob_token_ids` is used where the server has it), reads the prefix-cache hit rate from the
replies' `usage.prompt_tokens_details.cached_tokens`, and compares step scores per second with the in-process
`Scorer` on the same GPU (batched and prefix-shared, bf16), loaded after the vLLM server is stopped. FOLDER is
a tiny PRM (`visualprm make-tiny-model`) or a converted/trained checkpoint vLLM can serve.

    python benchmarks/engine.py                              # CPU: fake server, tiny qwen2_vl
    python benchmarks/engine.py --groups 8 --candidates 8 --arch internvl
    python benchmarks/engine.py --vllm out/prm --groups 64   # GPU machine with vllm installed

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fake_engine.py lives with the tests

WORDS = "the red circle is left of the blue square so we count 3 + 4 = 7 and 12 - 5 = 7 therefore bar".split()


def workload(groups: int, candidates: int, steps: int, words: int, seed: int = 0) -> list[dict]:
    import random

    from PIL import Image

    rng = random.Random(seed)
    out = []
    for g in range(groups):
        image = Image.new("RGB", (56 + 8 * (g % 3), 56), (rng.randrange(256), rng.randrange(256), 40))
        sols = [[" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(steps)] for _ in range(candidates)]
        out.append({"question": f"Problem {g}: how many shapes are red?", "images": [image], "solutions": sols})
    return out


def _timed(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _maxdiff(a, b) -> float:
    return max(abs(x - y) for ga, gb in zip(a, b) for sa, sb in zip(ga, gb) for x, y in zip(sa, sb))


def _engine_figures(eng, groups, repeat: int, reset=None) -> tuple[float, list, dict]:
    """Best time over `repeat` rounds and the counts of one round; `reset()` (the fake's) empties its cache
    before each round, so every round starts cold as the first would."""
    eng.score_groups(workload(1, 1, 1, 5, seed=99))  # warm-up (connections), on other text and another image
    best, scores, c = float("inf"), None, {}
    for _ in range(repeat):
        if reset is not None:
            reset()
        before = {k: eng.counts[k] or 0 for k in eng.counts}
        t0 = time.perf_counter()
        scores = eng.score_groups(groups)
        best = min(best, time.perf_counter() - t0)
        c = {k: (eng.counts[k] or 0) - before[k] for k in before}
    return best, scores, c


def run_cpu(a) -> dict:
    import torch
    from fake_engine import FakeEngine

    from visualprm.remote_prm import OpenAIScorer
    from visualprm.scoring import Scorer
    from visualprm.tiny import build_tiny

    torch.set_num_threads(a.threads)
    model, processor = build_tiny(a.arch, seed=0)
    groups = workload(a.groups, a.candidates, a.steps, a.words)
    items = [{"question": g["question"], "images": g["images"], "steps": s} for g in groups for s in g["solutions"]]
    n_steps = sum(len(it["steps"]) for it in items)
    fake = FakeEngine({a.arch: (model, processor)})
    url = fake.start()
    try:
        eng = OpenAIScorer(a.arch, url, processor=processor, concurrency=a.concurrency)
        t_engine, s_engine, c = _engine_figures(eng, groups, a.repeat, reset=fake.reset)
    finally:
        fake.stop()
    scorer = Scorer(model, processor, batch_size=a.batch_size)
    scorer.score_steps(items[:1])
    t_batched, s_batched = _timed(lambda: scorer.score_steps(items), a.repeat)
    t_shared, s_shared = _timed(lambda: scorer.score_groups(groups), a.repeat)
    regroup, k = [], 0
    for g in groups:
        regroup.append(s_batched[k : k + len(g["solutions"])])
        k += len(g["solutions"])
    return {
        "mode": "cpu-fake-server",
        "arch": a.arch,
        "workload": {"groups": a.groups, "candidates": a.candidates, "steps": a.steps, "words_per_step": a.words},
        "requests_per_solution": c["requests"] / max(1, c["solutions"]),
        "prompt_tokens": c["prompt_tokens"],
        "cached_fraction_simulated": c["cached_tokens"] / max(1, c["prompt_tokens"]),
        "bounded_steps": c["bounded_steps"],
        "scores_per_s": {
            "engine_fake_server": n_steps / t_engine,
            "in_process_batched": n_steps / t_batched,
            "in_process_shared": n_steps / t_shared,
        },
        "engine_vs_in_process_batched": t_batched / t_engine,
        "max_abs_diff_engine_vs_in_process": _maxdiff(s_engine, regroup),
        "max_abs_diff_shared_vs_batched": _maxdiff(s_shared, regroup),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_vllm(a) -> dict:
    """vLLM serving FOLDER vs the in-process Scorer on the same GPU (see the module docstring)."""
    import httpx

    from visualprm.remote_prm import OpenAIScorer
    from visualprm.scoring import Scorer

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", a.vllm, "--port", str(port)]
    cmd += ["--max-logprobs", "20", "--enable-prefix-caching", "--enable-prompt-tokens-details"]
    cmd += ["--dtype", "bfloat16", "--gpu-memory-utilization", str(a.gpu_memory_utilization)]
    cmd += ["--limit-mm-per-prompt", json.dumps({"image": 4})]
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    groups = workload(a.groups, a.candidates, a.steps, a.words)
    n_steps = a.groups * a.candidates * a.steps
    try:
        deadline = time.time() + a.startup_s
        while True:
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"vllm did not come up on {url} (exit {proc.poll()})")
            time.sleep(2)
        eng = OpenAIScorer.from_spec(f"openai:{a.vllm}@{url}", concurrency=a.concurrency, top_logprobs=20)
        t_engine, s_engine, c = _engine_figures(eng, groups, a.repeat)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    scorer = Scorer.from_pretrained(a.vllm, device="cuda", dtype="bfloat16", batch_size=a.batch_size)
    items = [{"question": g["question"], "images": g["images"], "steps": s} for g in groups for s in g["solutions"]]
    scorer.score_steps(items[:1])
    t_batched, _ = _timed(lambda: scorer.score_steps(items), a.repeat)
    t_shared, s_shared = _timed(lambda: scorer.score_groups(groups), a.repeat)
    return {
        "mode": "gpu-vllm",
        "folder": a.vllm,
        "workload": {"groups": a.groups, "candidates": a.candidates, "steps": a.steps, "words_per_step": a.words},
        "requests_per_solution": c["requests"] / max(1, c["solutions"]),
        "prompt_tokens": c["prompt_tokens"],
        "prefix_cache_hit_rate": c["cached_tokens"] / max(1, c["prompt_tokens"]),
        "bounded_steps": c["bounded_steps"],
        "scores_per_s": {
            "vllm_engine": n_steps / t_engine,
            "in_process_batched_bf16": n_steps / t_batched,
            "in_process_shared_bf16": n_steps / t_shared,
        },
        "vllm_vs_in_process_shared": t_shared / t_engine,
        "max_abs_diff_vllm_vs_in_process_shared": _maxdiff(s_engine, s_shared),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="qwen2_vl", help="CPU: tiny architecture served by the fake server")
    p.add_argument("--vllm", default=None, help="GPU: a PRM folder to serve with vLLM (needs vllm + CUDA)")
    p.add_argument("--groups", type=int, default=4, help="problems (groups of candidates) (4)")
    p.add_argument("--candidates", type=int, default=4, help="candidates per problem (4)")
    p.add_argument("--steps", type=int, default=6, help="steps per candidate (6)")
    p.add_argument("--words", type=int, default=20, help="words per step (20)")
    p.add_argument("--concurrency", type=int, default=64, help="engine requests in flight (64)")
    p.add_argument("--batch-size", type=int, default=16, help="in-process solutions per batch (16)")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds, the best counts (2)")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads (1)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.45, help="GPU: vLLM's share of memory")
    p.add_argument("--startup-s", type=float, default=900, help="GPU: seconds to wait for vLLM to come up")
    a = p.parse_args()
    res = run_vllm(a) if a.vllm else run_cpu(a)
    res["machine"] = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    for k, v in res.items():
        print(f"{k:38s} {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
