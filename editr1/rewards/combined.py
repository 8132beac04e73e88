"""Several rewards scored as one: the weighted mean of their scores, each one's own answer kept beside it.

The combined score is sum_k w_k s_k / sum_k w_k: the weights are relative, the combination stays in [0, 1]
(so the group filter's thresholds keep their meaning), and group advantages, which divide by a spread, do
not depend on the weights' scale. A sample that any reward could not score is unscored in the combination:
it is masked, never filled in. The rewards are asked at once, each on its own thread, so a fast verifier
and a slow judge (in-process or served) overlap. docs/rewards.md, "Several rewards".
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from editr1.data.jsonl import EditSample
from editr1.rewards.base import RewardBatch
from editr1.rewards.checked import CheckedReward
from editr1.rewards.registry import build_reward


@dataclass(frozen=True)
class RewardTerm:
    """One reward of a combination: its label in logs and metrics, the reward, and its weight (> 0)."""

    label: str
    reward: CheckedReward
    weight: float


def weighted_mean(scores: torch.Tensor, valid: torch.Tensor, weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The combination of K rewards' scores `(K, N)` with validity `(K, N)`: per sample, the weighted mean
    of its scores (in float64, returned in the scores' dtype) and whether every reward scored it; an unscored
    sample's combined score is NaN. One reward's scores come back unchanged, bit for bit."""
    if scores.dim() != 2 or valid.shape != scores.shape or len(weights) != scores.shape[0]:
        raise ValueError(f"expected (K, N) scores and validity with K weights, got {tuple(scores.shape)}, "
                         f"{tuple(valid.shape)} and {len(weights)} weights")
    if not all(w > 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    total = sum(weights)
    fractions = torch.tensor([w / total for w in weights], dtype=torch.float64).unsqueeze(1)
    scored = valid.all(dim=0)
    filled = torch.where(valid, scores.double(), torch.zeros((), dtype=torch.float64))
    combined = (fractions * filled).sum(dim=0) if len(weights) > 1 else filled[0]
    return torch.where(scored, combined, torch.full_like(combined, float("nan"))).to(scores.dtype), scored


def unique_labels(specs: Sequence) -> list[str]:
    """Each reward's label: its own `label` (the config refuses one given twice), else its name (a dotted path's
    last part) with `_2`, `_3`... until free."""
    taken = {spec.label for spec in specs if spec.label is not None}
    labels = []
    for spec in specs:
        label = spec.label
        if label is None:
            base = spec.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1] or spec.name
            label, n = base, 1
            while label in taken:
                n += 1
                label = f"{base}_{n}"
            taken.add(label)
        labels.append(label)
    return labels


class CombinedReward:
    """Rewards scored together as their weighted mean (a `CheckedReward`'s interface: the trainer and the
    evaluations call one or several rewards alike). The answer's `components` hold each reward's own batch."""

    def __init__(self, terms: Sequence[RewardTerm]):
        if not terms:
            raise ValueError("a combined reward needs at least one reward")
        self.terms = list(terms)
        self.name = " + ".join(f"{t.weight:g} × {t.reward.name}" for t in self.terms) if len(terms) > 1 else terms[0].reward.name
        self.executor = ThreadPoolExecutor(len(terms), thread_name_prefix="editr1-reward-term") if len(terms) > 1 else None

    def score(self, sources: list[list[torch.Tensor]], edited: list[torch.Tensor], samples: Sequence[EditSample],
              data_file: str | Path) -> RewardBatch:
        """Every reward's scores of the edits (each checked against the reward contract), and their weighted
        mean. The first reward to fail raises its own one-line error."""
        if self.executor is None:
            return self.terms[0].reward.score(sources, edited, samples, data_file)
        futures = [self.executor.submit(t.reward.score, sources, edited, samples, data_file) for t in self.terms]
        batches = [future.result() for future in futures]
        scores, valid = weighted_mean(torch.stack([b.scores.detach().cpu().float() for b in batches]),
                                      torch.stack([b.valid.cpu() for b in batches]), [t.weight for t in self.terms])
        failures: dict[int, str] = {}
        for term, batch in zip(self.terms, batches):
            for i, reason in batch.failures.items():
                failures.setdefault(i, f"{term.label}: {reason}")
        for i in (~valid).nonzero().flatten().tolist():
            failures.setdefault(i, "no reason given")
        return RewardBatch(scores, valid, failures=failures,
                           components={t.label: b for t, b in zip(self.terms, batches)})

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def build_combined(config, section: str = "reward", error_log: Path | None = None) -> CombinedReward:
    """The reward a `RewardConfig` at `section` names: one, or several combined. Each is built and asked
    whether it is ready, in order; its errors name its place in the config (`reward.terms[1].options`)."""
    terms = config.term_list()
    labels = unique_labels(terms)
    built = []
    for i, (term, label) in enumerate(zip(terms, labels)):
        reward = build_reward(term.name, term.options, config.term_section(section, i))
        reward.check_ready()
        built.append(RewardTerm(label, CheckedReward(reward, term.name, error_log), term.weight))
    return CombinedReward(built)
