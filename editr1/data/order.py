"""A deterministic, resumable order over a dataset: a fresh seeded permutation per epoch."""

from __future__ import annotations

from collections.abc import Container

import torch

from editr1.errors import DataError


def take_indices(n: int, seed: int, position: int, count: int, skip: Container[int] = ()) -> tuple[list[int], int]:
    """`count` dataset indices starting at stream `position`, skipping `skip`; returns the new position.

    The stream is epoch after epoch of `randperm(n)` seeded by (seed, epoch), so any position can
    be resumed from without replaying the ones before it.
    """
    if n <= 0:
        raise DataError("the training data is empty")
    chosen: list[int] = []
    cached_epoch, permutation = -1, []
    scanned = 0
    while len(chosen) < count:
        epoch = position // n
        if epoch != cached_epoch:
            permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
            cached_epoch = epoch
        index = permutation[position % n]
        position += 1
        scanned += 1
        if index not in skip:
            chosen.append(index)
        elif scanned > 2 * n and not chosen:
            raise DataError("every sample of the training data is banned (rl.ban_saturated): nothing left to sample")
    return chosen, position
