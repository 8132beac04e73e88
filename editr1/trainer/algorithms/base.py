"""What an RL algorithm is to the trainer: its rollout sampler, what that keeps per edit, and its loss.

The trainer owns everything else, alike for every algorithm: groups, rewards, advantages and filtering, the
micro-batches of (edit, step) pairs and their padding across processes, the velocities of the trained, old
and reference policies, the optimizer step, evaluation and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from editr1.sampling.solvers import get_sampler

if TYPE_CHECKING:
    from editr1.config import TrainConfig

VelocityFn = Callable[[Tensor, Tensor], Tensor]


class RolloutSampler:
    """Samples a rollout's edits: `sampler(velocity_fn, noise, sigmas)` is called on consecutive chunks of the
    rollout's rows, in order, and returns their clean latents; `kept()` is what the update needs beyond them
    (tensors with the rows on dim 1, or none)."""

    def __call__(self, velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
        raise NotImplementedError

    def kept(self) -> dict[str, Tensor]:
        return {}


class OdeRollout(RolloutSampler):
    """A deterministic ODE sampler of editr1.sampling.solvers, by name; keeps nothing but the edits."""

    def __init__(self, name: str):
        self.solve = get_sampler(name)

    def __call__(self, velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
        return self.solve(velocity_fn, x, sigmas)


@dataclass
class UpdateInputs:
    """One micro-batch of the update: the policies' velocities are taken at (x_t, t), one row per edit;
    `data` is what the loss needs besides (the algorithm's own)."""

    x_t: Tensor
    t: Tensor
    data: dict[str, Tensor] = field(default_factory=dict)


class Algorithm:
    """Subclass and register in `editr1.trainer.algorithms.ALGORITHMS`."""

    #: The algorithm's name in reports and plots.
    title: ClassVar[str]
    #: Whether the loss takes the old policy's velocity (`v_old`); the reference's is given when rl.kl_coef > 0.
    needs_old_velocity: ClassVar[bool] = False

    def __init__(self, config: "TrainConfig"):
        self.config = config

    def check(self) -> None:
        """Refuse settings the algorithm cannot train with: a one-line `EditR1Error` naming the field."""

    def rollout_sampler(self, step: int, first_row: int, rows: int, latent_shape: tuple[int, ...]) -> RolloutSampler:
        """The sampler of iteration `step`'s rollout of global rows `first_row ...` (`rows` of them, this
        process's share), each of `latent_shape`. Rollouts use the old policy."""
        raise NotImplementedError

    def old_policy_decay(self, step: int) -> float:
        """theta_old <- decay theta_old + (1 - decay) theta after the update of iteration `step`."""
        raise NotImplementedError

    def trainable_steps(self, sigmas: Tensor) -> Tensor:
        """The rollout steps (indices into `sigmas[:-1]`) an update may train on; each edit trains on a random
        `rl.timestep_fraction` of them."""
        return torch.arange(sigmas.numel() - 1)

    def update_inputs(self, latents: Tensor, kept: dict[str, Tensor], rows: Tensor, steps: Tensor, sigmas: Tensor,
                      noise: Callable[[], Tensor]) -> UpdateInputs:
        """The inputs of a micro-batch of edits `rows` (indices into this process's rollout), each at its rollout
        step `steps`: `latents` are the rollout's clean latents, `kept` what its sampler kept, `noise()` draws
        one fresh standard-normal latent per row from that row's own stream."""
        raise NotImplementedError

    def loss(self, inputs: UpdateInputs, v_theta: Tensor, v_old: Tensor | None, v_ref: Tensor | None,
             advantages: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch's loss (mean over its rows) and detached metrics, from the policies' velocities and the
        rows' group advantages."""
        raise NotImplementedError
