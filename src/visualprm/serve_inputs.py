"""Inputs of the scoring service (server.py), checked before any scoring: request limits, and images from base64,
from files under an image root, or from remote URLs.

Every refusal is a `ServeError` carrying its HTTP status and the name of the limit or field: 403 for a path
outside the root, a remote URL when they are off, or a remote address that is not public; 413 for a size over a
limit; 422 for contents that cannot be used. Paths are resolved (following links) and must stay inside the root,
and what was actually opened is checked again. Remote images (only when the server allows them) are fetched from
the resolved public address itself, so a second DNS answer cannot point the download at an internal host;
redirects are followed by hand (at most 3) with the same checks, within one overall timeout and a byte cap.

It does not build the app or talk to the scorer (server.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .schema import InputError
from .steps import split_steps

# server.py imports this module, so its types are not imported back (no import cycle): a request is a
# server.ScoreRequest (pydantic: question, images, image_paths, image_urls, solutions) and the limits are a
# server.ServeOptions; both are read by attribute only.
ScoreRequest = Any
ServeOptions = Any


class ServeError(Exception):
    """A refusal with its HTTP status and the name of the limit or field it concerns."""

    def __init__(self, status: int, message: str, limit: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.limit, self.headers = status, message, limit, headers


def over(where: str, what: str, limit: str, value: int) -> ServeError:
    """413 naming the limit: `where: <what> is over limit=value`."""
    return ServeError(413, f"{where}: {what} is over {limit}={value}", limit)


# ---------------------------------------------------------------------------------------------------------------
# Request contents


def check_request(req: ScoreRequest, opts: ServeOptions) -> list[list[str]]:
    """Limits and contents of a parsed request; returns the step lists (responses split as `score` does)."""
    n_img = len(req.images) + len(req.image_paths)
    if n_img > opts.max_images:
        raise over("images", f"{n_img} images", "max_images", opts.max_images)
    if not req.solutions:
        raise ServeError(422, "solutions: empty list", "solutions")
    if len(req.solutions) > opts.max_solutions:
        raise over("solutions", f"{len(req.solutions)} solutions", "max_solutions", opts.max_solutions)
    if not req.question.strip():
        raise ServeError(422, "question: empty", "question")
    if req.image_paths and not opts.image_root:
        raise ServeError(403, "image_paths: refused (the server was started without --image-root)", "image_root")
    out = []
    for i, sol in enumerate(req.solutions):
        if sol.steps is not None:
            steps, field = sol.steps, f"solutions[{i}].steps"
        else:
            steps, field = split_steps(sol.response, opts.split_steps), f"solutions[{i}].response"
        if not steps:
            raise ServeError(422, f"{field}: no steps", "steps")
        if len(steps) > opts.max_steps:
            raise over(field, f"{len(steps)} steps", "max_steps", opts.max_steps)
        for k, s in enumerate(steps):
            if not s.strip():
                raise ServeError(422, f"{field}[{k}]: empty step", "steps")
        chars = len(req.question) + sum(len(s) for s in steps)
        if chars > opts.max_chars:
            raise over(field, f"{chars} characters (question + steps)", "max_chars", opts.max_chars)
        out.append(steps)
    return out


def scorer_error(e: InputError, opts: ServeOptions) -> ServeError:
    """A scorer's `InputError` as an answer: too many tokens is 413 naming max_tokens, anything else 422."""
    if e.field == "max_length":
        limit = f" (max_tokens={opts.max_tokens})" if opts.max_tokens else ""
        return ServeError(413, e.message + limit, "max_tokens")
    return ServeError(422, str(e), e.field)


# ---------------------------------------------------------------------------------------------------------------
# Images


async def load_images(req: ScoreRequest, opts: ServeOptions, http_client) -> list:
    """RGB PIL images of a request, `images` then `image_paths`. `http_client()` gives the httpx.AsyncClient
    for remote images. Downloads run on the event loop; decoding and file reads in a worker thread."""
    from starlette.concurrency import run_in_threadpool

    raw: list[tuple[str, Any]] = []  # (where, bytes | ("b64", text) | ("path", text))
    for i, s in enumerate(req.images):
        where = f"images[{i}]"
        if not is_url(s):
            raw.append((where, ("b64", s)))
        elif not opts.allow_remote_images:
            msg = f"{where}: remote image URLs are refused (start the server with --allow-remote-images)"
            raise ServeError(403, msg, "allow_remote_images")
        else:
            raw.append((where, await fetch_remote_image(s, opts, http_client(), where)))
    raw += [(f"image_paths[{i}]", ("path", p)) for i, p in enumerate(req.image_paths)]

    def decode_all() -> list:
        out = []
        for where, src in raw:
            if isinstance(src, tuple) and src[0] == "b64":
                src = decode_base64(src[1], opts, where)
            elif isinstance(src, tuple):
                src = read_under_root(Path(opts.image_root), src[1], opts, where)
            out.append(open_image(src, opts, where))
        return out

    return await run_in_threadpool(decode_all) if raw else []


def is_url(s: str) -> bool:
    return s[:8].lower().startswith(("http://", "https://"))


def public_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (not private, loopback, link-local, reserved, multicast)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


async def fetch_remote_image(url: str, opts: ServeOptions, client, where: str) -> bytes:
    """Download one image: public addresses only (checked on the resolved address, which is then the one used,
    and again after each redirect), at most `max_image_bytes`, within `remote_timeout_s` in all."""

    async def fetch() -> bytes:
        current = url
        for _ in range(4):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ServeError(422, f"{where}: not an http(s) URL: {current[:200]}", "images")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise ServeError(422, f"{where}: cannot resolve {parts.hostname}: {e}", "images") from None
            addrs = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
            if not addrs or not all(public_address(a) for a in addrs):
                msg = f"{where}: {parts.hostname} is a private, loopback or reserved address (refused)"
                raise ServeError(403, msg, "allow_remote_images")
            ip = str(addrs[0])
            target = parts._replace(netloc=f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").geturl()
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            async with client.stream("GET", target, headers=headers, extensions={"sni_hostname": parts.hostname}) as r:
                if r.is_redirect and "location" in r.headers:
                    current = urljoin(current, r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise ServeError(422, f"{where}: {current[:200]} answered HTTP {r.status_code}", "images")
                chunks, n = [], 0
                async for chunk in r.aiter_bytes():
                    n += len(chunk)
                    if n > opts.max_image_bytes:
                        raise over(where, "the download", "max_image_bytes", opts.max_image_bytes)
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ServeError(422, f"{where}: more than 3 redirects", "images")

    try:
        return await asyncio.wait_for(fetch(), opts.remote_timeout_s)
    except asyncio.TimeoutError:
        msg = f"{where}: the download took longer than remote_timeout_s={opts.remote_timeout_s}"
        raise ServeError(422, msg, "remote_timeout_s") from None
    except ServeError:
        raise
    except Exception as e:  # noqa: BLE001 - httpx transport and TLS errors
        raise ServeError(422, f"{where}: download failed: {e.__class__.__name__}: {e}", "images") from None


def read_under_root(root: Path, rel: str, opts: ServeOptions, where: str) -> bytes:
    """The bytes of `rel` inside `root`; `..`, absolute paths and links that lead outside are refused (403)."""
    real_root = root.resolve()
    target = (real_root / rel).resolve()
    if not target.is_relative_to(real_root):
        raise ServeError(403, f"{where}: path {rel!r} is outside the image root", "image_root")
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ServeError(422, f"{where}: no such file under the image root: {rel!r}", "image_paths") from None
    except OSError as e:
        raise ServeError(422, f"{where}: cannot open {rel!r}: {e.strerror}", "image_paths") from None
    with os.fdopen(fd, "rb") as f:
        # Check what was actually opened: a folder on the way could have been swapped for a link meanwhile.
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}")) if os.path.isdir("/proc/self/fd") else target
        if not opened.is_relative_to(real_root):
            raise ServeError(403, f"{where}: path {rel!r} is outside the image root", "image_root")
        size = os.fstat(fd).st_size
        if size > opts.max_image_bytes:
            raise over(where, f"a file of {size} bytes", "max_image_bytes", opts.max_image_bytes)
        return f.read(opts.max_image_bytes + 1)


def decode_base64(s: str, opts: ServeOptions, where: str) -> bytes:
    """Bytes of a base64 string or `data:` URL; size checked from the length before decoding."""
    if s.startswith("data:"):
        s = s.partition(",")[2]
    if len(s) * 3 // 4 > opts.max_image_bytes + 3:
        raise over(where, f"an image of about {len(s) * 3 // 4} bytes", "max_image_bytes", opts.max_image_bytes)
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(422, f"{where}: not valid base64", "images") from None


def open_image(data: bytes, opts: ServeOptions, where: str):
    """An RGB PIL image; the pixel limit is checked from the header, before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > opts.max_image_bytes:
        raise over(where, f"{len(data)} bytes", "max_image_bytes", opts.max_image_bytes)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > opts.max_image_pixels:
            raise over(where, f"{w}x{h} = {w * h} pixels", "max_image_pixels", opts.max_image_pixels)
        im.load()
        return im.convert("RGB")
    except Image.DecompressionBombError:
        raise over(where, "the image", "max_image_pixels", opts.max_image_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ServeError(422, f"{where}: cannot decode the image ({e.__class__.__name__})", "images") from None
