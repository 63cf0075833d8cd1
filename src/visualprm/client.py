"""A small Python client for `visualprm serve`: step scores and Best-of-N picks over HTTP, with retries.

    from visualprm.client import Client
    with Client("http://127.0.0.1:8000", api_key="KEY") as c:
        results = c.score("What is 2+3?", [["2+3=5", "The answer is 5."], "2+3=6\\n\\nSo 6."], images=["fig.png"])
        # [{"step_scores": [..], "score": x}, ..] in the order of the solutions

A solution is a list of steps or a response string (the server splits it on blank lines). Images are PIL images,
bytes, or paths of local files, sent as base64; `image_paths` are names under the server's `--image-root`.
`AsyncClient` has the same methods for asyncio code (many concurrent requests from one trainer process).

Retries (with exponential backoff, honouring Retry-After) cover connection failures and answers 429, 502, 503,
504; scoring is a pure function of the request, so repeating one is safe. Any other answer >= 400 raises
`ServiceError` at once with the server's message and the name of the limit it concerns.

It does not start servers (server.py) or score anything itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx

from .schema import InputError

RETRY_STATUS = (429, 502, 503, 504)


class ServiceError(Exception):
    """An answer >= 400 from the service: `status`, `detail` (its message) and `limit` (a name or None)."""

    def __init__(self, status: int, detail: str, limit: str | None = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.limit = status, detail, limit


def encode_image(image: Any) -> str:
    """Base64 of a PIL image (as PNG), of bytes, or of a local file; an http(s) URL is passed as it is."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, (str, Path)):
        if str(image).startswith(("http://", "https://")):
            return str(image)
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")
    raise TypeError(f"cannot send an image of type {type(image).__name__}")


def score_payload(
    question: str, solutions: list, images: list | None = None, image_paths: list | None = None, aggregate="mean"
) -> dict:
    """The JSON body of /v1/score and /v1/bon. Solutions: lists of steps, response strings, or ready dicts."""
    sols = []
    for s in solutions:
        if isinstance(s, dict):
            sols.append(s)
        elif isinstance(s, str):
            sols.append({"response": s})
        else:
            sols.append({"steps": list(s)})
    body: dict[str, Any] = {"question": question, "solutions": sols, "aggregate": aggregate}
    if images:
        body["images"] = [encode_image(im) for im in images]
    if image_paths:
        body["image_paths"] = [str(p) for p in image_paths]
    return body


def _retry_delay(attempt: int, retries: int, backoff_s: float, response: httpx.Response | None) -> float | None:
    """Seconds to wait before the next try, or None to stop (no retries left or an answer not worth retrying)."""
    if attempt >= retries:
        return None
    if response is not None:
        if response.status_code not in RETRY_STATUS:
            return None
        after = response.headers.get("retry-after", "")
        if after.replace(".", "", 1).isdigit():
            return min(float(after), 30.0)
    return backoff_s * 2**attempt


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            detail, limit = str(body.get("detail", body)), body.get("limit")
        except ValueError:
            detail, limit = response.text[:500], None
        raise ServiceError(response.status_code, detail, limit)
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


class Client:
    """Blocking client. `http` may be any httpx.Client (for example FastAPI's TestClient around an app)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        http: httpx.Client | None = None,
    ):
        self.retries, self.backoff_s = retries, backoff_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http if http is not None else httpx.Client(base_url=base_url, timeout=timeout)
        self._own = http is None

    def request(self, method: str, path: str, json: Any = None) -> Any:
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, json=json, headers=self.headers)
            except httpx.TransportError:
                if (delay := _retry_delay(attempt, self.retries, self.backoff_s, None)) is None:
                    raise
            else:
                if (delay := _retry_delay(attempt, self.retries, self.backoff_s, response)) is None:
                    return _result(response)
            time.sleep(delay)
            attempt += 1

    def score(self, question: str, solutions: list, images=None, image_paths=None, aggregate="mean") -> list[dict]:
        """Per-step scores and the aggregate of each solution, in order."""
        body = score_payload(question, solutions, images, image_paths, aggregate)
        return self.request("POST", "/v1/score", body)["results"]

    def bon(self, question: str, solutions: list, images=None, image_paths=None, aggregate="mean") -> dict:
        """`{"best", "score", "scores", "results"}`: the index of the highest aggregate and all scores."""
        return self.request("POST", "/v1/bon", score_payload(question, solutions, images, image_paths, aggregate))

    def health(self) -> dict:
        return self.request("GET", "/health")

    def metrics(self) -> str:
        return self.request("GET", "/metrics")

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The same calls for asyncio. `http` may be any httpx.AsyncClient (for example one with an ASGITransport)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        http: httpx.AsyncClient | None = None,
        max_connections: int = 100,
    ):
        self.retries, self.backoff_s = retries, backoff_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = http if http is not None else httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)
        self._own = http is None

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        attempt = 0
        while True:
            try:
                response = await self.http.request(method, path, json=json, headers=self.headers)
            except httpx.TransportError:
                if (delay := _retry_delay(attempt, self.retries, self.backoff_s, None)) is None:
                    raise
            else:
                if (delay := _retry_delay(attempt, self.retries, self.backoff_s, response)) is None:
                    return _result(response)
            await asyncio.sleep(delay)
            attempt += 1

    async def score(self, question: str, solutions: list, images=None, image_paths=None, aggregate="mean"):
        body = score_payload(question, solutions, images, image_paths, aggregate)
        return (await self.request("POST", "/v1/score", body))["results"]

    async def bon(self, question: str, solutions: list, images=None, image_paths=None, aggregate="mean") -> dict:
        return await self.request(
            "POST", "/v1/bon", score_payload(question, solutions, images, image_paths, aggregate)
        )

    async def health(self) -> dict:
        return await self.request("GET", "/health")

    async def metrics(self) -> str:
        return await self.request("GET", "/metrics")

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class RemoteScorer:
    """`score_steps(items)` through `visualprm serve` (client.Client): one request per run of items that share a
    question and images. Scores come back rounded to 6 decimals, as the service returns them."""

    def __init__(self, url: str | None = None, api_key: str | None = None, client=None, timeout: float = 120.0):
        if client is None and not url:
            raise InputError("a RemoteScorer needs a URL or a client", field="url")
        self.client = client if client is not None else Client(url, api_key=api_key, timeout=timeout)
        self.processor = None

    def score_steps(self, items: list[dict]) -> list[list[float]]:
        out: list[list[float]] = []
        i = 0
        while i < len(items):
            j = i + 1
            while j < len(items) and items[j]["question"] == items[i]["question"] and _same(items[j], items[i]):
                j += 1
            res = self.client.score(
                items[i]["question"], [it["steps"] for it in items[i:j]], images=items[i].get("images") or None
            )
            out += [r["step_scores"] for r in res]
            i = j
        return out


def _same(a: dict, b: dict) -> bool:
    ia, ib = a.get("images") or [], b.get("images") or []
    return len(ia) == len(ib) and all(x is y for x, y in zip(ia, ib))
