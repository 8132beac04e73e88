"""Stochastic rectified-flow steps with Gaussian log-probabilities, for Flow-GRPO.

Convention (as editr1/sampling/solvers.py): x_t = (1 - t) x0 + t eps, t = 1 is pure noise, the velocity
v ~ eps - x0, and a step goes from t down to t_next, so dt = t_next - t < 0. t and t_next are Python
floats or per-sample tensors of shape (B,), broadcast over the latent's other dims.

A step is x' = mu + s * eps with mu depending on the velocity and s on the times only. Two kinds:

- "flow_grpo" (noise_level = a, about 0.7): the Euler-Maruyama step of the SDE with the ODE's marginals,
  sigma_t = a sqrt(t / (1 - t)), s = sigma_t sqrt(-dt). sigma_t is infinite at t = 1, where every shifted
  schedule starts: that step takes 1 - t_next in the denominator instead, as Flow-GRPO does. The step to
  t_next = 0 is deterministic: the plain Euler step x - t v (= x0_hat), s = 0.
- "cps" (noise_level = eta in [0, 1]): coefficients-preserving sampling, s = t_next sin(eta pi / 2).
  Defined at t = 1; its step to t_next = 0 has s = 0 and mean x0_hat, so it is deterministic too.

A deterministic step (s = 0, also every step at noise_level 0) has no density: its log_prob is 0, so its
ratio is 1 and it carries no policy gradient. Train only on steps with s > 0.

The log-probability is the Gaussian log-density of x' under N(mu, s^2) averaged (not summed) over every
dim but the batch, as Flow-GRPO does: per sample, and independent of the image size.
Outputs are in at least float32 (the inputs' promoted dtype); keep the returned sample as the stored
rollout sample, so that `sde_log_prob` reproduces the rollout's log_prob bit for bit.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

Time = Union[float, Tensor]
SDE_KINDS = ("flow_grpo", "cps")


class SdeStep(NamedTuple):
    """One stochastic step: sample x' and mean mu are (B, ...); std s and log_prob are (B,)."""

    sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def _per_sample(t: Time, x: Tensor, dtype: torch.dtype) -> Tensor:
    """t as a (B,) tensor of `dtype` on x's device (a float or 0-dim tensor is repeated)."""
    b = x.shape[0]
    out = torch.as_tensor(t, dtype=dtype, device=x.device)
    if out.dim() == 0:
        return out.expand(b)
    if out.shape != (b,):
        raise ValueError(f"t must be a float, a 0-dim tensor or shape ({b},), got {tuple(out.shape)}")
    return out


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """A (B,) tensor viewed as (B, 1, ..., 1) to broadcast over x's non-batch dims."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def _check(t: Tensor, t_next: Tensor, noise_level: float, kind: str) -> None:
    """Refuse an unknown kind, a bad noise level, and times outside 0 <= t_next < t <= 1."""
    if kind not in SDE_KINDS:
        raise ValueError(f"unknown SDE kind {kind!r}; expected one of {SDE_KINDS}")
    if kind == "flow_grpo" and not noise_level >= 0:
        raise ValueError(f"flow_grpo noise_level must be >= 0, got {noise_level}")
    if kind == "cps" and not 0 <= noise_level <= 1:
        raise ValueError(f"cps noise_level (eta) must be in [0, 1], got {noise_level}")
    if not bool(((t_next >= 0) & (t_next < t) & (t <= 1)).all()):
        raise ValueError("times must satisfy 0 <= t_next < t <= 1")


def flow_grpo_sigma(t: Tensor, t_next: Tensor, noise_level: float) -> Tensor:
    """sigma_t = a sqrt(t / (1 - t)) where t_next > 0, and 0 on the last step (t_next = 0), which is
    deterministic. At t = 1 (infinite) the denominator is 1 - t_next, Flow-GRPO's rule for a schedule's
    first step."""
    sigma = noise_level * torch.sqrt(t / (1 - torch.where(t >= 1, t_next, t)))
    return torch.where(t_next > 0, sigma, torch.zeros_like(sigma))


def flow_grpo_mean_std(x: Tensor, v: Tensor, t: Tensor, t_next: Tensor, noise_level: float) -> tuple[Tensor, Tensor]:
    """mu = x (1 + sigma_t^2 dt / (2t)) + v (1 + sigma_t^2 (1 - t) / (2t)) dt, s = sigma_t sqrt(-dt).

    t and t_next are (B,); mu is x's shape, s is (B,). With sigma_t = 0 mu is the Euler step x + v dt.
    """
    sigma = flow_grpo_sigma(t, t_next, noise_level)
    dt = t_next - t
    sig2, tb, dtb = _bcast(sigma ** 2, x), _bcast(t, x), _bcast(dt, x)
    mean = x * (1 + sig2 * dtb / (2 * tb)) + v * (1 + sig2 * (1 - tb) / (2 * tb)) * dtb
    return mean, sigma * torch.sqrt(-dt)


def cps_mean_std(x: Tensor, v: Tensor, t: Tensor, t_next: Tensor, eta: float) -> tuple[Tensor, Tensor]:
    """Coefficients-preserving step: s = t_next sin(eta pi / 2), x0_hat = x - t v, eps_hat = x + (1 - t) v,
    mu = (1 - t_next) x0_hat + sqrt(t_next^2 - s^2) eps_hat.

    t and t_next are (B,); mu is x's shape, s is (B,). eta = 0 gives the deterministic (DDIM) step
    (1 - t_next) x0_hat + t_next eps_hat, equal to the Euler step x + v dt in exact arithmetic.
    """
    std = t_next * math.sin(eta * math.pi / 2)
    tb = _bcast(t, x)
    x0_hat = x - tb * v
    eps_hat = x + (1 - tb) * v
    # clamp: t_next^2 - s^2 may round below 0 at eta = 1
    eps_coef = torch.sqrt((t_next ** 2 - std ** 2).clamp(min=0))
    mean = _bcast(1 - t_next, x) * x0_hat + _bcast(eps_coef, x) * eps_hat
    return mean, std


def step_mean_std(x: Tensor, v: Tensor, t: Time, t_next: Time, *, noise_level: float,
                  kind: str = "flow_grpo") -> tuple[Tensor, Tensor]:
    """The step's mean mu (x's shape) and std s (B,), in at least float32, after checking the times."""
    cdt = torch.promote_types(torch.promote_types(x.dtype, v.dtype), torch.float32)
    tt, tn = _per_sample(t, x, cdt), _per_sample(t_next, x, cdt)
    _check(tt, tn, noise_level, kind)
    fn = flow_grpo_mean_std if kind == "flow_grpo" else cps_mean_std
    return fn(x.to(cdt), v.to(cdt), tt, tn, noise_level)


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(sample; mean, std^2) averaged over every dim but the first, shape (B,).

    = mean_d[-(sample - mean)^2 / (2 std^2)] - log std - log(2 pi) / 2, with std per sample (B,) or 0-dim.
    """
    s = std if std.dim() == 0 else std.reshape(-1)
    sq = ((sample - mean) ** 2).flatten(1).mean(dim=1)
    return -sq / (2 * s ** 2) - torch.log(s) - 0.5 * math.log(2 * math.pi)


def _step_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """gaussian_log_prob, with 0 for deterministic steps (std = 0) and the sample treated as data."""
    stochastic = std > 0
    # a safe std keeps NaNs out of the masked branch's gradient
    safe = torch.where(stochastic, std, torch.ones_like(std))
    lp = gaussian_log_prob(sample.detach().to(mean.dtype), mean, safe)
    return torch.where(stochastic, lp, torch.zeros_like(lp))


def sde_log_prob(x: Tensor, v: Tensor, t: Time, t_next: Time, sample: Tensor, *, noise_level: float,
                 kind: str = "flow_grpo") -> SdeStep:
    """Mean, std and log-probability of a stored step x -> sample under velocity v; draws no noise.

    This is how the loss recomputes log-probs: the rollout's x and x' with the trained policy's v.
    Gradients flow through the mean into v; the sample is data (detached).
    """
    mean, std = step_mean_std(x, v, t, t_next, noise_level=noise_level, kind=kind)
    if sample.shape != mean.shape:
        raise ValueError(f"sample shape {tuple(sample.shape)} != latent shape {tuple(mean.shape)}")
    return SdeStep(sample, mean, std, _step_log_prob(sample, mean, std))


def sde_step(x: Tensor, v: Tensor, t: Time, t_next: Time, *, noise_level: float, kind: str = "flow_grpo",
             noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> SdeStep:
    """Draw x' = mu + s * eps (eps = `noise`, or standard normal from `generator`) and its log-probability.

    The log-probability is computed from the drawn sample exactly as `sde_log_prob` computes it, so the
    same x, v, t, t_next give the same value bit for bit (on-policy ratio exactly 1).
    """
    mean, std = step_mean_std(x, v, t, t_next, noise_level=noise_level, kind=kind)
    if noise is None:
        device = generator.device if generator is not None else mean.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
    elif noise.shape != mean.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(mean.shape)}")
    sample = mean + _bcast(std, mean) * noise.to(mean.dtype)
    return SdeStep(sample, mean, std, _step_log_prob(sample, mean, std))


class SdeTrajectory(NamedTuple):
    """A stochastic sampling run: `latents` (N+1, B, ...) is x at each of the N+1 sigmas (the initial noise
    first, the edit last), `log_probs` (N, B) each step's log-probability (0 on deterministic steps)."""

    latents: Tensor
    log_probs: Tensor


def sde_trajectory(velocity_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor, *,
                   noise_level: float, kind: str = "flow_grpo", noise: Optional[Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> SdeTrajectory:
    """Sample over sigmas[0] -> sigmas[-1] with `sde_step` at every step (N model calls), keeping every
    step's latent and log-probability: what a Flow-GRPO rollout stores for its update, which recomputes
    each kept step's log-probability with `sde_log_prob`. `velocity_fn(x, sigma)` as the ODE samplers take
    it (editr1.sampling.solvers).

    The steps' noise: `noise` (N, B, ...), drawn beforehand (e.g. per row, so that a row's trajectory does
    not depend on the rows sampled beside it), or else standard normal from `generator`, step after step."""
    if sigmas.dim() != 1 or sigmas.numel() < 2 or not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"sigmas must be 1-D and finite with N+1 >= 2 entries, got shape {tuple(sigmas.shape)}")
    steps = sigmas.numel() - 1
    if noise is not None and noise.shape != (steps, *x.shape):
        raise ValueError(f"noise must have shape {(steps, *x.shape)} (steps, then the latents'), got {tuple(noise.shape)}")
    out_dtype = x.dtype
    cdt = torch.promote_types(out_dtype, torch.float32)
    s = sigmas.to(device=x.device, dtype=cdt)
    latents, log_probs = [x], []
    for i in range(steps):
        step = sde_step(x, velocity_fn(x, s[i]), s[i], s[i + 1], noise_level=noise_level, kind=kind,
                        noise=None if noise is None else noise[i], generator=generator)
        x = step.sample.to(out_dtype)
        latents.append(x)
        # Of the sample as stored (a bf16 latent rounds): what the update's recomputation sees, bit for bit.
        log_probs.append(_step_log_prob(x, step.mean, step.std))
    return SdeTrajectory(torch.stack(latents), torch.stack(log_probs))
