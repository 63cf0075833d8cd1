"""What every long job shares: its progress bar and the number of CPU threads torch uses.

`bar` is the one progress bar of the toolkit (tqdm, on stderr): items done, rate and time left. It is off when
stderr is not a terminal (logs, pipes, tests) or after `set_quiet(True)` (`visualprm --quiet`); jobs create it
after their model has loaded, so the rate it shows is the work's alone.

`set_torch_threads` applies `--torch-threads` before a model loads. Its default (`None`): on a CUDA device
torch's own default (the CPU only feeds the GPU); on a CPU `min(usable cores, DEFAULT_CPU_THREADS)`, unless
`OMP_NUM_THREADS` is set (then the user's choice stands). Why 2 and not every core: see `DEFAULT_CPU_THREADS`.

This module computes nothing and imports torch only inside `set_torch_threads`.
"""

from __future__ import annotations

import os
import sys

# Measured with benchmarks/threads.py (README "Threads"): on a 2-core VM shared with other jobs, `score` and `bon`
# on the tiny and the demo-size model ran fastest with 1 or 2 threads; more threads than free cores made OpenMP
# threads spin against each other (several times slower). 4 caps small/medium machines at a safe width.
DEFAULT_CPU_THREADS = 4

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """`--quiet`: no progress bars for the rest of the process."""
    global _QUIET
    _QUIET = bool(quiet)


def bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, **kw):
    """A tqdm progress bar on stderr, disabled when `enabled` is false, under `--quiet`, or off a terminal."""
    from tqdm import tqdm

    disable = True if (_QUIET or not enabled) else None  # None: tqdm turns itself off when stderr is no TTY
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, **kw)


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
    return min(usable_cores(), DEFAULT_CPU_THREADS)


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
