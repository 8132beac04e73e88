"""The reward contract: (reference images, edited, instruction) -> scores in [0, 1], or explicitly unscored."""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass
class RewardBatch:
    """Scores for a batch of N samples: the reward contract, which editr1 checks on every answer
    (`contract_breach`). `scores` and `valid` are tensors of shape (N,), one per sample in order; `valid` is
    bool. A valid score is a finite number in [0, 1]. `valid[i]` is False when sample i could not be scored:
    its score is NaN, never a made-up number, and the trainer masks it out (and counts it)."""

    scores: torch.Tensor
    valid: torch.Tensor
    #: Per-sample diagnostics to log (e.g. the judge's probability mass on score tokens), each of shape (N,).
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Why each unscored sample failed, by batch index.
    failures: dict[int, str] = field(default_factory=dict)
    #: A combination of several rewards (`editr1.rewards.combined`): each one's own answer, by its label.
    components: dict[str, "RewardBatch"] = field(default_factory=dict)


#: The contract, as an error about a breach states it.
CONTRACT = ("a reward returns a RewardBatch with one score in [0, 1] and one valid flag (bool) per sample; a "
            "sample it cannot score is valid=False with a NaN score (editr1/rewards/base.py)")


def _position(key: object, count: int) -> int | None:
    """`key` as a position in a batch of `count` (any integer type: numpy's too), or None."""
    try:
        position = operator.index(key)
    except TypeError:
        return None
    return position if 0 <= position < count and not isinstance(key, bool) else None


def contract_breach(batch: object, count: int) -> tuple[str, list[int]] | None:
    """How `batch`, a reward's answer for `count` samples, breaks the `RewardBatch` contract, and the positions
    of the samples at fault (all of them when the batch as a whole is malformed); None when it keeps it."""
    everyone = list(range(count))
    if not isinstance(batch, RewardBatch):
        return f"it returned {type(batch).__name__}, not a RewardBatch", everyone
    per_sample = {"scores": batch.scores, "valid": batch.valid,
                  **{f"extras[{key!r}]": values for key, values in batch.extras.items()}}
    for name, values in per_sample.items():
        if not isinstance(values, torch.Tensor):
            return f"{name} is a {type(values).__name__}, not a tensor", everyone
        if tuple(values.shape) != (count,):
            return f"{name} has shape {tuple(values.shape)} for {count} samples", everyone
    if batch.valid.dtype != torch.bool:
        return f"valid is {batch.valid.dtype}, not torch.bool", everyone
    strays = sorted((repr(i) for i in batch.failures if _position(i, count) is None), key=str)
    if strays:
        return f"failures names {', '.join(strays)}: not positions in 0..{count - 1}", everyone
    scores, valid = batch.scores.detach().cpu().double(), batch.valid.cpu()
    # A NaN marked valid would poison every group statistic; a score out of range skews advantages silently.
    for at_fault, what in ((valid & ~torch.isfinite(scores), "not finite"),
                           (valid & ((scores < 0) | (scores > 1)), "outside [0, 1]")):
        if at_fault.any():
            positions = at_fault.nonzero().flatten().tolist()
            return f"a score marked valid is {scores[positions[0]].item():g}, {what}", positions
    return None


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
    if not batches:
        raise ValueError("no reward batches to join")
    failures, offset = {}, 0
    for batch in batches:
        failures.update({offset + i: reason for i, reason in batch.failures.items()})
        offset += batch.scores.numel()
    keys = set().union(*(b.extras for b in batches))
    extras = {
        key: torch.cat([b.extras.get(key, torch.full((b.scores.numel(),), float("nan"))) for b in batches]) for key in keys
    }
    components = {label: concat_reward_batches([b.components[label] for b in batches]) for label in batches[0].components}
    return RewardBatch(torch.cat([b.scores for b in batches]), torch.cat([b.valid for b in batches]), extras, failures,
                       components)
