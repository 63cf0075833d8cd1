"""What every long job shares: its progress bar, torch's CPU threads, resume files, and server failures told in
one line.

`bar` is the one progress bar of the toolkit (tqdm, on stderr): items done, rate and time left. It is off when
stderr is not a terminal (logs, pipes, tests) or after `set_quiet(True)` (`visualprm --quiet`); jobs create it
after their model has loaded, so the rate it shows is the work's alone.

`resume_rows` / `append_rows` keep the finished part of a job in a `.partial` JSONL file beside its output (one
header line naming the run, then one line per finished item, appended chunk by chunk with one write each), so a
killed `score` or `bon` re-run with the same command keeps its finished work: a torn last line is dropped, a
header from another run (other input file, model or options) starts the file afresh.

`set_torch_threads` applies `--torch-threads` before a model loads. Its default (`None`): on a CUDA device
torch's own default (the CPU only feeds the GPU); when `OMP_NUM_THREADS` is set, the user's choice; on a CPU
with OpenMP's passive wait in effect (`prefer_passive_wait`, which `visualprm` calls before torch loads) one
thread per usable core, at most `DEFAULT_CPU_THREADS`; without it half the cores, at least 1. Why: see
`DEFAULT_CPU_THREADS`.

`service_failure` turns the exception of a server this command talks to (a refused key, a server down after the
retries) into one line and an exit status for cli.main; `port_problem` tells `serve` that its port is taken
before the model loads.

This module computes nothing and imports torch only inside `set_torch_threads`, httpx in `service_failure`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# Measured with benchmarks/threads.py (README, "What every command shares"), 2-core VM shared with other jobs:
# `score` and `bon` on the tiny and the demo-size model took 4-5x longer with 2 threads (torch's default: one per
# core) than with 1, because OpenMP threads spin while they wait for a core another process holds. With
# OMP_WAIT_POLICY=PASSIVE (they sleep instead) 2 threads were as fast as 1 or faster (bon 1.3-1.4x). So:
# passive wait and one thread per core, or, where torch was loaded before we could choose the wait policy, half
# the cores. The cap keeps small models, which gain little from more threads, from spreading over a large
# machine; larger machines were not measured.
DEFAULT_CPU_THREADS = 4

_PASSIVE = False  # OMP_WAIT_POLICY=PASSIVE is in effect for this process's torch (set before torch loaded)


def prefer_passive_wait() -> bool:
    """Before torch loads: let OpenMP threads sleep, not spin, while they wait (OMP_WAIT_POLICY=PASSIVE) unless
    the user chose a policy. Returns whether the passive policy is in effect for torch in this process."""
    global _PASSIVE
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _PASSIVE = os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE"
    return _PASSIVE


_QUIET = False


def set_quiet(quiet: bool) -> None:
    """`--quiet`: no progress bars for the rest of the process."""
    global _QUIET
    _QUIET = bool(quiet)


def bars_off() -> bool:
    """True under `--quiet` or when stderr is not a terminal (for bars that are not ours: the HF Trainer's)."""
    return _QUIET or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, iterable=None, **kw):
    """A tqdm progress bar on stderr (over `iterable` if given), disabled when `enabled` is false, under
    `--quiet`, or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = True if (_QUIET or not enabled) else None  # None: tqdm turns itself off when stderr is no TTY
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw
    )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_torch_threads(device: str | None = None) -> int | None:
    """The thread count `--torch-threads` defaults to; None = leave torch's default."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if device is not None and not str(device).startswith("cpu"):
        return None
    if device is None:
        import torch

        if torch.cuda.is_available():
            return None
    cores = usable_cores()
    return min(cores if _PASSIVE else max(1, cores // 2), DEFAULT_CPU_THREADS)


def set_torch_threads(n: int | None = None, device: str | None = None) -> int:
    """Set torch's intra-op (and, where still possible, inter-op) threads; returns the intra-op count in use.

    `n`: a count >= 1, or None / 0 for the default of `default_torch_threads(device)`.
    """
    import torch

    if not n:
        n = default_torch_threads(device)
    if n:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only allowed once, before any inter-op work; harmless to skip
            pass
    return torch.get_num_threads()


def service_failure(e: BaseException) -> tuple[str, int] | None:
    """One line and an exit status for a failure of a server this command talks to, or None if `e` is not one.

    A refused API key (HTTP 401/403) or another refusal of the request (4xx): exit 2, the user's to fix. A server
    that stayed down, overloaded or silent through every retry (connection errors, timeouts, 5xx): exit 1.
    """
    import httpx

    from .client import ServiceError
    from .openai_client import RequestError, ServerUnavailable

    group = getattr(e, "exceptions", None)  # an ExceptionGroup (asyncio.TaskGroup)
    if isinstance(group, tuple) and group and isinstance(group[0], BaseException):
        return service_failure(group[0])
    status = getattr(e, "status", None)
    if isinstance(e, (ServiceError, RequestError)) and status in (401, 403):
        detail = getattr(e, "detail", None) or str(e)
        return f"the server refused the API key (HTTP {status}: {detail}); check --api-key or its variable", 2
    if isinstance(e, ServiceError):
        return (f"the server answered {e}", 2) if status is not None and status < 500 else (f"server error: {e}", 1)
    if isinstance(e, RequestError):
        return f"the server refused a request: {e}", 2
    if isinstance(e, ServerUnavailable):
        return f"server unavailable: {e}", 1
    if isinstance(e, httpx.HTTPError):
        try:
            where = f" at {e.request.url}"
        except RuntimeError:  # no request attached
            where = ""
        text = " ".join(str(e).split()) or "no answer"
        return f"cannot reach the server{where} after retries ({type(e).__name__}: {text})", 1
    return None


def input_stamp(path: str | os.PathLike) -> dict:
    """What identifies an input file's version for a resume header: absolute path, size, modification time."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def resume_rows(partial: str | os.PathLike, header: dict[str, Any], fresh: bool = False) -> list[dict]:
    """The rows a killed run with this `header` left in `partial`; otherwise (or if `fresh`) `partial` restarts
    with `header` alone."""
    from .schema import InputError, read_jsonl, repair_torn_tail, write_jsonl

    p = Path(partial)
    header = json.loads(json.dumps(header))  # as it reads back
    if p.is_file() and not fresh:
        repair_torn_tail(p)
        try:
            rows = [r for _, r in read_jsonl(p, allow_torn_tail=True)]
        except InputError:
            rows = []
        if rows and rows[0].get("_resume") == header:
            return rows[1:]
        if rows:
            print(f"resume: {p} is from another run (input, model or options differ): starting over", file=sys.stderr)
    write_jsonl(p, [{"_resume": header}])
    return []


def append_rows(partial: str | os.PathLike, rows: list[dict]) -> None:
    """Append finished rows with one write (a kill leaves at most a torn last line)."""
    from .schema import append_jsonl

    append_jsonl(partial, rows)


def port_problem(host: str, port: int) -> str | None:
    """Why `serve` could not listen on host:port (in use, not allowed, unknown host), or None if it can.

    Binds and closes a socket with SO_REUSEADDR, as uvicorn will, so a port held only by closed connections
    (TIME_WAIT) counts as free. Checked before the model loads.
    """
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        return f"cannot resolve --host {host!r}: {e.strerror}"
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return f"cannot listen on {host}:{port}: {e.strerror or e} (is another server running there?)"
    return None
