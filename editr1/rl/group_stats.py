"""Per-group reward statistics shared by the advantages and the group filter.

Groups are keyed by integer ids supplied by the caller (one id per source/instruction pair), never
by instruction text. Statistics use valid (scored) samples only. docs/algorithm.md, "Group advantages"
and "Low-variance group filtering".
"""

from typing import Optional

import torch
from torch import Tensor


def check_group_inputs(rewards: Tensor, group_ids: Tensor, valid: Optional[Tensor]) -> Tensor:
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


def group_stats64(rewards: Tensor, group_ids: Tensor, valid: Optional[Tensor]):
    """(unique ids of groups with >= 1 valid sample, float64 means, float64 population stds, valid)."""
    valid = check_group_inputs(rewards, group_ids, valid)
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

