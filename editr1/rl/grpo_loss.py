"""Flow-GRPO policy loss (ALGORITHM.md, "Flow-GRPO, the baseline that NFT is compared with").

Log-probabilities, means and stds come from editr1.sampling.sde: log_prob from `sde_log_prob` with the
trained policy's velocity, old_log_prob stored at rollout, ref_mean from the same step under the frozen
reference's velocity.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _per_sample(name: str, x: Tensor, b: int) -> None:
    """Require x to have shape (b,)."""
    if x.shape != (b,):
        raise ValueError(f"{name} must have shape ({b},), got {tuple(x.shape)}")


def grpo_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """Per-sample KL(N(mean, s^2) || N(ref_mean, s^2)) averaged over dims, shape (B,):
    mean_d[(mean - ref_mean)^2] / (2 s^2), with std s (B,) > 0."""
    if ref_mean.shape != mean.shape:
        raise ValueError(f"ref_mean shape {tuple(ref_mean.shape)} != mean shape {tuple(mean.shape)}")
    _per_sample("std", std, mean.shape[0])
    if not bool((std > 0).all()):
        raise ValueError("the KL needs std > 0: train only on stochastic steps")
    return ((mean - ref_mean) ** 2).flatten(1).mean(dim=1) / (2 * std ** 2)


def grpo(*, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float,
         mean: Optional[Tensor] = None, ref_mean: Optional[Tensor] = None, std: Optional[Tensor] = None,
         kl_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clipped Flow-GRPO loss on one step of B samples; log-probs and advantages A are (B,).

    ratio = exp(log_prob - old_log_prob);
    policy = mean_i max(-A_i ratio_i, -A_i clip(ratio_i, 1 - c, 1 + c));
    loss = policy + kl_coef * mean_i KL_i with KL_i = grpo_kl(mean, ref_mean, std), only when ref_mean
    is given (mean and std then required, std (B,) > 0); without ref_mean there is no KL term.
    old_log_prob, advantages, ref_mean and std are detached: only log_prob and mean carry gradients.
    Metrics (detached): loss, policy_loss, kl (the unweighted mean KL, 0 without ref_mean), ratio (its
    mean) and clip_frac (the fraction of samples with |ratio - 1| > c).
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    if log_prob.dim() != 1:
        raise ValueError(f"log_prob must be (B,), got shape {tuple(log_prob.shape)}")
    b = log_prob.shape[0]
    for name, x in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        _per_sample(name, x, b)
    if kl_coef != 0 and ref_mean is None:
        raise ValueError("kl_coef != 0 needs ref_mean (and mean, std)")
    # low-precision inputs: do the arithmetic in at least float32
    cdt = torch.promote_types(log_prob.dtype, torch.float32)
    adv = advantages.detach().to(cdt)
    ratio = torch.exp(log_prob.to(cdt) - old_log_prob.detach().to(cdt))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    policy = torch.maximum(unclipped, clipped).mean()

    if ref_mean is not None:
        if mean is None or std is None:
            raise ValueError("ref_mean needs mean and std")
        kl = grpo_kl(mean.to(cdt), ref_mean.detach().to(cdt), std.detach().to(cdt)).mean()
    else:
        kl = torch.zeros((), dtype=cdt, device=log_prob.device)
    loss = policy + kl_coef * kl
    metrics = {"loss": loss.detach(), "policy_loss": policy.detach(), "kl": kl.detach(),
               "ratio": ratio.detach().mean(), "clip_frac": ((ratio.detach() - 1).abs() > clip_range).to(cdt).mean()}
    return loss, metrics
