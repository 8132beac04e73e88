"""Deterministic rectified-flow ODE samplers.

Convention: x_sigma = (1 - sigma) x0 + sigma eps, the velocity v ~ eps - x0, sigma = 1 is pure noise,
and x0_hat = x - sigma v.
"""

import math
from typing import Callable, Dict

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""fn(x, sigma) -> v, with sigma the current sigma as a 0-dim tensor."""


def _check_sigmas(sigmas: Tensor) -> None:
    """Require a 1-D finite schedule with at least one step."""
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with N+1 >= 2 entries, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must be finite")


def euler(velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Euler ODE solve over sigmas[0] -> sigmas[-1]: x <- x + (sigma_next - sigma) v, N model calls.

    Bit-for-bit the update of diffusers' FlowMatchEulerDiscreteScheduler.step: the state is upcast
    to (at least) float32, sigmas are in that dtype, `(s_next - s) * v` keeps v's own dtype by torch
    promotion (0-dim times n-dim), and the result is cast back to x's dtype before the next call.
    """
    _check_sigmas(sigmas)
    out_dtype = x.dtype
    cdt = torch.promote_types(out_dtype, torch.float32)
    s = sigmas.to(device=x.device, dtype=cdt)
    for i in range(s.numel() - 1):
        v = velocity_fn(x, s[i])
        x = (x.to(cdt) + (s[i + 1] - s[i]) * v).to(out_dtype)
    return x


def dpmpp_2m(velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """2nd-order multistep DPM-Solver++ (data prediction), N model calls for N steps.

    alpha = 1 - sigma, lambda = log(alpha / sigma). The first-order update, in ratio form,
        x_next = (s_n / s) x + (alpha_n - (s_n / s) alpha) x0_hat
    equals the textbook (s_n / s) x - alpha_n (e^{-h} - 1) x0_hat, stays finite at sigma = 1
    (alpha = 0, lambda = -inf: x_next = s_n x + alpha_n x0_hat), and gives x0_hat exactly when
    s_n = 0. The 2nd-order correction 0.5 (h / h_prev) (x0_hat - x0_hat_prev) is added only when
    the previous and current lambdas are finite; with lambda_prev = -inf, h_prev is infinite and the
    correction is 0 in the limit, so skipping it is exact. The first and last steps are first order.
    """
    _check_sigmas(sigmas)
    sig = [float(v) for v in sigmas.tolist()]
    if any(a <= b for a, b in zip(sig, sig[1:])) or sig[0] > 1.0 or sig[-1] < 0.0:
        raise ValueError("dpmpp_2m needs strictly decreasing sigmas in [0, 1]")
    out_dtype = x.dtype
    cdt = torch.promote_types(out_dtype, torch.float32)
    s_t = sigmas.to(device=x.device, dtype=cdt)
    xs = x.to(cdt)
    n = len(sig) - 1
    prev_x0 = None
    prev_lam = -math.inf

    def lam(s: float) -> float:
        if s <= 0.0:
            return math.inf
        return -math.inf if s >= 1.0 else math.log((1.0 - s) / s)

    for i in range(n):
        s, s_n = sig[i], sig[i + 1]
        v = velocity_fn(xs.to(out_dtype), s_t[i])
        x0_hat = xs - s * v.to(cdt)
        ratio = s_n / s
        coef = (1.0 - s_n) - ratio * (1.0 - s)
        lam_c = lam(s)
        d = x0_hat
        if prev_x0 is not None and i < n - 1 and math.isfinite(prev_lam) and math.isfinite(lam_c):
            h = lam(s_n) - lam_c
            h_prev = lam_c - prev_lam
            d = x0_hat + (0.5 * h / h_prev) * (x0_hat - prev_x0)
        xs = ratio * xs + coef * d
        prev_x0, prev_lam = x0_hat, lam_c
    return xs.to(out_dtype)


SAMPLERS: Dict[str, Callable[[VelocityFn, Tensor, Tensor], Tensor]] = {"euler": euler, "dpmpp_2m": dpmpp_2m}


def get_sampler(name: str) -> Callable[[VelocityFn, Tensor, Tensor], Tensor]:
    """Look a sampler up by name."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}") from None


def with_cfg(cond_fn: VelocityFn, uncond_fn: VelocityFn, scale: float, renorm: bool = False) -> VelocityFn:
    """Classifier-free guidance v = v_u + scale (v_c - v_u).

    renorm=True rescales the result to the norm of v_c over the last dim (Qwen-Image "true CFG").
    scale == 1 returns cond_fn itself: the combination is then v_c, so the uncond pass is wasted work.
    """
    if scale == 1.0:
        return cond_fn

    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        v_c = cond_fn(x, sigma)
        v_u = uncond_fn(x, sigma)
        comb = v_u + scale * (v_c - v_u)
        if renorm:
            comb = comb * (torch.norm(v_c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return comb

    return guided
