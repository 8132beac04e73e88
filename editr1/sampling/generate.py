"""Run an ODE sampler on any object with the adapter's `velocity` method (duck-typed: torch only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from editr1.sampling.solvers import get_sampler, with_cfg


def generate(
    model: Any,
    conditions: Any,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    cfg_scale: float = 1.0,
    negative_conditions: Any = None,
    cfg_renorm: bool = True,
    guidance: float | None = None,
    transformer: torch.nn.Module | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Clean packed latents from `noise` at sigma 1, following `sigmas` down to 0.

    `model.velocity(tokens, sigma, conditions, guidance, transformer)` gives the velocity; with
    `cfg_scale > 1`, `negative_conditions` are the unconditional branch ("true CFG").
    `on_step(step, steps)` is called after each step's model evaluation (steps = len(sigmas) - 1).
    """

    def conditional(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model.velocity(x, sigma, conditions, guidance, transformer)

    velocity_fn = conditional
    if cfg_scale != 1.0:
        if negative_conditions is None:
            raise ValueError("cfg_scale != 1 needs negative_conditions")

        def unconditional(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return model.velocity(x, sigma, negative_conditions, guidance, transformer)

        velocity_fn = with_cfg(conditional, unconditional, cfg_scale, renorm=cfg_renorm)
    if on_step is not None:
        velocity_fn = _counting(velocity_fn, sigmas.numel() - 1, on_step)
    with torch.no_grad():
        return get_sampler(sampler)(velocity_fn, noise, sigmas.to(noise.device))


def _counting(velocity_fn: Callable, steps: int, on_step: Callable[[int, int], None]) -> Callable:
    # Every sampler evaluates the velocity exactly once per step, so counting calls counts steps.
    done = 0

    def counted(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        nonlocal done
        velocity = velocity_fn(x, sigma)
        done += 1
        on_step(done, steps)
        return velocity

    return counted


def generate_in_batches(
    model: Any,
    conditions: Any,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    batch_size: int,
    sampler: str = "euler",
    cfg_scale: float = 1.0,
    negative_conditions: Any = None,
    guidance: float | None = None,
    transformer: torch.nn.Module | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    cfg_renorm: bool = True,
) -> torch.Tensor:
    """`generate` over rows of `noise` in chunks of `batch_size`; conditions are sliced with `.select(rows)`.

    `on_batch(rows, latents)` is called after each chunk, so a caller can start scoring it while the
    next chunk is sampled."""
    chunks = []
    for start in range(0, noise.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, noise.shape[0]))
        negative = None if negative_conditions is None else negative_conditions.select(rows)
        chunks.append(
            generate(model, conditions.select(rows), noise[rows], sigmas, sampler, cfg_scale, negative,
                     cfg_renorm=cfg_renorm, guidance=guidance, transformer=transformer)
        )
        if on_batch is not None:
            on_batch(rows, chunks[-1])
    return torch.cat(chunks)
