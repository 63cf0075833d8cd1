"""`annotate` on a Ray cluster (`--ray [ADDRESS]`), and what the Ray jobs share: connecting, actor pools, the
stage report, the `--ray` options. `score` and `bon` on Ray are ray_score.py's.

The driver (the process you start) reads and validates the input exactly as the plain command does, holds the
output file's lock, and is the only writer: results stream back from the actors and the driver writes them as
they arrive, in the plain command's format. Workers never touch the output file.

annotate: one Ray Data block per `--concurrency` problems; a policy actor (`synthetic`, `py:`, `hf:`, `vllm:`
on `--num-gpus-per-engine` GPUs, or `openai:` clients over a fleet `openai:MODEL@URL1,URL2,..`) runs
`mclabel.run_rounds` over the block with `mclabel.annotate_problem`, so every strategy and seed works
unchanged. The driver builds the lines with `montecarlo._records` and appends each problem with one write, so
resume, `read_done` and exactly-once are the plain run's: a SIGKILLed driver leaves finished problems and at
most a torn last line; re-running the command skips them. Seeds derive from the problem id and the step, so the
lines equal a plain run's (order aside). A problem that fails (bad image, refused request, an exception) is
skipped and counted. An actor that dies is restarted by Ray and its block retried (Ray Data's defaults); a
block that errors all the same is counted failed (not written), and a re-run redoes it.

Inputs, images, checkers and models are read by path on the workers: on a multi-node cluster they must be on a
filesystem every node sees, and visualprm (with the `[ray]` extra) installed on every node. This module does not
score (ray_score.py) and does not start or stop clusters it did not start itself (`--ray local` starts one inside
the driver). Ray is imported inside the functions.
"""

from __future__ import annotations

import math
import pickle
import sys
import time
from collections import Counter
from pathlib import Path

from .schema import InputError

# ---------------------------------------------------------------------------------------------------------------
# Connecting


def connect(address: str | None) -> float:
    """Join (or start, for `local`) a Ray cluster; returns the seconds it took. Already connected: reuse it."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'visualprm[ray]'", field="ray") from None
    import logging

    t0 = time.time()
    # "default": ray.init()'s own choice (RAY_ADDRESS, or a cluster `ray start`ed here, else a new local one);
    # "local": always a new local instance; "auto": an existing cluster; else an address (HOST:PORT, ray://..)
    target = None if address in (None, "", "default") else address
    if target not in (None, "local", "auto"):
        _check_reachable(target)
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
        try:
            ray.init(address=target, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"--ray {address}: cannot connect to a Ray cluster: {msg}", field="ray") from None
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is on the driver
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return time.time() - t0


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """HOST:PORT or ray://HOST:PORT must accept a TCP connection (Ray itself waits minutes on a wrong address)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address!r}: expected local, auto, HOST:PORT or ray://HOST:PORT", field="ray")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"--ray {address}: no Ray cluster answers there ({e})", field="ray") from None


def _pool(rows: list[dict], n_blocks: int, gpus_each: float, cpu_bound: bool = True):
    """(dataset of `n_blocks` blocks, actors, per-actor resources): one actor per `gpus_each` GPUs when the
    cluster has GPUs, else one per CPU (two per CPU for I/O-bound clients); never more actors than blocks."""
    import ray
    import ray.data

    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    if gpus and gpus_each > 0:
        n, each = max(1, int(gpus // gpus_each)), {"num_gpus": gpus_each, "num_cpus": 1}
    else:
        n, each = max(1, cpus if cpu_bound else 2 * cpus), {"num_cpus": 1 if cpu_bound else 0.5}
    return ray.data.from_items(rows, override_num_blocks=max(1, n_blocks)), max(1, min(n, n_blocks)), each


# ---------------------------------------------------------------------------------------------------------------
# annotate


class _FleetPolicy:
    """One openai: client per server of a fleet; each `generate` call is split evenly across them."""

    def __init__(self, policies: list):
        self.policies = policies
        self.name = policies[0].name

    def generate(self, requests):
        from concurrent.futures import ThreadPoolExecutor

        n = len(self.policies)
        parts = [requests[i::n] for i in range(n)]
        with ThreadPoolExecutor(n) as ex:
            outs = list(ex.map(lambda pr: pr[0].generate(pr[1]) if pr[1] else [], zip(self.policies, parts)))
        merged: list = [None] * len(requests)
        for i, out in enumerate(outs):
            merged[i::n] = out
        return merged

    def close(self):
        for p in self.policies:
            p.close()


def fleet_urls(spec: str) -> list[str] | None:
    """`openai:MODEL@URL1,URL2,..` -> the URLs; None for other specs."""
    if not spec.startswith("openai:") or "@" not in spec:
        return None
    return [u.strip() for u in spec.split("@", 1)[1].split(",") if u.strip()]


def _load_policy(spec: str, prompt: str, concurrency: int, options: dict, gpus: float):
    from .policy import load_policy

    urls = fleet_urls(spec)
    if urls and len(urls) > 1:
        model = spec[len("openai:") :].split("@", 1)[0]
        return _FleetPolicy([load_policy(f"openai:{model}@{u}", prompt, concurrency, **options) for u in urls])
    if spec.startswith("vllm:") and gpus > 1:  # tensor parallel over this actor's GPUs, in its own processes
        tp = {"tensor_parallel_size": int(gpus), "distributed_executor_backend": "mp"}
        options = {**options, "engine_kwargs": {**tp, **(options.get("engine_kwargs") or {})}}
    return load_policy(spec, prompt, concurrency, **options)


class AnnotateWorker:
    """A Ray Data actor: holds one policy (an engine on its GPUs, or clients), labels a block of problems."""

    def __init__(self, spec: str, run: dict, checker, splitter, options: dict, gpus: float):
        from .answers import load_checker
        from .schema import load_splitter

        self.run, self.check, self.split = run, load_checker(checker), load_splitter(splitter)
        self.policy = _load_policy(spec, run["prompt"], run["concurrency"], options, gpus)
        from .sequential import token_counter

        self.count_tokens = token_counter(self.policy)

    def _job(self, p: dict):
        from .mclabel import annotate_problem

        r = self.run
        sampling = {"temperature": r["temperature"], "top_k": r["top_k"], "top_p": r["top_p"]}
        sampling["max_tokens"] = r["max_tokens"]
        return annotate_problem(
            p,
            solutions=r["solutions"],
            rollouts=r["rollouts"],
            max_steps=r["max_steps"],
            strategy=r["strategy"],
            seed=r["seed"],
            check=self.check,
            split=self.split,
            sampling=sampling,
            first_round=r["first_round"],
            threshold=r["threshold"],
            count_tokens=self.count_tokens,
        )

    def _rounds(self, problems: list[dict], results: dict) -> None:
        from .mclabel import run_rounds

        def done(p, res):
            results[p["id"]] = (True, res)

        def fail(p, e):
            results[p["id"]] = (False, str(e))

        run_rounds(problems, self.policy, self._job, max(1, len(problems)), done, fail)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        t0 = time.time()
        problems = [pickle.loads(b) for b in batch["p"]]
        results: dict = {}
        try:
            self._rounds(problems, results)
        except Exception:  # something other than bad input or a refused request: find its problem
            results = {}
            for p in problems:
                try:
                    self._rounds([p], results)
                except Exception as e:
                    results[p["id"]] = (False, f"{type(e).__name__}: {e}")
        secs = (time.time() - t0) / max(1, len(problems))
        ids = [p["id"] for p in problems]
        out = [pickle.dumps(results.get(i, (False, "no result"))) for i in ids]
        return {"id": np.array(ids, dtype=object), "r": np.array(out, dtype=object), "s": np.full(len(ids), secs)}


def annotate_ray(
    problems: str,
    policy: str,
    out: str,
    address: str | None = "local",
    num_gpus_per_engine: float = 1.0,
    solutions: int = 4,
    rollouts: int = 16,
    max_steps: int = 12,
    strategy: str = "all",
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    max_tokens: int = 4096,
    concurrency: int = 8,
    shard: str | None = None,
    seed: int = 0,
    prompt: str = "final-answer",
    checker: str | None = None,
    splitter: str | None = None,
    image_root: str | None = None,
    policy_options: dict | None = None,
    first_round: int | None = None,
    threshold: float = 0.0,
    progress: bool = True,
    **later_options,
) -> dict:
    """`annotate_file` on a Ray cluster: the same arguments, checks, output lines, resume and summary."""
    from . import montecarlo as mc
    from .answers import load_checker
    from .policy import parse_policy_spec
    from .schema import load_splitter

    unknown = [k for k, v in later_options.items() if v is not None]  # options annotate_file learnt after this
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise InputError(f"--ray does not take {flags} yet", field="ray")

    run = mc.run_settings(policy, solutions=solutions, rollouts=rollouts, max_steps=max_steps, strategy=strategy,
                          temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed,
                          prompt=prompt, checker=checker, splitter=splitter, first_round=first_round,
                          threshold=threshold)  # fmt: skip
    urls = fleet_urls(policy)
    for u in urls or [None]:
        parse_policy_spec(policy if u is None else f"{policy.split('@', 1)[0]}@{u}")
    load_checker(checker)  # a bad checker or splitter fails here, not on the workers
    load_splitter(splitter)
    shard_i, shard_n = mc.parse_shard(shard)
    todo, bad = mc.load_problems(problems, (shard_i, shard_n), image_root)
    if bad and not todo:
        raise bad[0]
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    options = dict(policy_options or {})
    lock = mc._lock(out_path)
    try:
        todo, n_resumed = mc.resume_todo(out_path, run, todo, bad)
        stats: Counter = Counter()
        stages: dict = {}
        if todo:
            if urls:  # an unreachable server fails here, before any work
                from .openai_client import probe

                model = policy[len("openai:") :].split("@", 1)[0]
                for u in urls:
                    probe(u, model, options.get("api_key"))
            stages["connect_s"] = connect(address)
            stats, stages = _annotate_stream(todo, policy, run, checker, splitter, options, concurrency,
                                             num_gpus_per_engine, out_path, progress, stages)  # fmt: skip
    finally:
        mc._unlock(lock, out_path)
    summary = mc.summarize(out_path)
    elapsed = stages.get("seconds", 0.0)
    keys = ("problems_done", "failed_problems", "rollouts", "tokens", "requests", "rollouts_unparsed")
    this_run = {k: stats[k] for k in keys}
    this_run.update(empty_responses=stats["empty_responses"], seconds=round(elapsed, 2))
    this_run["rollouts_per_second"] = round(stats["rollouts"] / elapsed, 1) if elapsed > 0 else 0.0
    summary.update(
        this_run=this_run,
        shard=f"{shard_i}/{shard_n}",
        resumed_problems=n_resumed,
        bad_problems=len(bad),
        ray=stages,
    )
    mc._print_summary(summary, out)
    if stages.get("actors"):
        _print_stages(stages, "problems")
    return summary


def _annotate_stream(todo, policy, run, checker, splitter, options, concurrency, gpus, out_path, progress, stages):
    import ray.data
    from tqdm import tqdm

    from .montecarlo import _records
    from .policy import policy_prompt
    from .schema import append_jsonl

    conc = max(1, concurrency)
    n_blocks = math.ceil(len(todo) / conc)
    kind = policy.split(":", 1)[0]
    gpu_kind = kind in ("hf", "vllm")
    ray.data.DataContext.get_current().max_errored_blocks = n_blocks
    by_id = {p["id"]: p for p in todo}
    rows = [{"id": p["id"], "p": pickle.dumps(p)} for p in todo]
    ds, n_actors, res = _pool(rows, n_blocks, gpus if gpu_kind else 0, cpu_bound=kind != "openai")
    ds = ds.map_batches(
        AnnotateWorker,
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        fn_constructor_args=(policy, {**run, "concurrency": conc}, checker, splitter, options, gpus),
        **res,
    )
    stats: Counter = Counter()
    first_error: list[str] = []
    worker_s = write_s = 0.0
    t0 = time.time()
    bar = tqdm(total=len(todo), desc="annotate (ray)", unit="problem", file=sys.stderr, disable=not progress or None)
    seen: set = set()
    try:
        for row in ds.iter_rows():  # streaming: rows come as blocks finish
            pid = row["id"]
            if pid in seen:  # a retried block delivers nothing twice
                continue
            seen.add(pid)
            ok, res_ = pickle.loads(row["r"])
            worker_s += float(row["s"])
            tw = time.time()
            if ok:
                p = by_id[pid]
                append_jsonl(out_path, _records(p, res_, policy_prompt(p, run["prompt"]), run, out_path.parent))
                stats["problems_done"] += 1
                stats["rollouts"] += res_["rollouts"]
                stats["tokens"] += res_["tokens"]
                stats["requests"] += res_["requests"]
                stats["rollouts_unparsed"] += res_["rollouts_unparsed"]
                stats["empty_responses"] += res_["empty"]
            else:
                stats["failed_problems"] += 1
                first_error.append(f"problem {pid!r}: {res_}")
                bar.write(f"warning: skipping problem {pid!r}: {res_}", file=sys.stderr)
            write_s += time.time() - tw
            bar.update(1)
            rate = stats["rollouts"] / max(time.time() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:.1f} rollouts/s", refresh=False)
    finally:
        bar.close()
    lost = [pid for pid in by_id if pid not in seen]
    for pid in lost:  # blocks given up on after Ray's retries: not written, a re-run redoes them
        stats["failed_problems"] += 1
        first_error.append(f"problem {pid!r}: lost with its worker after retries")
    if lost:
        print(f"warning: {len(lost)} problem(s) lost with their workers; re-run to redo them", file=sys.stderr)
    if stats["failed_problems"] == len(todo):
        raise InputError(f"every problem failed ({len(todo)}); the first: {first_error[0]}")
    elapsed = time.time() - t0
    stages.update(seconds=elapsed, actors=n_actors, blocks=n_blocks, items=len(todo), rollouts=stats["rollouts"])
    stages.update(worker_s=worker_s, write_s=write_s, resources=res)
    return stats, stages


def _print_stages(st: dict, unit: str) -> None:
    wall = max(st["seconds"], 1e-9)
    n = st["items"]
    print(
        f"  ray: connect {st['connect_s']:.1f}s; {st['actors']} actor(s) ({st['resources']}), {st['blocks']} blocks, "
        f"{wall:.1f}s wall"
    )
    extra = f", {st['rollouts'] / wall:.1f} rollouts/s" if st.get("rollouts") else ""
    per_actor = n / max(st["worker_s"], 1e-9)
    print(
        f"  stage workers: {n} {unit} in {st['worker_s']:.1f} actor-s ({per_actor:.2f} {unit}/s per actor); "
        f"pipeline {n / wall:.2f} {unit}/s{extra}"
    )
    print(f"  stage driver write: {st['write_s']:.2f}s ({n / max(st['write_s'], 1e-9):.0f} {unit}/s)")


# ---------------------------------------------------------------------------------------------------------------
# Command-line options (annotate, score, bon)


def add_ray_options(p, engine: str) -> None:
    """`--ray [ADDRESS]` and `--num-gpus-per-ENGINE` on a subcommand's parser."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="default",
        default=None,
        metavar="ADDRESS",
        help="run on Ray ('[ray]' extra): bare --ray joins the cluster `ray start`ed here or $RAY_ADDRESS, else "
        "starts one; 'local': a new one in this process; 'auto': an existing cluster; or HOST:PORT / ray://HOST:PORT",
    )
    what = "policy engine (hf:, vllm:; vllm: tensor parallel over them)" if engine == "engine" else "Scorer actor"
    p.add_argument(
        f"--num-gpus-per-{engine}",
        type=float,
        default=1.0,
        help=f"--ray on a cluster with GPUs: GPUs per {what} (1); without GPUs one actor per CPU",
    )
