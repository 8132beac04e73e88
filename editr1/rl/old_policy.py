"""Old-policy soft-update schedules and the in-place soft update (docs/algorithm.md, "Old-policy soft update").

The separate evaluation EMA that DiffusionNFT describes is not implemented; see that section.
"""

from typing import Iterable

import torch
from torch import Tensor

SCHEDULES = ("linear", "delayed", "linear_fast", "on_policy")


def old_policy_decay(step: int, schedule: str = "linear") -> float:
    """Decay eta for theta_old <- eta theta_old + (1 - eta) theta after optimizer step `step`.

    "linear": min(0.001 step, 0.5); "linear_fast": min(0.01 step, 0.5) (short CPU runs);
    "delayed": 0 for step < 75, then min(0.0075 (step - 75), 0.999), so steps 0..75 are all 0;
    "on_policy": always 0.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if schedule == "linear":
        return min(0.001 * step, 0.5)
    if schedule == "linear_fast":
        return min(0.01 * step, 0.5)
    if schedule == "delayed":
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    if schedule == "on_policy":
        return 0.0
    raise ValueError(f"unknown old-policy schedule {schedule!r}; expected one of {SCHEDULES}")


def soft_update_(target: Iterable[Tensor], source: Iterable[Tensor], decay: float) -> None:
    """In place, target <- decay * target + (1 - decay) * source, pairwise, without autograd."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    tgt = list(target)
    src = list(source)
    if len(tgt) != len(src):
        raise ValueError(f"target has {len(tgt)} tensors but source has {len(src)}")
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(tgt, src)):
            if a.shape != b.shape:
                raise ValueError(f"tensor {i}: target shape {tuple(a.shape)} != source shape {tuple(b.shape)}")
            a.mul_(decay).add_(b.to(device=a.device, dtype=a.dtype), alpha=1.0 - decay)
