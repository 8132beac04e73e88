"""DiffusionNFT (docs/algorithm.md): rollouts with any ODE sampler keep only the clean edits; the update
re-noises each at rollout timesteps with fresh noise and trains the implicit positive and negative policies
(`rl.loss`, NFT's loss by default) toward it, weighted by the optimality probability of its advantage."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from editr1.dotted import resolve
from editr1.errors import EditR1Error
from editr1.rl.advantages import optimality_probability
from editr1.rl.losses import LOSSES
from editr1.rl.old_policy import old_policy_decay
from editr1.sampling.solvers import SAMPLERS
from editr1.trainer.algorithms.base import Algorithm, OdeRollout, RolloutSampler, UpdateInputs


class DiffusionNFT(Algorithm):
    title = "DiffusionNFT"
    needs_old_velocity = True

    def check(self) -> None:
        sampler = self.config.rollout.sampler
        if sampler not in SAMPLERS:
            raise EditR1Error(f"rollout.sampler: {sampler!r} is not an ODE sampler; rl.algorithm nft rolls out with "
                              f"one of {sorted(SAMPLERS)} (its update needs only the final edits)")
        self.loss_fn = resolve(self.config.rl.loss, LOSSES, "rl.loss", "loss")

    def rollout_sampler(self, step: int, first_row: int, rows: int, latent_shape: tuple[int, ...]) -> RolloutSampler:
        return OdeRollout(self.config.rollout.sampler)

    def old_policy_decay(self, step: int) -> float:
        return old_policy_decay(step, self.config.rl.old_policy_schedule)

    def update_inputs(self, latents: Tensor, kept: dict[str, Tensor], rows: Tensor, steps: Tensor, sigmas: Tensor,
                      noise: Callable[[], Tensor]) -> UpdateInputs:
        x0 = latents[rows]
        t = sigmas[steps].to(x0.device, x0.dtype)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise().to(x0)
        return UpdateInputs(x_t, t, {"x0": x0})

    def loss(self, inputs: UpdateInputs, v_theta: Tensor, v_old: Tensor | None, v_ref: Tensor | None,
             advantages: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rl = self.config.rl
        return self.loss_fn(v_theta=v_theta, v_old=v_old, v_ref=v_ref, x_t=inputs.x_t, x0=inputs.data["x0"],
                            t=inputs.t, r=optimality_probability(advantages, rl.adv_clip), beta=rl.beta,
                            adv_clip=rl.adv_clip, kl_coef=rl.kl_coef)
