"""The reward contract: (reference images, edited, instruction) -> scores in [0, 1], or explicitly unscored."""

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
    """A reward: built from its config options (`reward.options`) as keyword arguments, then asked for
    scores. `reward.name` is a name in `editr1.rewards.registry.REWARDS` or a dotted path
    `package.module:Name` to a subclass (or to a factory function returning one); docs/extending.md."""

    name: str
    #: Options that change how scores are obtained, never their values (an endpoint, retries, a batch
    #: size): a resumed training run may change them. A factory function declares them as its attribute.
    resume_safe_options: tuple[str, ...] = ()

    @abstractmethod
    def score(
        self,
        sources: list[list[torch.Tensor]],
        edited: list[torch.Tensor],
        prompts: list[str],
        requirements: list[str | None],
    ) -> RewardBatch:
        """`sources[i]` is the list of sample i's reference (source) images, 1..N of them in the order
        the instruction numbers them; `edited[i]` is its edit. Images are `(3, H, W)` floats in [0, 1]."""

    def check_ready(self) -> None:
        """Called once when training starts: raise EditR1Error if the reward cannot work (e.g. its server
        never comes up). Rewards with nothing to wait for do nothing."""


def check_batch(sources: list[list[torch.Tensor]], edited: list[torch.Tensor], prompts: list[str],
                requirements: list[str | None]) -> None:
    """ValueError unless the arguments follow the `Reward.score` contract (equal lengths, and every
    `sources[i]` a non-empty list of `(3, H, W)` tensors)."""
    if not len(sources) == len(edited) == len(prompts) == len(requirements):
        raise ValueError(f"batch sizes differ: {len(sources)} sources, {len(edited)} edited, {len(prompts)} prompts, "
                         f"{len(requirements)} requirements")
    for i, references in enumerate(sources):
        if not isinstance(references, (list, tuple)) or not references:
            raise ValueError(f"sources[{i}]: expected a non-empty list of the sample's reference images, "
                             f"got {type(references).__name__}")
        for k, image in enumerate([*references, edited[i]]):
            if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
                where = f"sources[{i}][{k}]" if k < len(references) else f"edited[{i}]"
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"{where}: expected a (3, H, W) image tensor, got {shape}")


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
