"""Pairwise agreement of a reward with preference labels: `editr1 eval reward-alignment`.

Accuracy is over the decided pairs ("a" or "b") that the reward scored both sides of; a reward that
gives both sides the same score gets half a point (it did not decide). Ties are reported apart: how
far apart the reward puts two edits that the labels call equally good.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from editr1.data.images import image_to_tensor, load_image, resize_center_crop
from editr1.data.preference_pairs import PreferencePair
from editr1.rewards.base import Reward


@dataclass
class AlignmentResult:
    accuracy: float
    decided_pairs: int
    tie_pairs: int
    tie_mean_abs_difference: float
    unscored_pairs: int

    def as_dict(self) -> dict:
        return asdict(self)


def pair_agreement(score_a: torch.Tensor, score_b: torch.Tensor, preferred: list[str]) -> torch.Tensor:
    """Per decided pair: 1 when the reward orders it as labelled, 0.5 for equal scores, else 0."""
    sign = torch.sign(score_a.double() - score_b.double())
    wanted = torch.tensor([1.0 if p == "a" else -1.0 for p in preferred], dtype=torch.float64)
    return torch.where(sign == 0, torch.full_like(sign, 0.5), (sign == wanted).double())


def _tensor(path, size: int | None) -> torch.Tensor:
    image = load_image(path)
    return image_to_tensor(resize_center_crop(image, size, size) if size else image)


def evaluate_alignment(reward: Reward, pairs: list[PreferencePair], batch_size: int = 64, size: int | None = None) -> AlignmentResult:
    """Score both sides of every pair with `reward` and compare with the labels."""
    scores_a, scores_b, valid = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        sources = [[_tensor(path, size) for path in p.sources] for p in chunk]
        prompts, requirements = [p.prompt for p in chunk], [p.requirement for p in chunk]
        side_a = reward.score(sources, [_tensor(p.image_a, size) for p in chunk], prompts, requirements)
        side_b = reward.score(sources, [_tensor(p.image_b, size) for p in chunk], prompts, requirements)
        scores_a.append(side_a.scores)
        scores_b.append(side_b.scores)
        valid.append(side_a.valid & side_b.valid)
    a, b, ok = torch.cat(scores_a), torch.cat(scores_b), torch.cat(valid)
    labels = [p.preferred for p in pairs]
    decided = torch.tensor([label != "tie" for label in labels]) & ok
    tie = torch.tensor([label == "tie" for label in labels]) & ok
    agreement = pair_agreement(a[decided], b[decided], [label for label, d in zip(labels, decided) if d])
    return AlignmentResult(
        accuracy=float(agreement.mean()) if decided.any() else float("nan"),
        decided_pairs=int(decided.sum()),
        tie_pairs=int(tie.sum()),
        tie_mean_abs_difference=float((a[tie] - b[tie]).abs().mean()) if tie.any() else float("nan"),
        unscored_pairs=int((~ok).sum()),
    )
