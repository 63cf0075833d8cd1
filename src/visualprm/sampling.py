"""A seeded stratified sample of records (`bench --sample N`): every group (stratum) is represented, the rest of
the sample is spread over the groups in proportion to their size.

The caller says what a record's group is (bench.py: file/subset, source and class: erroneous or correct), so a
small sample of a benchmark that lists all erroneous records first still holds both classes. This module knows
nothing about records or benchmarks.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np


def allocate(sizes: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """How many to take from each group: at most its size, `n` in all (or everything when n >= the total).

    Each group's share is n x size / total, rounded down but at least one (when n is smaller than the number of
    groups: one each from n groups, the biggest first); then one more at a time to the groups with the largest
    remainder, or one fewer from those furthest over their share, until the sum is n (ties at random)."""
    total = sum(sizes)
    if n >= total:
        return list(sizes)
    nonempty = [i for i, s in enumerate(sizes) if s > 0]
    take = [0] * len(sizes)
    if n <= len(nonempty):
        for i in sorted(nonempty, key=lambda i: (-sizes[i], rng.random()))[:n]:
            take[i] = 1
        return take
    share = [n * s / total for s in sizes]
    for i in nonempty:
        take[i] = min(sizes[i], max(1, int(share[i])))
    noise = rng.random(len(sizes))  # tie-breaks, drawn once
    while sum(take) > n:
        over = [i for i in nonempty if take[i] > 1]
        i = max(over, key=lambda i: (take[i] - share[i], noise[i]))
        take[i] -= 1
    while sum(take) < n:
        room = [i for i in nonempty if take[i] < sizes[i]]
        i = max(room, key=lambda i: (share[i] - take[i], noise[i]))
        take[i] += 1
    return take


def stratified_sample(groups: list[Hashable], n: int, seed: int) -> list[int]:
    """Positions of a seeded sample of `n` records whose groups are `groups` (one per record), in the records'
    order. Deterministic for a given (groups, n, seed)."""
    rng = np.random.default_rng(seed)
    by_group: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    keys = sorted(by_group, key=repr)
    take = allocate([len(by_group[k]) for k in keys], n, rng)
    chosen: list[int] = []
    for k, t in zip(keys, take):
        idx = by_group[k]
        chosen += [idx[j] for j in rng.permutation(len(idx))[:t]]
    return sorted(chosen)
