"""A fixed held-out evaluation: fixed samples, fixed noise, paired comparison with a baseline."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from editr1.data.batching import source_images, source_tensors
from editr1.data.jsonl import EditSample
from editr1.errors import DataError, EditR1Error
from editr1.fileio import save_safetensors
from editr1.rewards.base import Reward
from editr1.rewards.checked import CheckedReward
from editr1.sampling.generate import edit_batch


@dataclass
class HeldoutSet:
    samples: list[EditSample]
    resolution: int
    noise: torch.Tensor
    #: The file the samples were read from, which errors about them name.
    data_file: str = "held-out data"
    #: Where conditions come from: `source(samples, negative)` (e.g. a conditions cache); None: encoded
    #: by the adapter, each sample alone (`encode_each`).
    source: Callable[[list[EditSample], bool], Any] | None = None
    _conditions: dict[tuple[int, int, bool], Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, samples: list[EditSample], count: int, resolution: int, token_shape: tuple[int, int], seed: int, source: str = "held-out data"
    ) -> "HeldoutSet":
        if len(samples) < count:
            raise DataError(f"{source}: has {len(samples)} samples but eval.samples={count}")
        noise = torch.randn(count, *token_shape, generator=torch.Generator().manual_seed(seed))
        return cls(samples[:count], resolution, noise, str(source))

    def conditions(self, adapter: Any, indices: tuple[int, ...], negative: bool = False) -> Any:
        """Samples `indices` encoded once and cached (the text encoder is frozen); `negative`: with the
        family's negative prompt instead of the instruction (true CFG's unconditional branch)."""
        key = (indices, negative)
        if key not in self._conditions:
            chunk = [self.samples[i] for i in indices]
            if self.source is not None:
                self._conditions[key] = self.source(chunk, negative)
            else:
                prompts = [adapter.inference.negative_prompt if negative else s.prompt for s in chunk]
                sources = [source_images(s, self.resolution) for s in chunk]
                self._conditions[key] = adapter.encode_each(sources, prompts, self.resolution, self.resolution)
        return self._conditions[key]


def rank_share(count: int, world: int, rank: int) -> list[int]:
    """The held-out samples process `rank` of `world` edits: a contiguous share of ceil(count / world), the
    last ones padded with repeats of the last sample, so that every process makes the same transformer calls
    (a sharded model's every call gathers from all of them). Shares in rank order, padding dropped, are
    the samples in order."""
    size = math.ceil(count / world)
    indices = list(range(rank * size, min(count, (rank + 1) * size)))
    return indices + [indices[-1] if indices else count - 1] * (size - len(indices))


@dataclass
class EvalResult:
    scores: torch.Tensor
    valid: torch.Tensor
    edited: torch.Tensor
    #: Scores of the same edits by a second reward (the training reward, when tracked).
    training_scores: torch.Tensor | None = None
    training_valid: torch.Tensor | None = None
    #: Why each unscored sample could not be scored, by index (not saved).
    failures: dict[int, str] = field(default_factory=dict)
    #: Scores and validity of the same edits by each evaluation-only reward (`eval.rewards`), by its label.
    independent: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.scores[self.valid].mean())


def evaluate(
    adapter: Any,
    heldout: HeldoutSet,
    reward: Reward | CheckedReward,
    steps: int,
    sampler: str,
    cfg_scale: float = 1.0,
    transformer: torch.nn.Module | None = None,
    batch_size: int = 64,
    guidance: float | None = None,
) -> EvalResult:
    """Edit every held-out sample from its fixed noise and score it (a bare `Reward` is checked under its
    class's name, with no error log)."""
    edited = generate_heldout(adapter, heldout, steps, sampler, cfg_scale, transformer, batch_size, guidance)
    return score_heldout(heldout, reward, edited, batch_size)


def score_heldout(heldout: HeldoutSet, reward: Reward | CheckedReward, edited: torch.Tensor, batch_size: int = 64
                  ) -> EvalResult:
    """Score the held-out edits (one per sample, in order), `batch_size` at a time."""
    checked = CheckedReward(reward) if isinstance(reward, Reward) else reward
    size = heldout.resolution
    scores, valid, failures = [], [], {}
    for start in range(0, len(heldout.samples), batch_size):
        chunk = heldout.samples[start:start + batch_size]
        result = checked.score([source_tensors(s, size) for s in chunk], list(edited[start:start + batch_size]),
                               chunk, heldout.data_file)
        failures.update({start + i: f"sample {chunk[i].id} (line {chunk[i].line}): {reason}" for i, reason in result.failures.items()})
        scores.append(result.scores)
        valid.append(result.valid)
    result = EvalResult(torch.cat(scores), torch.cat(valid), edited, failures=failures)
    if not result.valid.any():
        first = next(iter(failures.values()), "no reason given")
        raise EditR1Error(f"held-out evaluation: the reward could not score any of the {result.valid.numel()} samples; "
                          f"first reason: {first}")
    return result


def generate_heldout(
    adapter: Any,
    heldout: HeldoutSet,
    steps: int,
    sampler: str,
    cfg_scale: float = 1.0,
    transformer: torch.nn.Module | None = None,
    batch_size: int = 64,
    guidance: float | None = None,
    indices: list[int] | None = None,
) -> torch.Tensor:
    """The held-out edits (pixels) of the samples `indices` (default: all, in order), each from its fixed
    noise, `batch_size` at a time."""
    size = heldout.resolution
    sigmas = adapter.sigmas(steps, size, size)
    indices = list(range(len(heldout.samples))) if indices is None else indices
    chunks = [tuple(indices[start:start + batch_size]) for start in range(0, len(indices), batch_size)]
    # Every chunk's conditions first (cached after the first evaluation): offloaded text encoders move once.
    with adapter.text_encoders_on_device():
        for chunk in chunks:
            heldout.conditions(adapter, chunk)
            if cfg_scale != 1.0:
                heldout.conditions(adapter, chunk, negative=True)
    edited = []
    for chunk in chunks:
        samples = [heldout.samples[i] for i in chunk]
        edited.append(edit_batch(
            adapter, [source_images(s, size) for s in samples], [s.prompt for s in samples],
            heldout.noise[list(chunk)].to(adapter.device), sigmas, size, size, batch_size=batch_size, sampler=sampler,
            cfg_scale=cfg_scale, guidance=guidance, transformer=transformer, conditions=heldout.conditions(adapter, chunk),
            negative_conditions=heldout.conditions(adapter, chunk, negative=True) if cfg_scale != 1.0 else None,
        ).pixels)
    return torch.cat(edited)


def save_eval(result: EvalResult, path: Path, keep_images: int = 8) -> None:
    """Per-sample scores (and the first few edits, for grids) in safetensors."""
    tensors = {"scores": result.scores, "valid": result.valid, "edited": result.edited[:keep_images].contiguous()}
    if result.training_scores is not None:
        tensors.update(training_scores=result.training_scores, training_valid=result.training_valid)
    for label, (scores, valid) in result.independent.items():
        tensors.update({f"{INDEPENDENT}{label}.scores": scores, f"{INDEPENDENT}{label}.valid": valid})
    save_safetensors(tensors, path)


#: Key prefix of the evaluation-only rewards' tensors in a saved evaluation.
INDEPENDENT = "independent."


def load_eval(path: Path) -> EvalResult:
    data = load_file(path)
    labels = {key[len(INDEPENDENT):].rsplit(".", 1)[0] for key in data if key.startswith(INDEPENDENT)}
    independent = {label: (data[f"{INDEPENDENT}{label}.scores"], data[f"{INDEPENDENT}{label}.valid"]) for label in sorted(labels)}
    return EvalResult(data["scores"], data["valid"], data["edited"], data.get("training_scores"), data.get("training_valid"),
                      independent=independent)


def paired_gain(after: torch.Tensor, after_valid: torch.Tensor, before: torch.Tensor, before_valid: torch.Tensor
                ) -> tuple[float, float | None, torch.Tensor]:
    """(mean gain, its paired standard error, mask) over the samples scored in both evaluations; the
    standard error is None (never NaN) when only one sample was."""
    both = after_valid & before_valid
    if not both.any():
        raise EditR1Error("held-out gain: no sample was scored in both evaluations")
    stderr = paired_stderr(after[both], before[both]) if int(both.sum()) > 1 else None
    return float((after[both] - before[both]).mean()), stderr, both


def paired_stderr(after: torch.Tensor, before: torch.Tensor) -> float:
    """Standard error of the mean per-sample difference (same samples, same noise)."""
    diff = (after - before).double()
    if diff.numel() < 2:
        return float("nan")
    return float(diff.std(unbiased=True) / math.sqrt(diff.numel()))
