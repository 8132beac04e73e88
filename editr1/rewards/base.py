"""The reward contract: (source, edited, instruction) -> scores in [0, 1], or explicitly unscored."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class RewardBatch:
    """Scores for a batch. `valid[i]` is False when sample i could not be scored: its score is NaN,
    never a made-up number, and the trainer masks it out."""

    scores: torch.Tensor
    valid: torch.Tensor
    #: Per-sample diagnostics to log (e.g. the judge's probability mass on score tokens).
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Why each unscored sample failed, by batch index.
    failures: dict[int, str] = field(default_factory=dict)


class Reward(ABC):
    name: str

    @abstractmethod
    def score(
        self,
        sources: list[torch.Tensor],
        edited: list[torch.Tensor],
        prompts: list[str],
        requirements: list[str | None],
    ) -> RewardBatch:
        """Images are `(3, H, W)` floats in [0, 1]."""


def concat_reward_batches(batches: list[RewardBatch]) -> RewardBatch:
    """Join per-chunk results in order; failure indices are shifted to the joined positions."""
    failures, offset = {}, 0
    for batch in batches:
        failures.update({offset + i: reason for i, reason in batch.failures.items()})
        offset += batch.scores.numel()
    keys = set().union(*(b.extras for b in batches)) if batches else set()
    extras = {
        key: torch.cat([b.extras.get(key, torch.full((b.scores.numel(),), float("nan"))) for b in batches]) for key in keys
    }
    return RewardBatch(torch.cat([b.scores for b in batches]), torch.cat([b.valid for b in batches]), extras, failures)
