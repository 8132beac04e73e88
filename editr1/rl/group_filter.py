"""Low-variance group filtering (docs/algorithm.md, "Low-variance group filtering").

Groups are keyed by integer sample-group ids supplied by the caller, never by instruction text.
"""

from typing import List, Optional

import torch
from torch import Tensor

from editr1.rl.group_stats import group_stats64

RULES = ("paper", "strict", "none")


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
    ids, means, stds, valid = group_stats64(rewards, group_ids, valid)
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
    ids, means, stds, _ = group_stats64(rewards, group_ids, valid)
    return [int(i) for i in ids[(means > mean_threshold) & (stds < std_threshold)].tolist()]
