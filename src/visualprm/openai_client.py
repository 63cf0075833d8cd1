"""A small client for OpenAI-compatible chat servers (vLLM, SGLang, LMDeploy, hosted APIs).

`chat_completions(url, model, bodies, ...)` sends many `/v1/chat/completions` requests with a bounded number in
flight (httpx.AsyncClient), retries what can succeed later (HTTP 408/409/429/5xx, timeouts, dropped connections)
with exponential backoff, and returns the JSON responses in the order of `bodies`. The `openai:` policy and the
MLLM judge both use it. `probe(url)` checks that a server answers before any work starts.

Errors: `InputError` for an unreachable server or an unknown model at the probe (the user's input);
`RequestError` for a request the server refuses for good (another 4xx: too long a prompt, a bad image), so the
caller can skip that item; `ServerUnavailable` when retries are exhausted (stop and resume later).

This module does not build prompts or parse answers. httpx is imported inside the functions.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import mimetypes
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .schema import InputError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class RequestError(Exception):
    """The server refused one request for good (a 4xx other than 408/409/425/429)."""

    def __init__(self, message: str, status: int | None = None, index: int | None = None):
        super().__init__(message)
        self.status, self.index = status, index


class ServerUnavailable(RuntimeError):
    """A request still failed after every retry (server down, overloaded or timing out)."""


def api_base(url: str) -> str:
    """`http://host:8000`, `http://host:8000/` or `http://host:8000/v1` -> `http://host:8000/v1`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    for suffix in ("/chat/completions", "/completions", "/models"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


def _headers(api_key: str | None) -> dict:
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def probe(url: str, model: str | None = None, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """GET `/v1/models`; the served model ids. Unknown model or refused key -> one-line `InputError`; no answer
    -> `ServerUnavailable`."""
    import httpx

    base = api_base(url)
    try:
        r = httpx.get(base + "/models", headers=_headers(api_key), timeout=timeout)
    except httpx.HTTPError as e:
        # a server that is down: exit 1 (cli.main), as when it goes down midway; a refused key below is exit 2
        raise ServerUnavailable(
            f"cannot reach the OpenAI-compatible server at {base} ({type(e).__name__}: {e})"
        ) from None
    if r.status_code in (401, 403):
        raise InputError(f"the server at {base} refused the API key (HTTP {r.status_code}); set OPENAI_API_KEY")
    if r.status_code != 200:
        raise InputError(f"the server at {base} answered GET /models with HTTP {r.status_code}")
    try:
        ids = [m["id"] for m in r.json().get("data", [])]
    except (ValueError, AttributeError, KeyError, TypeError):
        raise InputError(f"the server at {base} is not OpenAI-compatible (bad GET /models answer)") from None
    if model is not None and ids and model not in ids:
        raise InputError(f"model {model!r} is not served at {base}; it serves: {', '.join(ids)}")
    return ids


@functools.lru_cache(maxsize=256)
def image_data_url(path: str) -> str:
    """A `data:` URL (base64) of an image file, as OpenAI-compatible servers accept in `image_url`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read image {path}: {e}", field="images") from None
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


async def achat_completions(
    url: str,
    model: str | None,
    bodies: list[dict],
    concurrency: int = 8,
    retries: int = 6,
    timeout: float = 600.0,
    api_key: str | None = None,
    backoff: float = 1.0,
    return_exceptions: bool = False,
    on_done: Callable[[int, dict], None] | None = None,
) -> list[Any]:
    """POST every body to `/v1/chat/completions`; the JSON responses in order (see `chat_completions`)."""
    import httpx

    endpoint = api_base(url) + "/chat/completions"
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(client: httpx.AsyncClient, i: int, body: dict) -> dict:
        if model is not None and "model" not in body:
            body = {"model": model, **body}
        last = ""
        for attempt in range(retries + 1):
            wait = None
            async with sem:
                try:
                    r = await client.post(endpoint, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last = f"{type(e).__name__}: {e}"
                else:
                    if r.status_code == 200:
                        try:
                            out = r.json()
                        except ValueError:
                            last = "HTTP 200 with a body that is not JSON"
                        else:
                            if on_done is not None:
                                on_done(i, out)
                            return out
                    elif r.status_code in RETRY_STATUS:
                        last = f"HTTP {r.status_code}: {r.text[:200]}"
                        ra = r.headers.get("retry-after")
                        if ra and ra.replace(".", "", 1).isdigit():
                            wait = min(float(ra), 120.0)
                    else:
                        raise RequestError(f"HTTP {r.status_code}: {r.text[:300]}", r.status_code, i)
            if attempt < retries:
                await asyncio.sleep(wait if wait is not None else _backoff(attempt, backoff))
        raise ServerUnavailable(f"{endpoint}: request failed after {retries + 1} attempts; last error: {last}")

    limits = httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency))
    async with httpx.AsyncClient(timeout=timeout, headers=_headers(api_key), limits=limits) as client:
        tasks = [asyncio.ensure_future(one(client, i, b)) for i, b in enumerate(bodies)]
        try:
            return await asyncio.gather(*tasks, return_exceptions=return_exceptions)
        finally:
            for t in tasks:
                t.cancel()


def run_sync(coro):
    """Run a coroutine to completion from sync code, also when an event loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def chat_completions(
    url: str,
    model: str | None,
    bodies: list[dict],
    concurrency: int = 8,
    retries: int = 6,
    timeout: float = 600.0,
    api_key: str | None = None,
    backoff: float = 1.0,
    return_exceptions: bool = False,
    on_done: Callable[[int, dict], None] | None = None,
) -> list[Any]:
    """Send chat-completion requests to an OpenAI-compatible server; the parsed JSON responses, in order.

    `url`: the server (`http://host:8000` or `.../v1`); `model` fills each body's `model` unless it has one;
    `bodies`: request bodies (`messages`, `n`, `temperature`, `seed`, `max_tokens`, ... passed as they are);
    at most `concurrency` requests in flight; each is retried up to `retries` times on HTTP 408/409/425/429/5xx,
    timeouts and connection errors, waiting `backoff * 2**attempt` seconds (jittered, at most 60 s, or the
    server's Retry-After); `timeout` seconds per request; `api_key` (default: $OPENAI_API_KEY) as a Bearer token.
    Raises `RequestError` (another 4xx; `.index` names the body) or `ServerUnavailable` (retries exhausted);
    with `return_exceptions=True` those come back in place of the response instead. `on_done(i, response)` is
    called as each response arrives (progress bars).
    """
    return run_sync(
        achat_completions(
            url, model, bodies, concurrency, retries, timeout, api_key, backoff, return_exceptions, on_done
        )
    )


def choice_texts(response: dict) -> list[str]:
    """The texts of a chat-completion response's choices, in `index` order (missing content -> "")."""
    choices = sorted(response.get("choices") or [], key=lambda c: c.get("index", 0))
    return [((c.get("message") or {}).get("content") or "") for c in choices]
