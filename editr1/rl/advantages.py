"""Group-relative advantages (of one reward, or of several normalised apart) and the NFT optimality probability.

Formulas: docs/algorithm.md, "Group advantages", "Several rewards" and "Optimality probability".
"""

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from editr1.rl.group_stats import check_group_inputs, group_stats64

STD_MODES = ("global", "group")
#: How several rewards make one advantage: their combined (weighted mean) score normalised, or each
#: reward normalised within its group before the weighted sum (`decoupled_advantages`).
REWARD_NORMALIZATIONS = ("combined", "per_reward")


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

    Cross-rank: the statistics are over exactly the tensors given, so for the global std over every
    process (docs/algorithm.md, "Group advantages") the caller all-gathers rewards/ids/valid first
    and slices its part after.
    """
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; expected one of {STD_MODES}")
    ids, means, stds, valid = group_stats64(rewards, group_ids, valid)
    device = rewards.device
    if not bool(valid.any()):
        return torch.zeros_like(rewards)
    v = valid.cpu()
    r = torch.where(v, rewards.detach().cpu().to(torch.float64), torch.zeros((), dtype=torch.float64))
    # Position of each sample's group among the valid groups (clamped for invalid-only groups, masked below).
    slot = torch.searchsorted(ids, group_ids.detach().cpu()).clamp(max=ids.numel() - 1)
    mean_i, std_i = means[slot], stds[slot]
    if std_mode == "global":
        rv = r[v]
        denom = ((rv - rv.mean()) ** 2).mean().sqrt() + eps
    else:
        denom = std_i + eps
    adv = torch.where(v, (r - mean_i) / denom, torch.zeros((), dtype=torch.float64))
    return adv.to(device=device, dtype=rewards.dtype)


def decoupled_advantages(
    component_rewards: Tensor,
    weights: Sequence[float],
    group_ids: Tensor,
    valid: Optional[Tensor] = None,
    eps: float = 1e-4,
) -> Tensor:
    """Several rewards normalised apart (GDPO), for rewards `(K, N)` with K weights:
    A_k = (R_k - mean of i's group) / (std of i's group + eps) for each reward k, A = sum_k w_k A_k / sum_k w_k,
    then A standardised over the valid samples: (A - mean) / (population std + eps).

    A reward that does not vary within a group adds nothing to that group's advantages, however its
    scale compares with the others'. Invalid samples get advantage 0 and enter no statistic.
    """
    if component_rewards.dim() != 2 or component_rewards.shape[0] != len(weights):
        raise ValueError(f"expected (K, N) rewards for {len(weights)} weights, got {tuple(component_rewards.shape)}")
    if not all(w > 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    valid = check_group_inputs(component_rewards[0], group_ids, valid).cpu()
    if not bool(valid.any()):
        return torch.zeros_like(component_rewards[0])
    total = sum(weights)
    summed = torch.zeros(component_rewards.shape[1], dtype=torch.float64)
    for rewards, weight in zip(component_rewards, weights):
        summed += (weight / total) * group_advantages(rewards.cpu().double(), group_ids, valid, "group", eps)
    kept = summed[valid]
    standardised = (summed - kept.mean()) / (((kept - kept.mean()) ** 2).mean().sqrt() + eps)
    adv = torch.where(valid, standardised, torch.zeros((), dtype=torch.float64))
    return adv.to(device=component_rewards.device, dtype=component_rewards.dtype)


def optimality_probability(advantages: Tensor, clip: float = 5.0) -> Tensor:
    """r = clamp(0.5 + 0.5 * clamp(A, -c, c) / c, 0, 1), i.e. 0.5 + A/10 for c = 5 and |A| <= 5.

    docs/algorithm.md, "Optimality probability".
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    return (0.5 + 0.5 * advantages.clamp(-clip, clip) / clip).clamp(0.0, 1.0)
