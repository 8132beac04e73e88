"""Per-purpose random generators derived from (seed, step): resuming at step n replays exactly."""

from __future__ import annotations

import zlib

import torch


def generator_for(seed: int, step: int, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on the run seed, the iteration and what it is used for."""
    mixed = (seed * 1_000_003 + step * 7_919 + zlib.crc32(purpose.encode())) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)
