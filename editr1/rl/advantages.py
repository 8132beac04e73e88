"""Group-relative advantages and the NFT optimality probability (ALGORITHM.md steps 4-5)."""

from typing import Optional, Tuple

import torch
from torch import Tensor

STD_MODES = ("global", "group")


def _check_inputs(rewards: Tensor, group_ids: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Validate rewards/group_ids/valid; return the bool valid mask (all True when None)."""
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)} {rewards.dtype}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}")
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if valid is None:
        return torch.ones(rewards.shape, dtype=torch.bool, device=rewards.device)
    if valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(rewards.shape)}, "
                         f"got {tuple(valid.shape)} {valid.dtype}")
    return valid


def _group_mean_std(rewards: Tensor, group_ids: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-sample (group mean, group population std) over valid samples, float64, plus float64 rewards.

    Invalid rewards are zeroed before any arithmetic so that NaN placeholders cannot leak in.
    """
    r = torch.where(valid, rewards.detach().to(torch.float64), torch.zeros((), dtype=torch.float64))
    if not bool(torch.isfinite(r).all()):
        raise ValueError("a valid reward is not finite; mark failed scores invalid instead")
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    w = valid.to(torch.float64)
    counts = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, w)
    means = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, r * w) / counts.clamp(min=1)
    # Two-pass variance: E[R^2]-E[R]^2 cancels badly for near-equal rewards.
    sq = (r - means[inv]) ** 2 * w
    stds = (torch.zeros(g, dtype=torch.float64).index_add_(0, inv, sq) / counts.clamp(min=1)).sqrt()
    return means[inv], stds[inv], r


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    valid: Optional[Tensor] = None,
    std_mode: str = "global",
    eps: float = 1e-4,
) -> Tensor:
    """A_i = (R_i - mean of i's group) / (std + eps), using valid samples only.

    Group means use only the valid samples sharing i's integer id (ids, never text, define groups).
    std_mode "global": population std of all valid rewards; "group": population std of i's group.
    Invalid (unscored) samples get advantage 0 and enter no statistic; their reward may be NaN.

    Cross-rank: the statistics are over exactly the tensors given, so for the ALGORITHM.md
    "std over all ranks" the caller all-gathers rewards/ids/valid first and slices its part after.
    """
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; expected one of {STD_MODES}")
    valid = _check_inputs(rewards, group_ids, valid)
    device = rewards.device
    if not bool(valid.any()):
        return torch.zeros_like(rewards)
    mean_i, std_i, r = _group_mean_std(rewards.cpu(), group_ids.cpu(), valid.cpu())
    v = valid.cpu()
    if std_mode == "global":
        rv = r[v]
        denom = ((rv - rv.mean()) ** 2).mean().sqrt() + eps
    else:
        denom = std_i + eps
    adv = torch.where(v, (r - mean_i) / denom, torch.zeros((), dtype=torch.float64))
    return adv.to(device=device, dtype=rewards.dtype)


def optimality_probability(advantages: Tensor, clip: float = 5.0) -> Tensor:
    """r = clamp(0.5 + 0.5 * clamp(A, -c, c) / c, 0, 1), i.e. 0.5 + A/10 for c = 5 and |A| <= 5."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    return (0.5 + 0.5 * advantages.clamp(-clip, clip) / clip).clamp(0.0, 1.0)
