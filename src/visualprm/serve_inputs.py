"""Inputs of the scoring service (server.py), checked before any scoring: request limits, and images from base64,
from files under an image root, or from remote URLs.

Every refusal is a `ServeError` carrying its HTTP status and the name of the limit or field: 403 for a path
outside the root or a remote address that is not public, 413 for a size over a limit, 422 for contents that
cannot be used. Paths are resolved (following links) and must stay inside the root, and what was actually opened
is checked again. Remote images (only when the server allows them) are fetched from the resolved public address
itself, so a second DNS answer cannot point the download at an internal host; redirects are followed by hand
(at most 3) with the same checks, within one overall timeout and a byte cap.

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


class ServeError(Exception):
    """A refusal with its HTTP status and the name of the limit or field it concerns."""

    def __init__(self, status: int, message: str, limit: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.limit, self.headers = status, message, limit, headers



# ---------------------------------------------------------------------------------------------------------------
# Images


def public_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (not private, loopback, link-local, reserved, multicast)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


async def fetch_remote_image(url: str, opts: ServeOptions, client, where: str) -> bytes:
    """Download one image: public addresses only (checked on the resolved address that is then used, and again
    after each redirect), at most `max_image_bytes`, within `remote_timeout_s`."""

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
                raise ServeError(
                    403,
                    f"{where}: {parts.hostname} resolves to a private, loopback or reserved "
                    "address; remote images must be on public addresses",
                    "allow_remote_images",
                )
            ip = str(addrs[0])
            host = f"[{ip}]" if ":" in ip else ip
            target = parts._replace(netloc=f"{host}:{port}").geturl()
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
            ext = {"sni_hostname": parts.hostname}
            async with client.stream("GET", target, headers=headers, extensions=ext) as r:
                if r.is_redirect and "location" in r.headers:
                    current = urljoin(current, r.headers["location"])
                    continue
                if r.status_code != 200:
                    raise ServeError(422, f"{where}: {current[:200]} answered HTTP {r.status_code}", "images")
                chunks, n = [], 0
                async for chunk in r.aiter_bytes():
                    n += len(chunk)
                    if n > opts.max_image_bytes:
                        raise ServeError(
                            413, f"{where}: download is over max_image_bytes={opts.max_image_bytes}", "max_image_bytes"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        raise ServeError(422, f"{where}: more than 3 redirects", "images")

    try:
        return await asyncio.wait_for(fetch(), opts.remote_timeout_s)
    except asyncio.TimeoutError:
        raise ServeError(
            422, f"{where}: download took longer than remote_timeout_s={opts.remote_timeout_s}", "remote_timeout_s"
        ) from None
    except ServeError:
        raise
    except Exception as e:  # noqa: BLE001 - httpx transport errors, TLS errors
        raise ServeError(422, f"{where}: download failed: {e.__class__.__name__}: {e}", "images") from None


def read_under_root(root: Path, rel: str, opts: ServeOptions, where: str) -> bytes:
    """The bytes of `rel` inside `root`; `..`, absolute paths and symlinks leading outside are refused."""
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
        # Re-check what was actually opened (a path component could have been swapped for a link meanwhile).
        opened = Path(os.path.realpath(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else target
        if not opened.is_relative_to(real_root):
            raise ServeError(403, f"{where}: path {rel!r} is outside the image root", "image_root")
        size = os.fstat(fd).st_size
        if size > opts.max_image_bytes:
            raise ServeError(
                413, f"{where}: file of {size} bytes is over max_image_bytes={opts.max_image_bytes}", "max_image_bytes"
            )
        return f.read(opts.max_image_bytes + 1)


def decode_base64(s: str, opts: ServeOptions, where: str) -> bytes:
    if s.startswith("data:"):
        s = s.partition(",")[2]
    if len(s) * 3 // 4 > opts.max_image_bytes + 3:
        raise ServeError(
            413,
            f"{where}: image of about {len(s) * 3 // 4} bytes is over max_image_bytes={opts.max_image_bytes}",
            "max_image_bytes",
        )
    try:
        return base64.b64decode("".join(s.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(422, f"{where}: not valid base64", "images") from None


def open_image(data: bytes, opts: ServeOptions, where: str):
    """An RGB PIL image; the pixel limit is checked from the header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > opts.max_image_bytes:
        raise ServeError(
            413, f"{where}: {len(data)} bytes is over max_image_bytes={opts.max_image_bytes}", "max_image_bytes"
        )
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > opts.max_image_pixels:
            raise ServeError(
                413,
                f"{where}: {w}x{h} = {w * h} pixels is over max_image_pixels={opts.max_image_pixels}",
                "max_image_pixels",
            )
        im.load()
        return im.convert("RGB")
    except Image.DecompressionBombError:
        raise ServeError(
            413, f"{where}: image is over max_image_pixels={opts.max_image_pixels}", "max_image_pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ServeError(422, f"{where}: cannot decode the image ({e.__class__.__name__})", "images") from None


def is_url(s: str) -> bool:
    return s[:8].lower().startswith(("http://", "https://"))


# ---------------------------------------------------------------------------------------------------------------
# Request contents


def _check_request(req: ScoreRequest, opts: ServeOptions) -> list[list[str]]:
    """Limits and contents of a parsed request; returns the step lists (responses split)."""
    n_img = len(req.images) + len(req.image_paths)
    if n_img > opts.max_images:
        raise ServeError(413, f"{n_img} images is over max_images={opts.max_images}", "max_images")
    if not req.solutions:
        raise ServeError(422, "solutions: empty list", "solutions")
    if len(req.solutions) > opts.max_solutions:
        raise ServeError(
            413, f"{len(req.solutions)} solutions is over max_solutions={opts.max_solutions}", "max_solutions"
        )
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
            raise ServeError(413, f"{field}: {len(steps)} steps is over max_steps={opts.max_steps}", "max_steps")
        for k, s in enumerate(steps):
            if not s.strip():
                raise ServeError(422, f"{field}[{k}]: empty step", "steps")
        chars = len(req.question) + sum(len(s) for s in steps)
        if chars > opts.max_chars:
            raise ServeError(413, f"{field}: {chars} characters is over max_chars={opts.max_chars}", "max_chars")
        out.append(steps)
    return out


def _scorer_error(e: InputError, opts: ServeOptions) -> ServeError:
    if e.field == "max_length":
        limit = f" (max_tokens={opts.max_tokens})" if opts.max_tokens else ""
        return ServeError(413, f"{e.message}{limit}", "max_tokens")
    return ServeError(422, str(e), e.field)


