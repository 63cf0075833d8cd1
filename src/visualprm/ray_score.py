"""`score` and `bon` on a Ray cluster (`--ray [ADDRESS]`): Scorer actors over a Ray Data pipeline.

Scorer actors (one per `--num-gpus-per-scorer` GPUs, else one per CPU) score the same chunks the plain command
scores (`scoring.score_records` / `bon._score_all`), so the batches, hence the floats, are the same; results stream
back and the driver (the only writer) writes them in input order. `score_ray` writes the plain command's output
file (a temporary file, renamed at the end); bon's picks, evaluation and report are `bon.bon_file` itself, fed the
scores computed on the cluster.

Connecting, the actor pool and the stage report are ray_jobs.py's (as is `add_ray_options`). Models and images
are read by path on the workers (a filesystem every node sees). This module does not annotate (ray_jobs.py) and
does not start or stop clusters it did not start itself. Ray is imported inside the functions.
"""

from __future__ import annotations

import pickle
import sys
import time

from .ray_jobs import _pool, _print_stages, connect
from .schema import InputError


def _load_scorer(prm: str, opts: dict):
    from .scoring import load_prm

    return load_prm(prm, **opts)  # a folder, openai:MODEL@URL or a visualprm service, as the plain command


class ScoreWorker:
    """A Ray Data actor holding a Scorer (and an ORM for bon): scores a chunk exactly as the plain command does."""

    def __init__(self, job: str, prm: str, opts: dict, extra: dict):
        self.job, self.extra = job, extra
        self.scorer = _load_scorer(prm, opts)
        orm = extra.get("orm")
        self.orm = None if orm is None else self.scorer if orm == "prm" else _load_scorer(orm, opts)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out, secs = [], []
        for blob in batch["p"]:
            t0 = time.time()
            part = pickle.loads(blob)
            try:
                if self.job == "score":
                    from .scoring import score_records

                    res = (True, [s for c in score_records(self.scorer, part, progress=False) for _, s in c])
                else:
                    from .bon import _score_all

                    e = self.extra
                    ss = _score_all(self.scorer, part, e["image_root"], e["no_image"], False, chunk=len(part))
                    orm = None
                    if self.orm is not None:
                        orm = _score_all(self.orm, part, e["image_root"], e["no_image"], True, chunk=len(part))
                    res = (True, (ss, orm))
            except InputError as err:
                res = (False, err)
            out.append(pickle.dumps(res))
            secs.append(time.time() - t0)
        return {"i": batch["i"], "r": np.array(out, dtype=object), "s": np.array(secs)}


def _scored_chunks(job, prm, opts, extra, chunks, gpus, address, progress, unit_count, desc, stages: dict):
    """Yield each chunk's result in input order while the actors work; fills `stages`."""
    import ray.data
    from tqdm import tqdm

    stages["connect_s"] = connect(address)
    ray.data.DataContext.get_current().max_errored_blocks = 0
    rows = [{"i": k, "p": pickle.dumps(c)} for k, c in enumerate(chunks)]
    ds, n_actors, res = _pool(rows, len(chunks), gpus)
    ds = ds.map_batches(
        ScoreWorker,
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        fn_constructor_args=(job, prm, opts, extra),
        **res,
    )
    t0 = time.time()
    worker_s = write_s = 0.0
    total = sum(unit_count(c) for c in chunks)
    bar = tqdm(total=total, desc=desc, unit="sol", file=sys.stderr, disable=not progress or None)
    waiting: dict[int, object] = {}
    nxt = 0
    try:
        for row in ds.iter_rows():  # streaming: rows come as blocks finish
            k = int(row["i"])
            ok, val = pickle.loads(row["r"])
            if not ok:
                raise val
            worker_s += float(row["s"])
            waiting[k] = val
            bar.update(unit_count(chunks[k]))
            while nxt in waiting:
                ty = time.time()
                yield waiting.pop(nxt)  # the caller writes it
                write_s += time.time() - ty
                nxt += 1
    finally:
        bar.close()
    if nxt != len(chunks):
        raise RuntimeError(f"ray: {len(chunks) - nxt} chunk(s) came back without a result")
    stages.update(seconds=time.time() - t0, actors=n_actors, blocks=len(chunks), items=total, worker_s=worker_s)
    stages.update(resources=res, write_s=write_s)


def score_ray(
    prm: str,
    input_path: str,
    out_path: str,
    address: str | None = "local",
    num_gpus_per_scorer: float = 1.0,
    aggregate: str = "mean",
    batch_size: int = 8,
    image_root: str | None = None,
    system_prompt: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    max_steps: int = 12,
    max_length: int | None = None,
    label_mode: str = "auto",
    splitter: str | None = None,
    api_key: str | None = None,
    engine_options: dict | None = None,
    progress: bool = True,
) -> int:
    """`score_file` on a Ray cluster: the same checks and the same output file (input order), written as the
    chunks come back (to a temporary file, renamed at the end)."""
    from .schema import load_splitter, write_jsonl
    from .scoring import AGGREGATES, load_solutions, scored_record

    t0 = time.time()
    if aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r} (expected one of {', '.join(AGGREGATES)})")
    split_fn = load_splitter(splitter) if splitter else None
    records = load_solutions(input_path, image_root, max_steps, split_fn)
    opts = {"device": device, "dtype": dtype, "label_mode": label_mode, "batch_size": batch_size}
    opts.update(system_prompt=None if system_prompt is True else system_prompt, max_length=max_length)
    opts.update(engine_options or {}, api_key=api_key)
    size = max(1, batch_size) * 4  # score_records' chunk: the same batches as the plain command
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    counts = {"records": 0, "steps": 0}
    st: dict = {}

    def lines():
        results = _scored_chunks("score", prm, opts, {}, chunks, num_gpus_per_scorer, address, progress, len,
                                 "scoring (ray)", st)  # fmt: skip
        for k, scores in enumerate(results):  # (not zip: the generator must run to its end)
            part = chunks[k]
            for (_, sol), s in zip(part, scores):
                counts["records"] += 1
                counts["steps"] += len(s)
                yield scored_record(sol, s, aggregate)

    write_jsonl(out_path, lines())
    dt = time.time() - t0
    n = counts["records"]
    print(
        f"scored {n} records, {counts['steps']} steps in {dt:.1f}s ({n / max(dt, 1e-9):.1f} records/s) -> {out_path}"
    )
    _print_stages(st, "records")
    return 0


class _Replay:
    """An engine for `bon_file` that hands back the scores computed on the cluster, in order."""

    def __init__(self, groups: list):
        self.groups, self.k = groups, 0

    def score_groups(self, groups: list[dict]) -> list:
        out = self.groups[self.k : self.k + len(groups)]
        if len(out) != len(groups) or any(len(o) != len(g["solutions"]) for o, g in zip(out, groups)):
            raise RuntimeError("ray: the scores that came back do not match the problems")
        self.k += len(groups)
        return out


def bon_ray(
    prm: str | None,
    input_path: str,
    out_dir: str,
    address: str | None = "local",
    num_gpus_per_scorer: float = 1.0,
    judge: str | None = None,
    progress: bool = True,
    **kw,
) -> int:
    """`bon_file` on a Ray cluster: the PRM (and ORM) scores come from Scorer actors, everything else is
    `bon_file` itself, so the files equal the plain command's."""
    from .bon import _load_problems, bon_file

    if judge is not None or prm is None:
        raise InputError("--ray needs --prm (an MLLM judge is a server already: use --concurrency)", field="ray")
    problems = _load_problems(input_path, kw.get("limit"), kw.get("max_steps", 12), kw.get("splitter"))
    opts = {"device": kw.get("device"), "dtype": kw.get("dtype"), "batch_size": kw.get("batch_size", 8)}
    opts.update(max_length=kw.get("max_length"), label_mode=kw.get("label_mode", "auto"))
    sp = kw.get("system_prompt", True)
    opts.update(system_prompt=None if sp is True else sp)
    opts.update(kw.get("engine_options") or {}, api_key=kw.get("api_key"))
    opts.update(share_prefix=kw.get("share_prefix", True), max_batch_tokens=kw.get("max_batch_tokens"))
    extra = {"orm": kw.get("orm"), "image_root": kw.get("image_root"), "no_image": kw.get("no_image", False)}
    chunks = [problems[i : i + 16] for i in range(0, len(problems), 16)]  # bon._score_all's chunk

    def n_sols(c):
        return sum(len(p["_steps"]) for p in c)

    ss, orm, st = [], [], {}
    for s, o in _scored_chunks("bon", prm, opts, extra, chunks, num_gpus_per_scorer, address, progress, n_sols,
                               "scoring (ray)", st):  # fmt: skip
        ss += s
        orm += o or []
    orm_engine = _Replay(orm) if extra["orm"] else None
    kw = {**kw, "no_image": True}  # the driver's replay needs no images
    tw = time.time()
    rc = bon_file(prm, input_path, out_dir, judge=None, engine=_Replay(ss), orm_engine=orm_engine, **kw)
    st["write_s"] += time.time() - tw
    _print_stages(st, "solutions")
    return rc
