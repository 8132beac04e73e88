"""DiffusionNFT policy loss (docs/algorithm.md, "NFT loss" and "KL term")."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class NFTLoss:
    """total = policy + kl (with grad); pos/neg are detached batch means of L_pos/L_neg for logging."""

    total: Tensor
    policy: Tensor
    kl: Tensor
    pos: Tensor
    neg: Tensor

    def metrics(self) -> dict[str, Tensor]:
        """The values a trainer logs (detached), under the names it logs them."""
        return {"loss": self.total.detach(), "policy_loss": self.policy.detach(), "kl_loss": self.kl.detach(),
                "loss_pos": self.pos, "loss_neg": self.neg}


def adaptive_weighted_mse(x0_pred: Tensor, x0: Tensor, min_denom: float = 1e-5) -> Tensor:
    """Per-sample mean((x0_pred - x0)^2) / sg(max(mean|x0_pred - x0|, min_denom)), shape (B,)."""
    diff = (x0_pred - x0).flatten(1)
    denom = diff.abs().mean(dim=1).detach().clamp(min=min_denom)
    return (diff ** 2).mean(dim=1) / denom


def nft_loss(
    v_theta: Tensor,
    v_old: Tensor,
    x_t: Tensor,
    x0: Tensor,
    t: Tensor,
    r: Tensor,
    beta: float,
    adv_clip: float = 5.0,
    weight: Optional[Tensor] = None,
    v_ref: Optional[Tensor] = None,
    kl_coef: float = 0.0,
) -> NFTLoss:
    """DiffusionNFT loss on one (micro-)batch; velocities/latents are (B, ...), t/r/weight are (B,).

    v_pos = beta v_theta + (1-beta) v_old, v_neg = (1+beta) v_old - beta v_theta, x0_* = x_t - t v_*;
    policy = adv_clip * mean_i[w_i (r_i L_pos_i + (1-r_i) L_neg_i) / beta] with the adaptive weighting
    of adaptive_weighted_mse; kl = kl_coef * mean((v_theta - v_ref)^2), only if v_ref given and kl_coef > 0.

    The policy mean is over all B samples, zero-weight (filtered) ones included, not over the kept
    ones: then a batch split into micro-batches of sizes B_k satisfies
    loss(batch) = sum_k (B_k / B) * loss(micro-batch k), so gradient accumulation needs only a fixed
    per-micro-batch scale and never a global count of kept samples.
    v_old and v_ref are detached here so a caller cannot leak gradients into the old/ref policy.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if v_theta.dim() < 2:
        raise ValueError(f"v_theta must be (B, ...) with at least 2 dims, got shape {tuple(v_theta.shape)}")
    shape = v_theta.shape
    b = shape[0]
    for name, x in (("v_old", v_old), ("x_t", x_t), ("x0", x0)) + ((("v_ref", v_ref),) if v_ref is not None else ()):
        if x.shape != shape:
            raise ValueError(f"{name} shape {tuple(x.shape)} != v_theta shape {tuple(shape)}")
    for name, x in (("t", t), ("r", r)) + ((("weight", weight),) if weight is not None else ()):
        if x.shape != (b,):
            raise ValueError(f"{name} must have shape ({b},), got {tuple(x.shape)}")

    # Low-precision model outputs: do the loss arithmetic in at least float32.
    cdt = torch.promote_types(v_theta.dtype, torch.float32)
    v = v_theta.to(cdt)
    v_o = v_old.detach().to(cdt)
    xt = x_t.detach().to(cdt)
    x0d = x0.detach().to(cdt)
    tb = t.detach().to(cdt).reshape(b, *([1] * (v.dim() - 1)))
    rr = r.detach().to(cdt)
    w = torch.ones(b, dtype=cdt, device=v.device) if weight is None else weight.detach().to(cdt)

    v_pos = beta * v + (1.0 - beta) * v_o
    v_neg = (1.0 + beta) * v_o - beta * v
    l_pos = adaptive_weighted_mse(xt - tb * v_pos, x0d)
    l_neg = adaptive_weighted_mse(xt - tb * v_neg, x0d)
    policy = adv_clip * (w * (rr * l_pos + (1.0 - rr) * l_neg) / beta).mean()

    if v_ref is not None and kl_coef > 0:
        kl = kl_coef * ((v - v_ref.detach().to(cdt)) ** 2).mean()
    else:
        kl = torch.zeros((), dtype=cdt, device=v.device)
    return NFTLoss(
        total=policy + kl,
        policy=policy,
        kl=kl,
        pos=l_pos.detach().mean(),
        neg=l_neg.detach().mean(),
    )
