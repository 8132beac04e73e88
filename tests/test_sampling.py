"""Rectified-flow samplers against a closed-form ODE.

For x0 ~ N(m, S^2), eps ~ N(0, 1), x_s = (1 - s) x0 + s eps is Gaussian with mean mu_s = (1 - s) m and
variance V_s = (1 - s)^2 S^2 + s^2; Cov(eps, x_s) = s and Cov(x0, x_s) = (1 - s) S^2, so
    v(x, s) = E[eps - x0 | x_s = x] = -m + (s - (1 - s) S^2) (x - mu_s) / V_s.
The ODE dx/ds = v from x_1 at s = 1 is solved by x_s = mu_s + sqrt(V_s) x_1: differentiating gives
-m + x_1 (s - (1 - s) S^2) / sqrt(V_s), which is v at that point since (x_s - mu_s) / V_s = x_1 / sqrt(V_s).
"""

import math

import pytest
import torch

from editr1.sampling.solvers import SAMPLERS, dpmpp_2m, euler, get_sampler, with_cfg

D = torch.float64
M, S = 0.7, 2.0
NS = (4, 8, 16, 32)


def gauss_velocity(x, sigma):
    s = float(sigma)
    var = (1 - s) ** 2 * S ** 2 + s ** 2
    return -M + (s - (1 - s) * S ** 2) * (x - (1 - s) * M) / var


def exact(x1, s):
    return (1 - s) * M + math.sqrt((1 - s) ** 2 * S ** 2 + s ** 2) * x1


def linear_sigmas(n):
    return torch.linspace(1.0, 0.0, n + 1, dtype=D)


def shifted_sigmas(n, mu=0.8):
    t = torch.linspace(1.0, 1.0 / n, n, dtype=D)
    s = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return torch.cat([s, torch.zeros(1, dtype=D)])


def fitted_slope(ns, errs):
    xs = [math.log(n) for n in ns]
    ys = [math.log(e) for e in errs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def final_errors(sampler, schedule):
    x1 = torch.linspace(-2.5, 2.5, 11, dtype=D)
    return [(sampler(gauss_velocity, x1.clone(), schedule(n)) - exact(x1, 0.0)).abs().max().item() for n in NS]


def test_closed_form_is_an_ode_solution():
    # independent check of the derivation: central difference of the exact path equals v
    x1 = torch.linspace(-2.0, 2.0, 5, dtype=D)
    for s in (0.1, 0.5, 0.9):
        h = 1e-6
        deriv = (exact(x1, s + h) - exact(x1, s - h)) / (2 * h)
        assert torch.allclose(deriv, gauss_velocity(exact(x1, s), torch.tensor(s)), atol=1e-7)


@pytest.mark.parametrize("schedule", [linear_sigmas, shifted_sigmas])
def test_euler_first_order(schedule):
    errs = final_errors(euler, schedule)
    assert -1.3 < fitted_slope(NS, errs) < -0.7, errs


@pytest.mark.parametrize("schedule", [linear_sigmas, shifted_sigmas])
def test_dpmpp_2m_second_order(schedule):
    # With sigmas reaching 1 and 0, the lambda = log((1-s)/s) steps at both ends never shrink, so
    # N = 4..32 is pre-asymptotic and the local slopes wobble; the 4-point fit still sits near -2.
    errs = final_errors(dpmpp_2m, schedule)
    assert -2.5 < fitted_slope(NS, errs) < -1.6, errs
    assert errs[-1] < 0.25 * final_errors(euler, schedule)[-1]


def test_shifted_schedule_shape():
    s = shifted_sigmas(6)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0 and bool((s[1:] < s[:-1]).all())


def test_euler_hand_unrolled():
    calls = []

    def fn(x, s):
        calls.append(s)
        return 2 * x + s

    out = euler(fn, torch.tensor([1.0], dtype=D), torch.tensor([1.0, 0.5, 0.0], dtype=D))
    # v = 2 + 1 = 3, x = 1 - 0.5 * 3 = -0.5; v = -1 + 0.5 = -0.5, x = -0.5 - 0.5 * -0.5 = -0.25
    assert out.item() == pytest.approx(-0.25)
    assert len(calls) == 2 and all(c.dim() == 0 for c in calls)
    assert [c.item() for c in calls] == [1.0, 0.5]


def test_dpmpp_first_step_from_pure_noise_and_last_step_returns_x0_hat():
    # sigma = 1 -> 0 in one step: no NaN, and the result is x0_hat = x - 1 * v
    x = torch.tensor([0.3, -1.2], dtype=D)
    out = dpmpp_2m(lambda x_, s: 2 * x_ + 1, x, torch.tensor([1.0, 0.0], dtype=D))
    assert torch.allclose(out, x - (2 * x + 1))
    # one step 1 -> 0.25: x_next = s_n x + alpha_n x0_hat
    out = dpmpp_2m(lambda x_, s: 2 * x_ + 1, x, torch.tensor([1.0, 0.25], dtype=D))
    assert torch.allclose(out, 0.25 * x + 0.75 * (x - (2 * x + 1)))
    assert torch.isfinite(out).all()


def test_dpmpp_second_order_step_hand_computed():
    # sigmas 0.8 -> 0.5 -> 0.2 -> 0 with a constant velocity c; x0_hat changes between steps so the
    # 2nd-order term at step 2 is active: x_next = r x + (a_n - r a)(D0 + 0.5 h/h0 (D0 - D_prev))
    c = 0.5
    fn = lambda x_, s: torch.full_like(x_, c)  # noqa: E731
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    x = 1.0
    x0a = x - 0.8 * c
    x = (0.5 / 0.8) * x + (0.5 - (0.5 / 0.8) * 0.2) * x0a  # step 1: first order
    x0b = x - 0.5 * c
    h, h0 = lam(0.2) - lam(0.5), lam(0.5) - lam(0.8)
    x = (0.2 / 0.5) * x + (0.8 - (0.2 / 0.5) * 0.5) * (x0b + 0.5 * h / h0 * (x0b - x0a))
    x0c = x - 0.2 * c  # step 3: last step, first order, lands on x0_hat
    out = dpmpp_2m(fn, torch.tensor([1.0], dtype=D), torch.tensor([0.8, 0.5, 0.2, 0.0], dtype=D))
    assert out.item() == pytest.approx(x0c, abs=1e-12)


def test_model_evaluations_equal_steps():
    for name in ("euler", "dpmpp_2m"):
        n_calls = []
        get_sampler(name)(lambda x, s: (n_calls.append(1), x)[1], torch.ones(3, dtype=D), linear_sigmas(6))
        assert len(n_calls) == 6


def test_low_precision_state_is_kept_for_model_calls():
    seen = []

    def fn(x, s):
        seen.append(x.dtype)
        return -x

    for sampler in (euler, dpmpp_2m):
        seen.clear()
        out = sampler(fn, torch.ones(4, dtype=torch.bfloat16), linear_sigmas(3).float())
        assert out.dtype == torch.bfloat16 and seen == [torch.bfloat16] * 3


def test_registry_and_errors():
    assert SAMPLERS["euler"] is euler and get_sampler("dpmpp_2m") is dpmpp_2m
    with pytest.raises(ValueError, match="dpmpp_2m.*euler|euler.*dpmpp_2m"):
        get_sampler("heun")
    with pytest.raises(ValueError):
        euler(lambda x, s: x, torch.ones(1), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        dpmpp_2m(lambda x, s: x, torch.ones(1), torch.tensor([0.5, 0.5, 0.0]))


def test_cfg_combination_and_scale_one():
    calls = {"c": 0, "u": 0}

    def cond(x, s):
        calls["c"] += 1
        return torch.tensor([[3.0, 4.0]], dtype=D)

    def uncond(x, s):
        calls["u"] += 1
        return torch.tensor([[1.0, 0.0]], dtype=D)

    x, s = torch.zeros(1, 2, dtype=D), torch.tensor(0.5)
    assert torch.equal(with_cfg(cond, uncond, 1.0)(x, s), cond(x, s))
    assert torch.equal(with_cfg(cond, uncond, 1.0, renorm=True)(x, s), cond(x, s))
    assert calls["u"] == 0
    v = with_cfg(cond, uncond, 3.0)(x, s)
    assert torch.allclose(v, torch.tensor([[7.0, 12.0]], dtype=D))  # 1 + 3*2, 0 + 3*4
    vr = with_cfg(cond, uncond, 3.0, renorm=True)(x, s)
    # rescaled to ||v_c|| = 5 along the last dim: [7, 12] * 5 / sqrt(193)
    assert torch.allclose(vr, torch.tensor([[7.0, 12.0]], dtype=D) * 5.0 / math.sqrt(193.0))
    assert vr.norm(dim=-1).item() == pytest.approx(5.0)


def test_cfg_renorm_is_per_token():
    cond = lambda x, s: torch.tensor([[[3.0, 4.0], [0.0, 1.0]]], dtype=D)  # noqa: E731
    uncond = lambda x, s: torch.zeros(1, 2, 2, dtype=D)  # noqa: E731
    vr = with_cfg(cond, uncond, 4.0, renorm=True)(None, torch.tensor(1.0))
    # comb = 4 v_c is parallel to v_c, so per-token renorm gives back v_c exactly
    assert torch.allclose(vr, cond(None, None))


def test_parity_with_diffusers_schedulers():
    sch_mod = pytest.importorskip("diffusers.schedulers")
    torch.manual_seed(0)
    w = torch.randn(8, 8)
    # Euler: bit-identical to FlowMatchEulerDiscreteScheduler.step, including bf16 state
    for dtype in (torch.bfloat16, torch.float32):
        sch = sch_mod.FlowMatchEulerDiscreteScheduler(shift=3.0)
        sch.set_timesteps(7)
        fn = lambda x, s: (torch.tanh(x.float() @ w) * (1 + s.float())).to(dtype)  # noqa: E731
        x0 = torch.randn(2, 8).to(dtype)
        x = x0.clone()
        for i, t in enumerate(sch.timesteps):
            x = sch.step(fn(x, sch.sigmas[i]), t, x).prev_sample
        assert torch.equal(euler(fn, x0.clone(), sch.sigmas.clone()), x)
    # DPM-Solver++ 2M with flow sigmas: same update up to float32 rounding inside diffusers
    sig = shifted_sigmas(6)
    sch = sch_mod.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                              algorithm_type="dpmsolver++", solver_order=2)
    sch.set_timesteps(6)
    sch.sigmas = sig.clone()
    x1 = torch.linspace(-2.0, 2.0, 9, dtype=D)
    x = x1.clone()
    for i, t in enumerate(sch.timesteps):
        x = sch.step(gauss_velocity(x, sig[i]), t, x).prev_sample
    assert torch.allclose(dpmpp_2m(gauss_velocity, x1.clone(), sig), x, atol=1e-5)
