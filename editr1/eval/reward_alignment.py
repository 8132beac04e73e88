"""Pairwise agreement of rewards with preference labels: `editr1 eval reward-alignment`.

Accuracy is over the decided pairs ("a" or "b") that the reward scored both sides of; a reward that
gives both sides the same score gets half a point (it did not decide). Ties are reported apart: how
far apart the reward puts two edits that the labels call equally good.

Several rewards are compared on the same decoded images. Each one's accuracy comes with a percentile
bootstrap interval over pairs; each two rewards' difference in accuracy with a paired bootstrap interval
(the same resampled pairs for both), which says whether one agrees with the labels better than the other
by more than the choice of pairs explains. A number that cannot be computed is None, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from editr1.data.images import image_to_tensor, resize_center_crop
from editr1.data.preference_pairs import ImageRef, PreferencePair, load_pair_image
from editr1.rewards.base import Reward
from editr1.rewards.checked import CheckedReward
from editr1.rewards.combined import CombinedReward

CONFIDENCE = 0.95
#: Resampled pairs drawn at once: bounds the bootstrap's memory on large sets.
CHUNK_DRAWS = 2_000_000
NO_DECIDED_PAIRS = "no decided pair (preferred a or b) was scored on both sides"
NO_COMMON_PAIRS = "no decided pair was scored on both sides by both rewards"


@dataclass
class PairScores:
    """One reward's scores of side a and side b of every pair, and whether it scored both sides."""

    a: torch.Tensor
    b: torch.Tensor
    valid: torch.Tensor


@dataclass
class AlignmentResult:
    accuracy: float | None
    decided_pairs: int
    tie_pairs: int
    tie_mean_abs_difference: float | None
    unscored_pairs: int
    #: Why `accuracy` is None; None when there is one.
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def pair_agreement(score_a: torch.Tensor, score_b: torch.Tensor, preferred: list[str]) -> torch.Tensor:
    """Per decided pair: 1 when the reward orders it as labelled, 0.5 for equal scores, else 0."""
    sign = torch.sign(score_a.double() - score_b.double())
    wanted = torch.tensor([1.0 if p == "a" else -1.0 for p in preferred], dtype=torch.float64)
    return torch.where(sign == 0, torch.full_like(sign, 0.5), (sign == wanted).double())


def agreement_by_pair(scores: PairScores, preferred: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the reward's agreement with the label (`pair_agreement`; 0 where it does not count), and
    whether it counts: the pair is decided and the reward scored both sides."""
    counted = torch.tensor([p != "tie" for p in preferred], dtype=torch.bool) & scores.valid
    agreement = torch.zeros(len(preferred), dtype=torch.float64)
    labels = [p for p, c in zip(preferred, counted.tolist()) if c]
    agreement[counted] = pair_agreement(scores.a[counted], scores.b[counted], labels)
    return agreement, counted


def alignment_result(scores: PairScores, preferred: Sequence[str]) -> AlignmentResult:
    agreement, counted = agreement_by_pair(scores, preferred)
    tie = torch.tensor([p == "tie" for p in preferred], dtype=torch.bool) & scores.valid
    return AlignmentResult(
        accuracy=float(agreement[counted].mean()) if counted.any() else None,
        decided_pairs=int(counted.sum()),
        tie_pairs=int(tie.sum()),
        tie_mean_abs_difference=float((scores.a[tie] - scores.b[tie]).abs().mean()) if tie.any() else None,
        unscored_pairs=int((~scores.valid).sum()),
        reason=None if counted.any() else NO_DECIDED_PAIRS,
    )


def bootstrap_interval(values: torch.Tensor, resamples: int, seed: int,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of the mean of `values` (one per pair) over `resamples` resamples of the
    pairs with replacement, drawn by a generator seeded with `seed`: the same arguments, the same interval."""
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"expected a non-empty vector of values, got shape {tuple(values.shape)}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    generator = torch.Generator().manual_seed(seed)
    n, values = values.numel(), values.double()
    per_chunk = max(1, CHUNK_DRAWS // n)
    means = torch.cat([values[torch.randint(n, (min(per_chunk, resamples - start), n), generator=generator)].mean(dim=1)
                       for start in range(0, resamples, per_chunk)])
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def paired_difference(agreement_a: torch.Tensor, counted_a: torch.Tensor, agreement_b: torch.Tensor,
                      counted_b: torch.Tensor, resamples: int, seed: int) -> dict[str, Any]:
    """Reward A's accuracy minus reward B's on the pairs both count, with its paired bootstrap interval:
    resampling pairs once for both rewards is resampling the per-pair difference of their agreements."""
    both = counted_a & counted_b
    if not both.any():
        return {"difference": None, "interval": None, "pairs": 0, "reason": NO_COMMON_PAIRS}
    difference = agreement_a[both] - agreement_b[both]
    return {"difference": float(difference.mean()), "interval": list(bootstrap_interval(difference, resamples, seed)),
            "pairs": int(both.sum()), "reason": None}


def _tensor(ref: ImageRef, size: int | None) -> torch.Tensor:
    image = load_pair_image(ref)
    return image_to_tensor(resize_center_crop(image, size, size) if size else image)


def score_pairs(rewards: Sequence[CheckedReward | CombinedReward], pairs: Sequence[PreferencePair], data_file: str | Path,
                batch_size: int = 64, size: int | None = None) -> list[PairScores]:
    """Every reward's scores of both sides of every pair. A chunk's images are decoded once and every reward
    scores the same tensors, both sides in one call."""
    chunks: list[list[PairScores]] = [[] for _ in rewards]
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start : start + batch_size])
        sources = [[_tensor(ref, size) for ref in p.sources] for p in chunk]
        edited = [_tensor(p.image_a, size) for p in chunk] + [_tensor(p.image_b, size) for p in chunk]
        for reward, scored in zip(rewards, chunks):
            batch = reward.score(sources + sources, edited, chunk + chunk, data_file)
            values, valid = batch.scores.detach().cpu().double(), batch.valid.cpu()
            k = len(chunk)
            scored.append(PairScores(values[:k], values[k:], valid[:k] & valid[k:]))
    return [PairScores(torch.cat([c.a for c in scored]), torch.cat([c.b for c in scored]),
                       torch.cat([c.valid for c in scored])) for scored in chunks]


def evaluate_alignment(reward: Reward, pairs: list[PreferencePair], batch_size: int = 64, size: int | None = None,
                       data_file: str | Path = "the preference pairs") -> AlignmentResult:
    """Score both sides of every pair with `reward` (each answer checked against the reward contract) and
    compare with the labels."""
    [scores] = score_pairs([CheckedReward(reward)], pairs, data_file, batch_size, size)
    return alignment_result(scores, [p.preferred for p in pairs])


def compare_rewards(rewards: Mapping[str, CheckedReward | CombinedReward], pairs: Sequence[PreferencePair],
                    data_file: str | Path, resamples: int, seed: int, size: int | None = None,
                    batch_size: int = 64) -> dict[str, Any]:
    """Each reward's alignment with the labels and its bootstrap interval, by label, and for each two rewards
    (in the order given) the paired difference in accuracy: `{"rewards": {...}, "differences": [...]}`."""
    preferred = [p.preferred for p in pairs]
    scored = dict(zip(rewards, score_pairs(list(rewards.values()), pairs, data_file, batch_size, size)))
    agreements = {label: agreement_by_pair(scores, preferred) for label, scores in scored.items()}
    report = {}
    for label, scores in scored.items():
        agreement, counted = agreements[label]
        result = alignment_result(scores, preferred)
        interval = list(bootstrap_interval(agreement[counted], resamples, seed)) if counted.any() else None
        entry = result.as_dict()
        report[label] = {"accuracy": entry.pop("accuracy"), "interval": interval, **entry}
    differences = [{"a": a, "b": b, **paired_difference(*agreements[a], *agreements[b], resamples, seed)}
                   for a, b in combinations(rewards, 2)]
    return {"rewards": report, "differences": differences}


def reward_labels(paths: Sequence[Path]) -> list[str]:
    """Each reward file's label: its stem, with `_2`, `_3`... added where that label is taken already."""
    labels: list[str] = []
    for path in paths:
        label, n = Path(path).stem, 1
        while label in labels:
            n += 1
            label = f"{Path(path).stem}_{n}"
        labels.append(label)
    return labels


def _number(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(interval: list[float] | None, signed: bool = False) -> str:
    return "n/a" if interval is None else f"[{_number(interval[0], signed)}, {_number(interval[1], signed)}]"


def format_table(report: Mapping[str, Any]) -> str:
    """The report of `editr1 eval reward-alignment` for a reader: a row per reward, then a row per difference."""
    votes = ", ".join(f"{vote} {count}" for vote, count in report["votes"].items())
    boot = report["bootstrap"]
    lines = [f"{report['n_pairs']} pairs ({votes}) in {report['pairs']} ({report['layout']}); "
             f"{round(boot['confidence'] * 100)}% bootstrap intervals over pairs ({boot['resamples']} resamples, "
             f"seed {boot['seed']})"]
    width = max(len("reward"), *(len(label) for label in report["rewards"]))
    lines.append(f"{'reward':<{width}}  accuracy  {'interval':<16}  decided  ties  |a-b| on ties  unscored")
    for label, entry in report["rewards"].items():
        lines.append(f"{label:<{width}}  {_number(entry['accuracy']):>8}  {_interval(entry['interval']):<16}  "
                     f"{entry['decided_pairs']:>7}  {entry['tie_pairs']:>4}  {_number(entry['tie_mean_abs_difference']):>13}  "
                     f"{entry['unscored_pairs']:>8}" + (f"  ({entry['reason']})" if entry["reason"] else ""))
    if report["differences"]:
        lines.append("paired differences in accuracy (on the decided pairs both scored):")
    for d in report["differences"]:
        lines.append(f"  {d['a']} - {d['b']}: " + (f"n/a ({d['reason']})" if d["difference"] is None else
                     f"{_number(d['difference'], signed=True)} {_interval(d['interval'], signed=True)} over {d['pairs']} pairs"))
    return "\n".join(lines)
