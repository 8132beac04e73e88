"""Training losses as registered pure functions of tensors.

Every loss is called with keyword arguments only and returns `(loss, metrics)`: the scalar to
backpropagate and a dict of detached scalars that the trainer logs under exactly those names.
`LOSSES` maps a loss name to its dotted path; a trainer resolves `rl.loss` through it, so a loss
defined outside editr1 (same keywords, same return) is usable by its dotted path `package.module:name`.

- `nft` (the DiffusionNFT algorithm): v_theta, v_old, v_ref (or None), x_t, x0, t, r, beta, adv_clip, kl_coef.
- `flow_matching` (SFT): v_pred, target.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from editr1.rl.nft_loss import nft_loss

LOSSES: dict[str, str] = {
    "nft": "editr1.rl.losses:nft",
    "flow_matching": "editr1.rl.losses:flow_matching",
}


def nft(*, v_theta: Tensor, v_old: Tensor, v_ref: Optional[Tensor], x_t: Tensor, x0: Tensor, t: Tensor, r: Tensor,
        beta: float, adv_clip: float, kl_coef: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The DiffusionNFT loss (`nft_loss`), with its policy, KL and positive/negative terms as metrics."""
    out = nft_loss(v_theta=v_theta, v_old=v_old, x_t=x_t, x0=x0, t=t, r=r, beta=beta, adv_clip=adv_clip, v_ref=v_ref,
                   kl_coef=kl_coef)
    return out.total, out.metrics()


def flow_matching(*, v_pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Rectified-flow regression: mean squared error of the predicted velocity, in float32."""
    loss = torch.nn.functional.mse_loss(v_pred.float(), target.float())
    return loss, {"loss": loss.detach()}
