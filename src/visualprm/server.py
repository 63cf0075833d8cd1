"""HTTP scoring service (`visualprm serve`): step rewards for RL trainers and search procedures on other machines.

`build_app(scorer, **options)` returns a FastAPI app around any object with the `Scorer` shape
(`score_steps(items) -> list[list[float]]`): `POST /v1/score` (one problem, one or many solutions -> per-step
scores and the aggregate), `POST /v1/bon` (the same body -> the pick and all scores), `GET /health`,
`GET /metrics` (Prometheus text, written by hand in server_metrics.py), and the OpenAPI schema at `/docs`.

Dynamic batching: every solution of every request goes into one queue; a batcher task takes up to
`max_batch_size` solutions, waiting at most `max_wait_ms` after the first for more, and runs `score_steps` on them
in a single worker thread, so the event loop keeps reading and answering other requests meanwhile (and the
scorer is never called from two threads). While the model is busy, new work piles up and forms the next batch.
When a merged batch fails, its solutions are scored one by one, so one bad input (say, too many tokens) fails
only its own request. Bodies are read by an ASGI guard before anything else: the API key is checked first, the
size is capped while reading (a slow client only holds its own connection, and is cut off after
`body_timeout_s`), and image decoding runs in a thread pool.

Refusals name the limit: 401 (API key), 403 (remote URL without `allow_remote_images`, a path outside
`image_root`, a private or loopback address), 408 (body too slow), 413 (body, image bytes or pixels, images,
solutions, steps, characters or tokens over a limit), 422 (malformed JSON, wrong fields, undecodable image),
503 (queue full, with Retry-After). The answer is `{"detail": message, "limit": name}`. Request contents and
images are checked in serve_inputs.py.

It does not load models (scoring.py does; `serve` below is the CLI job that loads one and runs uvicorn), and it
does not keep state between requests beyond counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schema import InputError
from .serve_inputs import ServeError, check_request, load_images, scorer_error
from .server_metrics import (  # noqa: F401 (the metrics names: importable from here as before)
    BATCH_BUCKETS,
    ENDPOINTS,
    LATENCY_BUCKETS,
    Histogram,
    Metrics,
)


@dataclass
class ServeOptions:
    """Batching, limits and access of the service; `build_app(scorer, **options)` takes these as keywords."""

    max_batch_size: int = 16  # solutions per scorer call
    max_wait_ms: float = 5.0  # after the first queued solution, wait this long for more to join its batch
    max_queue: int = 4096  # solutions waiting to be scored; beyond it new requests get 503 + Retry-After
    max_body_bytes: int = 20 * 2**20  # request body
    body_timeout_s: float = 30.0  # a body not fully received by then gets 408
    max_images: int = 8  # images per request
    max_image_bytes: int = 10 * 2**20  # one encoded image (base64-decoded, file or download)
    max_image_pixels: int = 4096 * 4096  # width * height of one image
    max_solutions: int = 64  # solutions per request
    max_steps: int = 64  # steps per solution
    max_chars: int = 100_000  # characters of question + steps of one solution
    max_tokens: int | None = None  # tokens per sequence; enforced by the scorer (its max_length), reported here
    split_steps: int = 12  # a `response` is split on blank lines into at most this many steps (as `score` does)
    image_root: str | None = None  # folder that `image_paths` are read from; None: image_paths refused
    allow_remote_images: bool = False  # fetch http(s) URLs given in `images`
    remote_timeout_s: float = 5.0  # whole download of one remote image
    api_key: str | None = None  # when set, /v1/* and /metrics need `Authorization: Bearer KEY`
    share_prefix: bool = False  # one request's solutions as a prefix-shared group (equal to ~1e-7, not bit-exact)


# ---------------------------------------------------------------------------------------------------------------
# Request and reply bodies (also the OpenAPI schema)


class Solution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[str] | None = Field(None, description="the solution's steps, scored as given")
    response: str | None = Field(None, description="a whole response, split on blank lines like `visualprm score`")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.steps is None) == (self.response is None):
            raise ValueError("give exactly one of 'steps' or 'response'")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    images: list[str] = Field([], description="base64 images (or data: URLs; http(s) URLs if the server allows)")
    image_paths: list[str] = Field([], description="image files relative to the server's --image-root")
    solutions: list[Solution] = Field(..., description="one or many solutions to the same problem")
    aggregate: Literal["mean", "min", "max", "last", "prod"] = "mean"


class SolutionScore(BaseModel):
    step_scores: list[float]
    score: float


class ScoreReply(BaseModel):
    results: list[SolutionScore] = Field(..., description="in the order of `solutions`")


class BonReply(BaseModel):
    best: int = Field(..., description="index of the highest aggregate score (ties: the lower index)")
    score: float
    scores: list[float]
    results: list[SolutionScore]


# ---------------------------------------------------------------------------------------------------------------
# Dynamic batching


class Batcher:
    """Gathers solutions from concurrent requests into scorer calls run in one worker thread."""

    def __init__(self, scorer, opts: ServeOptions, metrics: Metrics):
        self.scorer, self.opts, self.metrics = scorer, opts, metrics
        self.executor: ThreadPoolExecutor | None = None
        self.queue: deque = deque()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.wakeup: asyncio.Event | None = None
        metrics.queue_depth = lambda: len(self.queue)

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visualprm-scorer")
        if self.loop is not loop or self.task is None or self.task.done():
            # A new event loop (another test client) or a dead task: start over with a fresh queue.
            self.loop, self.queue, self.wakeup = loop, deque(), asyncio.Event()
            self.task = loop.create_task(self._run(), name="visualprm-batcher")

    async def submit(self, items: list[dict]) -> list[list[float]]:
        self.ensure_started()
        if len(self.queue) + len(items) > self.opts.max_queue:
            raise ServeError(
                503,
                f"queue full ({len(self.queue)} solutions waiting; max_queue={self.opts.max_queue})",
                "max_queue",
                {"Retry-After": "1"},
            )
        futures = [self.loop.create_future() for _ in items]
        self.queue.extend(zip(items, futures))
        self.wakeup.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    async def _run(self) -> None:
        max_batch, max_wait = self.opts.max_batch_size, self.opts.max_wait_ms / 1000
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            deadline = self.loop.time() + max_wait
            while len(self.queue) < max_batch:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    break
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [self.queue.popleft() for _ in range(min(max_batch, len(self.queue)))]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # drop those whose request went away
            if batch:
                await self._score(batch)

    async def _call(self, items: list[dict]) -> list[list[float]]:
        t0 = time.perf_counter()
        try:
            grouped = getattr(self.scorer, "score_steps_grouped", None) if self.opts.share_prefix else None
            fn = grouped or self.scorer.score_steps
            scores = await self.loop.run_in_executor(self.executor, fn, items)
        finally:
            self.metrics.model_seconds += time.perf_counter() - t0
        if len(scores) != len(items) or any(len(s) != len(it["steps"]) for s, it in zip(scores, items)):
            raise RuntimeError("the scorer returned a wrong number of scores")
        return [[float(x) for x in s] for s in scores]

    async def _score(self, batch: list) -> None:
        self.metrics.batch.observe(len(batch))
        try:
            scores = await self._call([item for item, _ in batch])
            outcomes: list[Any] = scores
            self.metrics.consecutive_failures = 0
        except Exception as e:  # noqa: BLE001 - isolate the culprit below
            self.metrics.batch_failures += 1
            outcomes = [e]
            if len(batch) > 1:
                outcomes = []
                for item, _ in batch:
                    try:
                        outcomes.append((await self._call([item]))[0])
                    except Exception as e1:  # noqa: BLE001
                        outcomes.append(e1)
            failed = [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, InputError)]
            self.metrics.consecutive_failures = self.metrics.consecutive_failures + 1 if failed else 0
            for o in failed:
                traceback.print_exception(type(o), o, o.__traceback__, file=sys.stderr)
        for (_, fut), out in zip(batch, outcomes):
            if fut.done():
                continue
            if isinstance(out, Exception):
                fut.set_exception(out)
            else:
                self.metrics.solutions += 1
                fut.set_result(out)

    def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None  # the app can be started again (another test client)


# ---------------------------------------------------------------------------------------------------------------
# The app


def _json_error(status: int, detail: str, limit: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"detail": detail} | ({"limit": limit} if limit else {})
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI wrapper: counts and times every request, checks the API key, reads POST bodies under the size and time
    limits before the app sees them (then replays the body)."""

    def __init__(self, app, opts: ServeOptions, metrics: Metrics):
        self.app, self.opts, self.metrics = app, opts, metrics
        self.key = opts.api_key.encode() if opts.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, t0, status = scope["path"], time.perf_counter(), [500]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_counted)
        finally:
            self.metrics.observe_request(path if path in ENDPOINTS else "other", status[0], time.perf_counter() - t0)

    async def _handle(self, scope, receive, send):
        path, headers = scope["path"], dict(scope["headers"])
        if self.key and (path.startswith("/v1/") or path == "/metrics"):
            given = headers.get(b"authorization", b"")
            if not (given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), self.key)):
                resp = _json_error(
                    401,
                    "missing or wrong API key (send 'Authorization: Bearer KEY')",
                    "api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
                return await resp(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = self.opts.max_body_bytes
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _json_error(400, "bad Content-Length header")(scope, receive, send)
        too_big = _json_error(413, f"request body is over max_body_bytes={limit}", "max_body_bytes")
        if declared > limit:
            return await too_big(scope, receive, send)

        async def read_all() -> bytes | None:
            chunks, n = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionAbortedError
                chunk = message.get("body", b"")
                n += len(chunk)
                if n > limit:
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read_all(), self.opts.body_timeout_s)
        except asyncio.TimeoutError:
            msg = f"request body not received within body_timeout_s={self.opts.body_timeout_s}"
            return await _json_error(408, msg, "body_timeout_s")(scope, receive, send)
        except ConnectionAbortedError:
            return None  # the client went away; nothing to answer
        if body is None:
            return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            why = (err.get("ctx") or {}).get("error", "")
            parts.append(f"malformed JSON: {why} (at character {loc or '?'})")
        elif not loc:
            parts.append("body: expected a JSON object (Content-Type: application/json)")
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def make_options(**options) -> ServeOptions:
    """`ServeOptions` from keywords; an unknown name is a TypeError listing the valid ones."""
    names = {f.name for f in fields(ServeOptions)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    opts = ServeOptions(**options)
    if opts.max_batch_size < 1 or opts.max_wait_ms < 0:
        raise InputError("must be >= 1 (max_wait_ms >= 0)", field="max_batch_size")
    if opts.image_root is not None and not Path(opts.image_root).is_dir():
        raise InputError("not a folder", opts.image_root, field="image_root")
    return opts


def build_app(scorer, **options) -> FastAPI:
    """The service around `scorer` (anything with `score_steps(items) -> list[list[float]]`).

    Options are the fields of `ServeOptions` (batching, limits, image access, API key)."""
    from contextlib import asynccontextmanager

    opts = make_options(**options)
    from .scoring import aggregate

    metrics = Metrics()
    batcher = Batcher(scorer, opts, metrics)
    state: dict[str, Any] = {"http": None}

    @asynccontextmanager
    async def lifespan(app):
        batcher.ensure_started()
        yield
        batcher.close()
        if state["http"] is not None:
            await state["http"].aclose()

    app = FastAPI(
        title="visualprm scoring service",
        version="1",
        lifespan=lifespan,
        description="Step rewards from a process reward model, with dynamic batching.",
    )
    app.state.batcher, app.state.metrics, app.state.options = batcher, metrics, opts

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        return _json_error(e.status, e.message, e.limit, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return _json_error(422, _validation_message(e))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        return _json_error(500, f"internal error ({e.__class__.__name__}); see the server log")

    def http_client():
        if state["http"] is None:
            import httpx

            state["http"] = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=opts.remote_timeout_s)
        return state["http"]

    async def score_request(req: ScoreRequest) -> list[dict]:
        step_lists = check_request(req, opts)
        images = await load_images(req, opts, http_client)
        items = [{"question": req.question, "images": images, "steps": steps} for steps in step_lists]
        try:
            scores = await batcher.submit(items)
        except InputError as e:
            raise scorer_error(e, opts) from None
        except ServeError:
            raise
        except Exception as e:  # the batcher printed the traceback
            raise ServeError(
                500, f"internal error: scoring failed ({e.__class__.__name__}); see the server log"
            ) from e
        # Rounded to 6 places, as `visualprm score` writes them, so both give the same numbers.
        return [
            {"step_scores": [round(x, 6) for x in s], "score": round(aggregate(s, req.aggregate), 6), "_raw": s}
            for s in scores
        ]

    @app.post("/v1/score", response_model=ScoreReply, summary="Per-step scores and the aggregate of each solution")
    async def score(req: ScoreRequest):
        results = await score_request(req)
        return JSONResponse({"results": [{k: v for k, v in r.items() if k != "_raw"} for r in results]})

    @app.post("/v1/bon", response_model=BonReply, summary="Best-of-N: the solution with the highest aggregate")
    async def bon(req: ScoreRequest):
        results = await score_request(req)
        raw = [aggregate(r.pop("_raw"), req.aggregate) for r in results]
        best = max(range(len(raw)), key=lambda i: (raw[i], -i))  # unrounded; ties: the lower index
        scores = [r["score"] for r in results]
        return JSONResponse({"best": best, "score": scores[best], "scores": scores, "results": results})

    @app.get("/health", summary="Liveness and queue state")
    async def health():
        ok = metrics.consecutive_failures < 3
        body = {
            "status": "ok" if ok else "failing",
            "queue": len(batcher.queue),
            "batches": metrics.batch.count,
            "solutions_scored": metrics.solutions,
            "uptime_s": round(time.time() - metrics.started, 3),
            "max_batch_size": opts.max_batch_size,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(Guard, opts=opts, metrics=metrics)
    return app


# ---------------------------------------------------------------------------------------------------------------
# A stand-in scorer for tests and load benchmarks


def fake_step_scores(item: dict) -> list[float]:
    """Deterministic scores in [0, 1): a hash of the question, the images' pixels and the steps so far."""
    h = hashlib.sha256(item["question"].encode())
    for im in item["images"]:
        h.update(f"{im.size}{im.mode}".encode())
        h.update(hashlib.sha256(im.tobytes()).digest())
    out = []
    for step in item["steps"]:
        h.update(b"\0" + step.encode())
        out.append(int.from_bytes(h.digest()[:7], "big") / 2**56)
    return out


class FakeScorer:
    """The Scorer's shape without a model. Each call sleeps `delay_s * n ** exponent` (n = solutions in the call)
    to act like an accelerator whose cost grows sub-linearly with the batch; `max_length` counts characters
    (question + steps) as tokens and raises the same `InputError` as the real scorer. Records batch sizes."""

    def __init__(self, delay_s: float = 0.0, exponent: float = 0.3, max_length: int | None = None):
        self.delay_s, self.exponent, self.max_length = delay_s, exponent, max_length
        self.batch_sizes: list[int] = []

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        self.batch_sizes.append(len(items))
        if self.delay_s:
            time.sleep(self.delay_s * len(items) ** self.exponent)
        for it in items:
            n = len(it["question"]) + sum(len(s) for s in it["steps"])
            if self.max_length is not None and n > self.max_length:
                raise InputError(
                    f"sequence of {n} tokens is longer than max_length {self.max_length}", field="max_length"
                )
        return [fake_step_scores(it) for it in items]


# ---------------------------------------------------------------------------------------------------------------
# CLI job


def serve(
    prm: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    dtype: str | None = None,
    system_prompt: bool = True,
    label_mode: str = "auto",
    log_level: str = "info",
    torch_threads: int | None = None,
    engine_options: dict | None = None,
    **options,
) -> int:
    """Load the PRM and serve it until interrupted (`visualprm serve`). `prm`: a folder, or `openai:MODEL@URL`
    (the service then fronts OpenAI-compatible servers; `engine_options` for it, see `scoring.load_prm`).

    `torch_threads`: CPU threads for torch. On a small shared CPU machine, 1 leaves a core to the event loop and
    avoids OpenMP threads spinning against each other (on a 2-core machine under load it was several times faster).
    """
    import uvicorn

    from .scoring import load_prm

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)

    # system_prompt None: what `train` recorded with the checkpoint (on by default), as `visualprm score` does.
    kw: dict[str, Any] = {"device": device, "dtype": dtype, **(engine_options or {})}
    kw["system_prompt"] = None if system_prompt is True else system_prompt
    kw |= {"batch_size": options.get("max_batch_size", ServeOptions.max_batch_size)}
    kw |= {"max_length": options.get("max_tokens"), "label_mode": label_mode}
    opts = make_options(**options)  # bad options fail before the model loads
    from .jobs import port_problem

    if (problem := port_problem(host, port)) is not None:  # a busy port, too, before the model loads
        print(f"visualprm serve: error: {problem}", file=sys.stderr)
        return 1
    t0 = time.time()
    scorer = load_prm(prm, **kw)
    app = build_app(scorer, **options)
    print(
        f"visualprm serve: loaded {prm} in {time.time() - t0:.1f}s; listening on http://{host}:{port} "
        f"(docs at /docs); options: " + ", ".join(f"{k}={v}" for k, v in asdict(opts).items() if k != "api_key"),
        file=sys.stderr,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not opts.api_key:
        print(f"visualprm serve: warning: listening on {host} without --api-key", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)
    return 0
