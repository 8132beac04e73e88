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
