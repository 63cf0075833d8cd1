"""argparse value types that refuse out-of-range numbers: `--threshold 1.5` or `--top-p 2` fail at parse time.

Each type returns the parsed number, or raises `argparse.ArgumentTypeError` with the allowed range, which argparse
reports as `visualprm CMD: error: argument --OPT: must be in [0, 1], got 1.5` with exit status 2, before any
work. NaN and infinities are refused everywhere. This module parses options only.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _parse(kind: type, s: str) -> float | int:
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {s!r}"
        ) from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def int_at_least(lo: int) -> Callable[[str], int]:
    """An integer >= `lo`."""

    def parse(s: str) -> int:
        v = _parse(int, s)
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def number_in(
    lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False
) -> Callable[[str], float]:
    """A float in the interval from `lo` to `hi` (None: unbounded; `*_open`: that end excluded)."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    text = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"

    def parse(s: str) -> float:
        v = _parse(float, s)
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (
            hi is not None and (v > hi or (hi_open and v == hi))
        ):
            raise argparse.ArgumentTypeError(f"must be in {text}, got {v:g}")
        return v

    parse.__name__ = f"number in {text}"
    return parse


POSITIVE_INT = int_at_least(1)  # counts, sizes
NONNEG_INT = int_at_least(0)  # retries, workers, steps where 0 means none
PROBABILITY = number_in(0.0, 1.0)  # top-p, fractions, thresholds on P(+)
NONNEG = number_in(0.0)  # temperatures, waits
POSITIVE = number_in(0.0, lo_open=True)  # learning rates, timeouts, sizes in MiB


def port(s: str) -> int:
    """A TCP port, 1-65535."""
    v = _parse(int, s)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535], got {v}")
    return v
