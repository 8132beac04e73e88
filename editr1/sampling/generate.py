"""Run an ODE sampler on any object with the adapter's `velocity` method (duck-typed: torch only), and
`edit_batch`, the one "edit these samples" primitive that rollouts, evaluation, judge distillation and
`editr1 edit` share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from editr1.sampling.solvers import VelocityFn, get_sampler, with_cfg

#: A sampler: `sampler(velocity_fn, noise, sigmas)` gives the clean latents (as the solvers by name do).
Sampler = Callable[[VelocityFn, torch.Tensor, torch.Tensor], torch.Tensor]


def generate(
    model: Any,
    conditions: Any,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str | Sampler = "euler",
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
    `sampler`: a name of editr1.sampling.solvers, or a sampler itself, `sampler(velocity_fn, noise, sigmas)`.
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
        solve = get_sampler(sampler) if isinstance(sampler, str) else sampler
        return solve(velocity_fn, noise, sigmas.to(noise.device))


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
    sampler: str | Sampler = "euler",
    cfg_scale: float = 1.0,
    negative_conditions: Any = None,
    guidance: float | None = None,
    transformer: torch.nn.Module | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    cfg_renorm: bool = True,
    on_step: Callable[[int, int], None] | None = None,
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
                     cfg_renorm=cfg_renorm, guidance=guidance, transformer=transformer, on_step=on_step)
        )
        if on_batch is not None:
            on_batch(rows, chunks[-1])
    return torch.cat(chunks)


@dataclass
class EditedBatch:
    #: The samples' encoded conditions, one row per sample (not per edit).
    conditions: Any
    #: Clean packed latents and decoded pixels (`(rows, 3, H, W)` in [0, 1], float32, CPU) of every edit:
    #: edit j of sample i is row `i * repeats + j`.
    latents: torch.Tensor
    pixels: torch.Tensor


def edit_batch(
    model: Any,
    sources: Sequence[Sequence[Any]],
    prompts: Sequence[str],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    height: int,
    width: int,
    *,
    repeats: int = 1,
    batch_size: int = 64,
    sampler: str | Sampler = "euler",
    cfg_scale: float = 1.0,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    transformer: torch.nn.Module | None = None,
    conditions: Any = None,
    negative_conditions: Any = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> EditedBatch:
    """Edit every sample (its source images and instruction) `repeats` times from `noise` (one row per
    edit): encode the conditions once per sample (or take them cached: `conditions`, and with true CFG
    `negative_conditions`, one row per sample), sample in chunks of
    `batch_size`, decode each chunk. True CFG combines as the family's pipeline does
    (`model.inference`), with the family's negative prompt unless `negative_prompt` is given. `on_batch(rows, pixels)` sees each decoded chunk, so a caller can score it
    while the next one is sampled; `on_step(step, steps)` follows the sampler."""
    if conditions is None:
        conditions = model.encode_conditions(list(sources), list(prompts), height, width)
    sample_of_row = torch.arange(len(prompts)).repeat_interleave(repeats)
    negative = None
    if cfg_scale != 1.0:
        if negative_conditions is None:
            negative_prompts = [model.inference.negative_prompt if negative_prompt is None else negative_prompt] * len(prompts)
            negative_conditions = model.encode_conditions(list(sources), negative_prompts, height, width)
        negative = negative_conditions.select(sample_of_row)
    decoded = []

    def decode(rows: torch.Tensor, latents: torch.Tensor) -> None:
        decoded.append(model.decode_latents(latents, height, width).float().cpu())
        if on_batch is not None:
            on_batch(rows, decoded[-1])

    latents = generate_in_batches(
        model, conditions.select(sample_of_row), noise, sigmas, batch_size, sampler, cfg_scale, negative, guidance,
        transformer, on_batch=decode, cfg_renorm=model.inference.cfg_renorm, on_step=on_step,
    )
    return EditedBatch(conditions, latents, torch.cat(decoded))
