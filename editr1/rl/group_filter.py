"""Low-variance group filtering (ALGORITHM.md, "Low-variance group filtering").

Groups are keyed by integer sample-group ids supplied by the caller, never by instruction text.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

RULES = ("paper", "strict", "none")


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


def _stats64(rewards: Tensor, group_ids: Tensor, valid: Optional[Tensor]):
    """(unique ids of groups with >= 1 valid sample, float64 means, float64 population stds, valid)."""
    valid = _check_inputs(rewards, group_ids, valid)
    rv = rewards.detach().cpu().to(torch.float64)[valid.cpu()]
    if not bool(torch.isfinite(rv).all()):
        raise ValueError("a valid reward is not finite; mark failed scores invalid instead")
    ids, inv = torch.unique(group_ids.detach().cpu()[valid.cpu()], sorted=True, return_inverse=True)
    g = ids.numel()
    counts = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(rv))
    means = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, rv) / counts
    # Two-pass variance: E[R^2]-E[R]^2 cancels badly for the near-equal rewards this filter judges.
    var = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, (rv - means[inv]) ** 2) / counts
    return ids, means, var.sqrt(), valid


def group_stats(
    rewards: Tensor, group_ids: Tensor, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-group (sorted unique ids, means, population stds) over valid samples only.

    Groups with no valid sample are omitted. Means/stds have the dtype of rewards, on the CPU.
    """
    ids, means, stds, _ = _stats64(rewards, group_ids, valid)
    return ids, means.to(rewards.dtype), stds.to(rewards.dtype)


def low_variance_keep_mask(
    rewards: Tensor,
    group_ids: Tensor,
    rule: str = "paper",
    mean_threshold: float = 0.9,
    std_threshold: float = 0.05,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Per-sample bool keep mask from per-group reward mean/std.

    "paper": drop a group when mean > mean_threshold and std < std_threshold.
    "strict": keep a group only when std > std_threshold and mean < mean_threshold.
    "none": keep every group.
    Invalid samples are never kept: they have no score, so they must get zero loss weight.
    """
    if rule not in RULES:
        raise ValueError(f"unknown filter rule {rule!r}; expected one of {RULES}")
    ids, means, stds, valid = _stats64(rewards, group_ids, valid)
    if rule == "paper":
        keep_group = ~((means > mean_threshold) & (stds < std_threshold))
    elif rule == "strict":
        keep_group = (stds > std_threshold) & (means < mean_threshold)
    else:
        keep_group = torch.ones_like(means, dtype=torch.bool)
    kept_ids = ids[keep_group]
    keep = torch.isin(group_ids.detach().cpu(), kept_ids) & valid.cpu()
    return keep.to(rewards.device)


def groups_to_ban(
    rewards: Tensor,
    group_ids: Tensor,
    mean_threshold: float = 0.9,
    std_threshold: float = 0.05,
    valid: Optional[Tensor] = None,
) -> List[int]:
    """Sorted ids of groups with mean > mean_threshold and std < std_threshold (permanent-ban candidates).

    The caller owns the banned set and its persistence; this only reports this iteration's candidates.
    """
    ids, means, stds, _ = _stats64(rewards, group_ids, valid)
    return [int(i) for i in ids[(means > mean_threshold) & (stds < std_threshold)].tolist()]
