"""Flow-GRPO (docs/algorithm.md, "Flow-GRPO"): rollouts sample an SDE whose every step is Gaussian and keep
each step's latent and log-probability; the update recomputes a random fraction of those steps'
log-probabilities under the trained policy and takes a PPO-clipped step on their ratio to the rollout's, with
a KL term to the reference policy. It rolls out with the policy it trains (on-policy: the old policy follows
the trained one after every update), so at the first update of an iteration the ratio is 1."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from editr1.errors import EditR1Error
from editr1.rl.grpo_loss import grpo
from editr1.sampling.sde import sde_log_prob, sde_trajectory, step_mean_std
from editr1.trainer.algorithms.base import Algorithm, RolloutSampler, UpdateInputs, VelocityFn
from editr1.trainer.seeding import generator_for

#: `rollout.sampler` values of the SDEs (editr1.sampling.sde kinds): Flow-GRPO's, and coefficients-preserving.
SDE_SAMPLERS = {"flow_grpo_sde": "flow_grpo", "cps_sde": "cps"}


class SdeRollout(RolloutSampler):
    """Samples the SDE with each row's step noise drawn beforehand (`noise`: steps x rows x latent), so an edit
    does not depend on the rows sampled beside it; keeps every step's latent and log-probability."""

    def __init__(self, kind: str, noise_level: float, noise: Tensor):
        self.kind, self.noise_level, self.noise = kind, noise_level, noise
        self.next_row = 0
        self.latents: list[Tensor] = []
        self.log_probs: list[Tensor] = []

    def __call__(self, velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
        rows = slice(self.next_row, self.next_row + x.shape[0])
        self.next_row = rows.stop
        trajectory = sde_trajectory(velocity_fn, x, sigmas, noise_level=self.noise_level, kind=self.kind,
                                    noise=self.noise[:, rows].to(x.device))
        self.latents.append(trajectory.latents)
        self.log_probs.append(trajectory.log_probs)
        return trajectory.latents[-1]

    def kept(self) -> dict[str, Tensor]:
        """`trajectory` (steps + 1, rows, ...): x at every sigma; `log_probs` (steps, rows)."""
        return {"trajectory": torch.cat(self.latents, dim=1), "log_probs": torch.cat(self.log_probs, dim=1)}


class FlowGRPO(Algorithm):
    title = "Flow-GRPO"

    def check(self) -> None:
        rollout, rl = self.config.rollout, self.config.rl
        if rollout.sampler not in SDE_SAMPLERS:
            raise EditR1Error(f"rollout.sampler: {rollout.sampler!r} is an ODE sampler, and rl.algorithm grpo trains on "
                              "its rollout's own stochastic steps; set rollout.sampler to flow_grpo_sde (Flow-GRPO's "
                              "SDE) or cps_sde (coefficients-preserving)")
        self.kind = SDE_SAMPLERS[rollout.sampler]
        highest = 1.0 if self.kind == "cps" else float("inf")
        if not 0 < rollout.noise_level <= highest:
            allowed = "in (0, 1] (eta)" if self.kind == "cps" else "> 0 (Flow-GRPO uses about 0.7)"
            raise EditR1Error(f"rollout.noise_level: {rollout.noise_level} with {rollout.sampler}; it must be {allowed}")
        if not rl.clip_range > 0:
            raise EditR1Error(f"rl.clip_range: {rl.clip_range}; the PPO clip range must be > 0 (Flow-GRPO uses 1e-4)")
        if rollout.cfg_scale != 1.0:
            raise EditR1Error(f"rollout.cfg_scale: {rollout.cfg_scale}; rl.algorithm grpo rolls out without true CFG (its "
                              "update recomputes each step's probability from the policy's velocity alone); set it to 1")

    def rollout_sampler(self, step: int, first_row: int, rows: int, latent_shape: tuple[int, ...]) -> RolloutSampler:
        steps = self.config.rollout.steps
        noise = torch.stack([torch.randn(steps, *latent_shape,
                                         generator=generator_for(self.config.seed, step, f"sde-row{first_row + row}"))
                             for row in range(rows)], dim=1)
        return SdeRollout(self.kind, self.config.rollout.noise_level, noise)

    def old_policy_decay(self, step: int) -> float:
        return 0.0  # the next rollout samples the policy just trained

    def trainable_steps(self, sigmas: Tensor) -> Tensor:
        # The step to sigma 0 is deterministic under both SDEs: no density, no policy gradient.
        return torch.nonzero(sigmas[1:] > 0).flatten()

    def update_inputs(self, latents: Tensor, kept: dict[str, Tensor], rows: Tensor, steps: Tensor, sigmas: Tensor,
                      noise: Callable[[], Tensor]) -> UpdateInputs:
        trajectory, log_probs = kept["trajectory"], kept["log_probs"]
        sigmas = sigmas.to(trajectory.device, torch.promote_types(trajectory.dtype, torch.float32))
        return UpdateInputs(trajectory[steps, rows], sigmas[steps],
                            {"t_next": sigmas[steps + 1], "sample": trajectory[steps + 1, rows],
                             "old_log_prob": log_probs[steps, rows]})

    def loss(self, inputs: UpdateInputs, v_theta: Tensor, v_old: Tensor | None, v_ref: Tensor | None,
             advantages: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rl, level = self.config.rl, self.config.rollout.noise_level
        t, t_next = inputs.t, inputs.data["t_next"]
        step = sde_log_prob(inputs.x_t, v_theta, t, t_next, inputs.data["sample"], noise_level=level, kind=self.kind)
        ref_mean = None
        if v_ref is not None:
            ref_mean, _ = step_mean_std(inputs.x_t, v_ref, t, t_next, noise_level=level, kind=self.kind)
        return grpo(log_prob=step.log_prob, old_log_prob=inputs.data["old_log_prob"],
                    advantages=advantages.clamp(-rl.adv_clip, rl.adv_clip), clip_range=rl.clip_range, mean=step.mean,
                    ref_mean=ref_mean, std=step.std, kl_coef=rl.kl_coef if v_ref is not None else 0.0)
