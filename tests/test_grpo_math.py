"""Flow-GRPO math: the SDE steps and their log-probabilities (editr1/sampling/sde.py) and the clipped
policy loss with its KL term (editr1/rl/grpo_loss.py), each against its formula."""

import math

import pytest
import torch

from editr1.rl.grpo_loss import grpo, grpo_kl
from editr1.sampling.sde import SdeStep, gaussian_log_prob, sde_log_prob, sde_step, sde_trajectory, step_mean_std

D = torch.float64
EPS = torch.finfo(D).eps
KINDS = [("flow_grpo", 0.7), ("cps", 0.7)]


def _t(xs):
    return torch.tensor(xs, dtype=D)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _latents(seed, shape=(3, 4, 5)):
    g = _gen(seed)
    return torch.randn(shape, generator=g, dtype=D), torch.randn(shape, generator=g, dtype=D)


T, T_NEXT = _t([0.9, 0.5, 0.2]), _t([0.8, 0.3, 0.1])


# --- the step's formulas -------------------------------------------------------------------------------

def test_flow_grpo_step_hand_computed():
    # x = 1, v = 2, t = 0.75, t_next = 0.5, a = 0.5: sigma^2 = 0.25 * 0.75 / 0.25 = 0.75, dt = -0.25
    # mu = 1 (1 + 0.75 (-0.25) / 1.5) + 2 (1 + 0.75 * 0.25 / 1.5) (-0.25) = 0.875 - 0.5625; s = sqrt(0.75) 0.5
    step = sde_step(_t([[1.0]]), _t([[2.0]]), 0.75, 0.5, noise_level=0.5, noise=_t([[2.0]]))
    assert step.mean.item() == pytest.approx(0.3125)
    assert step.std.item() == pytest.approx(math.sqrt(0.75) * 0.5)
    assert step.sample.item() == pytest.approx(0.3125 + math.sqrt(0.75))


def test_cps_step_hand_computed():
    # eta = 1/3: s = 0.25 sin(pi/6) = 0.125; x0_hat = 1 - 0.5 * 2 = 0; eps_hat = 1 + 0.5 * 2 = 2
    # mu = 0.75 * 0 + sqrt(0.25^2 - 0.125^2) * 2
    step = sde_step(_t([[1.0]]), _t([[2.0]]), 0.5, 0.25, noise_level=1 / 3, kind="cps", noise=_t([[-1.0]]))
    assert step.std.item() == pytest.approx(0.125)
    assert step.mean.item() == pytest.approx(math.sqrt(0.25 ** 2 - 0.125 ** 2) * 2)
    assert step.sample.item() == pytest.approx(step.mean.item() - 0.125)


@pytest.mark.parametrize("kind,level", KINDS)
def test_log_prob_equals_torch_normal(kind, level):
    x, v = _latents(0)
    step = sde_step(x, v, T, T_NEXT, noise_level=level, kind=kind, generator=_gen(1))
    assert isinstance(step, SdeStep) and step.std.shape == (3,) and step.log_prob.shape == (3,)
    if kind == "flow_grpo":
        expected_std = level * torch.sqrt(T / (1 - T)) * torch.sqrt(T - T_NEXT)
    else:
        expected_std = T_NEXT * math.sin(level * math.pi / 2)
    assert torch.allclose(step.std, expected_std, rtol=1e-12, atol=0)
    normal = torch.distributions.Normal(step.mean, step.std[:, None, None].expand_as(step.mean))
    reference = normal.log_prob(step.sample).flatten(1).sum(dim=1) / step.sample[0].numel()
    assert torch.allclose(step.log_prob, reference, rtol=1e-12, atol=1e-12)


def test_gaussian_log_prob_equals_torch_normal():
    sample, mean = _latents(2, (2, 3, 7))
    std = _t([0.3, 2.0])
    reference = torch.distributions.Normal(mean, std[:, None, None]).log_prob(sample).mean(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(sample, mean, std), reference, rtol=1e-12, atol=1e-12)


def test_noise_level_zero_is_the_deterministic_step():
    x, v = _latents(3)
    tb, tn = T[:, None, None], T_NEXT[:, None, None]
    noise = torch.randn(x.shape, generator=_gen(4), dtype=D)
    euler = sde_step(x, v, T, T_NEXT, noise_level=0.0, noise=noise)
    assert torch.equal(euler.mean, x + v * (tn - tb))
    ddim = sde_step(x, v, T, T_NEXT, noise_level=0.0, kind="cps", noise=noise)
    x0_hat, eps_hat = x - tb * v, x + (1 - tb) * v
    assert torch.equal(ddim.mean, (1 - tn) * x0_hat + tn * eps_hat)
    # equal to Euler in exact arithmetic: a few roundings, each at most eps times a term below |x| + |v|
    assert ((ddim.mean - (x + v * (tn - tb))).abs() <= 8 * EPS * (x.abs() + v.abs())).all()
    for step in (euler, ddim):
        assert torch.equal(step.sample, step.mean)  # no noise added
        assert torch.equal(step.std, torch.zeros(3, dtype=D))
        assert torch.equal(step.log_prob, torch.zeros(3, dtype=D))  # deterministic: no density


@pytest.mark.parametrize("kind,level", KINDS)
def test_last_step_to_zero_is_deterministic_and_its_masked_gradient_finite(kind, level):
    x, v = _latents(5, (2, 6))
    t, t_next = _t([0.4, 0.4]), _t([0.0, 0.2])  # sample 0 steps to 0, sample 1 is stochastic
    step = sde_step(x, v, t, t_next, noise_level=level, kind=kind, generator=_gen(6))
    assert torch.equal(step.mean[0], x[0] - 0.4 * v[0])  # x0_hat: the Euler step to 0
    assert torch.equal(step.sample[0], step.mean[0]) and step.std[0] == 0 and step.log_prob[0] == 0
    assert step.std[1] > 0 and step.log_prob[1] != 0
    v_grad = v.clone().requires_grad_()
    sde_log_prob(x, v_grad, t, t_next, step.sample, noise_level=level, kind=kind).log_prob.sum().backward()
    assert torch.isfinite(v_grad.grad).all()
    assert torch.equal(v_grad.grad[0], torch.zeros(6, dtype=D)) and v_grad.grad[1].abs().max() > 0


def test_time_and_level_checks():
    x, v = _latents(7, (2, 3))
    # At t = 1 Flow-GRPO's sigma takes 1 - t_next in its denominator: a * sqrt(1 / (1 - 0.9)).
    first = sde_step(x, v, 1.0, 0.9, noise_level=0.7, generator=_gen(8))
    assert torch.isfinite(first.sample).all() and torch.isfinite(first.log_prob).all()
    expected = torch.full((2,), 0.7 * math.sqrt(1 / 0.1) * math.sqrt(0.1), dtype=D)
    torch.testing.assert_close(first.std, expected, rtol=4 * torch.finfo(D).eps, atol=0)
    cps = sde_step(x, v, 1.0, 0.9, noise_level=0.7, kind="cps", generator=_gen(8))  # defined at t = 1
    assert torch.isfinite(cps.sample).all() and torch.isfinite(cps.log_prob).all()
    for t, t_next in ((0.5, 0.5), (0.5, 0.6), (0.5, -0.1), (1.2, 0.5)):
        with pytest.raises(ValueError, match="0 <= t_next < t <= 1"):
            sde_step(x, v, t, t_next, noise_level=0.7, kind="cps")
    with pytest.raises(ValueError, match="eta"):
        sde_step(x, v, 0.5, 0.4, noise_level=1.5, kind="cps")
    with pytest.raises(ValueError, match=">= 0"):
        sde_step(x, v, 0.5, 0.4, noise_level=-0.1)
    with pytest.raises(ValueError, match="unknown SDE kind"):
        sde_step(x, v, 0.5, 0.4, noise_level=0.7, kind="ddpm")
    with pytest.raises(ValueError, match="shape"):
        sde_step(x, v, _t([0.5, 0.5, 0.5]), 0.4, noise_level=0.7)
    with pytest.raises(ValueError, match="noise shape"):
        sde_step(x, v, 0.5, 0.4, noise_level=0.7, noise=torch.zeros(2, 4, dtype=D))


@pytest.mark.parametrize("kind,level", KINDS)
def test_float_times_broadcast_like_per_sample_tensors(kind, level):
    x, v = _latents(9)
    noise = torch.randn(x.shape, generator=_gen(10), dtype=D)
    scalar = sde_step(x, v, 0.6, 0.45, noise_level=level, kind=kind, noise=noise)
    tensor = sde_step(x, v, torch.full((3,), 0.6, dtype=D), torch.full((3,), 0.45, dtype=D), noise_level=level,
                      kind=kind, noise=noise)
    for a, b in zip(scalar, tensor):
        assert torch.equal(a, b)
    one = sde_step(x[1:2], v[1:2], 0.6, 0.45, noise_level=level, kind=kind, noise=noise[1:2])
    assert torch.equal(one.log_prob, scalar.log_prob[1:2])  # per-sample: the batch does not mix


def test_low_precision_inputs_give_float32_outputs():
    x, v = (a.bfloat16() for a in _latents(11))
    step = sde_step(x, v, T.float(), T_NEXT.float(), noise_level=0.7, generator=_gen(12))
    assert all(a.dtype == torch.float32 for a in step)
    mean, _ = step_mean_std(x, v, T, T_NEXT, noise_level=0.7)
    assert mean.dtype == torch.float32


# --- on-policy ratio and the clipped loss ----------------------------------------------------------------

@pytest.mark.parametrize("kind,level", KINDS)
def test_on_policy_ratio_is_one_and_gradient_is_the_policy_gradient(kind, level):
    x, v = _latents(13)
    with torch.no_grad():
        rollout = sde_step(x, v, T, T_NEXT, noise_level=level, kind=kind, generator=_gen(14))
    v_theta = v.clone().requires_grad_()
    again = sde_log_prob(x, v_theta, T, T_NEXT, rollout.sample, noise_level=level, kind=kind)
    assert torch.equal(again.log_prob, rollout.log_prob)  # same computation, bit for bit
    assert torch.equal(again.mean, rollout.mean) and torch.equal(again.std, rollout.std)
    adv = _t([1.5, -0.5, 0.2])
    log_prob = again.log_prob.detach().requires_grad_()
    loss, metrics = grpo(log_prob=log_prob, old_log_prob=rollout.log_prob, advantages=adv, clip_range=1e-4)
    assert metrics["ratio"].item() == 1.0 and metrics["clip_frac"].item() == 0.0
    assert loss.item() == pytest.approx(-adv.mean().item())
    loss.backward()
    assert torch.allclose(log_prob.grad, -adv / 3, rtol=1e-15, atol=0)
    # and the gradient reaches the velocity through the mean
    loss2, _ = grpo(log_prob=again.log_prob, old_log_prob=rollout.log_prob, advantages=adv, clip_range=1e-4)
    loss2.backward()
    assert v_theta.grad.abs().max() > 0


def test_clipping_zeroes_the_gradient_only_on_the_pessimistic_side():
    c = 0.1
    ratio = _t([1.5, 0.5, 0.5, 1.5])
    adv = _t([1.0, 1.0, -1.0, -1.0])
    old = _t([0.3, -1.0, 2.0, 0.0])
    log_prob = (old + torch.log(ratio)).requires_grad_()
    loss, metrics = grpo(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_range=c)
    # max(-A r, -A clip(r)): -1.1, -0.5, max(0.5, 0.9), max(1.5, 1.1)
    assert loss.item() == pytest.approx((-1.1 - 0.5 + 0.9 + 1.5) / 4)
    assert metrics["clip_frac"].item() == 1.0 and metrics["ratio"].item() == pytest.approx(1.0)
    loss.backward()
    # A > 0, r > 1 + c and A < 0, r < 1 - c: clipped, zero gradient; the other two: d(-A r)/dlogp / N = -A r / 4
    assert torch.allclose(log_prob.grad, _t([0.0, -0.5 / 4, 0.0, 1.5 / 4]), rtol=1e-12, atol=0)


def test_kl_term_equals_its_formula_and_vanishes_at_the_reference():
    mean = _t([[1.0, 3.0], [0.0, 0.0]]).requires_grad_()
    ref = _t([[0.0, 1.0], [0.0, 2.0]])
    std = _t([0.5, 1.0])
    # sample 0: ((1 + 4) / 2) / (2 * 0.25) = 5; sample 1: ((0 + 4) / 2) / 2 = 1
    assert torch.allclose(grpo_kl(mean, ref, std), _t([5.0, 1.0]))
    normal = torch.distributions.Normal
    exact = torch.distributions.kl_divergence(normal(mean, std[:, None]), normal(ref, std[:, None])).mean(dim=1)
    assert torch.allclose(grpo_kl(mean, ref, std), exact, rtol=1e-12, atol=0)
    lp = _t([-1.0, -2.0])
    adv = _t([1.0, -1.0])
    loss, metrics = grpo(log_prob=lp, old_log_prob=lp, advantages=adv, clip_range=1e-4, mean=mean, ref_mean=ref,
                         std=std, kl_coef=0.1)
    assert metrics["kl"].item() == pytest.approx(3.0)
    assert loss.item() == pytest.approx(metrics["policy_loss"].item() + 0.1 * 3.0)
    loss.backward()
    # d/dmean of kl_coef * mean_i mean_d (m - r)^2 / (2 s_i^2) = kl_coef (m - r) / (n_d s_i^2 B)
    assert torch.allclose(mean.grad, 0.1 * (mean - ref).detach() / (2 * std[:, None] ** 2 * 2))
    same, m_same = grpo(log_prob=lp, old_log_prob=lp, advantages=adv, clip_range=1e-4, mean=ref, ref_mean=ref,
                        std=std, kl_coef=0.1)
    assert m_same["kl"].item() == 0.0 and torch.equal(same, m_same["policy_loss"])
    none, m_none = grpo(log_prob=lp, old_log_prob=lp, advantages=adv, clip_range=1e-4, mean=mean, std=std)
    assert m_none["kl"].item() == 0.0 and torch.equal(none, m_none["policy_loss"])


def test_loss_argument_checks():
    lp = _t([0.0, 0.0])
    with pytest.raises(ValueError, match="ref_mean"):
        grpo(log_prob=lp, old_log_prob=lp, advantages=lp, clip_range=0.1, kl_coef=0.1)
    with pytest.raises(ValueError, match="mean and std"):
        grpo(log_prob=lp, old_log_prob=lp, advantages=lp, clip_range=0.1, ref_mean=torch.zeros(2, 3, dtype=D))
    with pytest.raises(ValueError, match="std > 0"):
        grpo(log_prob=lp, old_log_prob=lp, advantages=lp, clip_range=0.1, mean=torch.zeros(2, 3, dtype=D),
             ref_mean=torch.zeros(2, 3, dtype=D), std=_t([1.0, 0.0]), kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo(log_prob=lp, old_log_prob=lp, advantages=_t([1.0]), clip_range=0.1)
    with pytest.raises(ValueError, match="clip_range"):
        grpo(log_prob=lp, old_log_prob=lp, advantages=lp, clip_range=0.0)


@pytest.mark.parametrize("kind,level", KINDS)
def test_loss_gradient_wrt_model_parameters_matches_finite_differences(kind, level):
    g = _gen(15)
    b, d = 6, 3
    x = torch.randn(b, d, generator=g, dtype=D)
    w_old = torch.randn(d, d, generator=g, dtype=D)
    w_ref = w_old + 0.3 * torch.randn(d, d, generator=g, dtype=D)
    w = w_old + 0.05 * torch.randn(d, d, generator=g, dtype=D)
    t, t_next = torch.linspace(0.9, 0.3, b, dtype=D), torch.linspace(0.75, 0.15, b, dtype=D)
    adv = torch.randn(b, generator=g, dtype=D)
    clip = 0.02
    rollout = sde_step(x, x @ w_old.T, t, t_next, noise_level=level, kind=kind, generator=g)

    def loss_of(weights):
        new = sde_log_prob(x, x @ weights.T, t, t_next, rollout.sample, noise_level=level, kind=kind)
        ref = sde_log_prob(x, x @ w_ref.T, t, t_next, rollout.sample, noise_level=level, kind=kind)
        loss, _ = grpo(log_prob=new.log_prob, old_log_prob=rollout.log_prob, advantages=adv, clip_range=clip,
                       mean=new.mean, ref_mean=ref.mean, std=new.std, kl_coef=0.04)
        return loss, new.log_prob - rollout.log_prob

    w_grad = w.clone().requires_grad_()
    loss, log_ratio = loss_of(w_grad)
    loss.backward()
    ratio = log_ratio.detach().exp()
    # the case is away from the clip's kinks and has clipped and unclipped samples
    assert ((ratio - (1 - clip)).abs().min() > 1e-3) and ((ratio - (1 + clip)).abs().min() > 1e-3)
    assert ((ratio - 1).abs() > clip).any() and ((ratio - 1).abs() < clip).any()
    h = 1e-6
    fd = torch.zeros_like(w)
    for i in range(d):
        for j in range(d):
            e = torch.zeros_like(w)
            e[i, j] = h
            fd[i, j] = (loss_of(w + e)[0] - loss_of(w - e)[0]) / (2 * h)
    # central differences err by O(h^2) + O(eps / h), both far below h at h = 1e-6
    assert (fd - w_grad.grad).abs().max() <= h * (1 + w_grad.grad.abs().max())
    assert w_grad.grad.abs().max() > 1e-3


# --- marginal preservation, 1-D Gaussian data x0 ~ N(0, s0^2) -------------------------------------------------

S0, N = 0.5, 2_000_000


def _var(t):
    """Marginal variance of x_t = (1 - t) x0 + t eps."""
    return (1 - t) ** 2 * S0 ** 2 + t ** 2


def _exact_velocity_coef(t):
    """E[eps - x0 | x_t] = c x_t: E[eps | x_t] = t x_t / V_t, E[x0 | x_t] = (1 - t) s0^2 x_t / V_t."""
    return (t - (1 - t) * S0 ** 2) / _var(t)


def _five_standard_errors(variance):
    """5 standard errors of the sample variance of N Gaussian draws: 5 V sqrt(2 / (N - 1))."""
    return 5 * variance * math.sqrt(2 / (N - 1))


def _marginal_x(t, seed):
    return math.sqrt(_var(t)) * torch.randn(N, 1, generator=_gen(seed), dtype=D)


@pytest.mark.parametrize("dt", [-0.02, -0.1])
@pytest.mark.parametrize("t", [0.6, 0.25])
def test_flow_grpo_step_preserves_the_marginal_variance(t, dt):
    a = 0.7
    t_next = t + dt
    x = _marginal_x(t, 16)
    c = _exact_velocity_coef(t)
    step = sde_step(x, c * x, t, t_next, noise_level=a, generator=_gen(17))
    # The SDE dx = (v - sigma^2 / 2 * score) dt + sigma dW, score = -x / V_t, is linear: drift k x with
    # k = c + sigma^2 / (2 V_t). One Euler-Maruyama step leaves (1 + k dt)^2 V_t + sigma^2 |dt|; V is quadratic
    # in t, so that is V(t_next) + (k^2 V_t - V''/2) dt^2 exactly, V'' = 2 s0^2 + 2 (the first order matches).
    sigma2 = a ** 2 * t / (1 - t)
    k = c + sigma2 / (2 * _var(t))
    euler_maruyama = (1 + k * dt) ** 2 * _var(t) + sigma2 * -dt
    second_order = (k ** 2 * _var(t) - S0 ** 2 - 1) * dt ** 2
    assert euler_maruyama - _var(t_next) == pytest.approx(second_order, abs=1e-12)
    tol = _five_standard_errors(_var(t_next))
    assert abs(step.sample.var().item() - euler_maruyama) <= tol
    assert abs(step.sample.var().item() - _var(t_next)) <= tol + abs(second_order)
    # control: the same noise without the drift correction (plain Euler + noise) fails the check
    naive = x + c * x * dt + step.std[0].item() * torch.randn(N, 1, generator=_gen(18), dtype=D)
    assert abs(naive.var().item() - euler_maruyama) > tol


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("dt", [-0.02, -0.1])
@pytest.mark.parametrize("t", [0.6, 0.25])
def test_cps_step_with_the_marginal_velocity(t, dt, eta):
    """With the exact marginal velocity, x0_hat = E[x0 | x_t] = x0 - u and eps_hat = eps + (1 - t) u / t, so
    x' = [(1 - t_next) x0 + t_next (cos eps + sin z)] - B u with B = (1 - t_next) - t_next cos (1 - t) / t
    (cos, sin of eta pi / 2). The bracket has the marginal V(t_next) and covariance B Var(u) with u, so
    Var(x') = V(t_next) - B^2 Var(x0 | x_t), Var(x0 | x_t) = s0^2 t^2 / V_t.
    eta = 0 (DDIM): B = -dt / t, the marginal up to O(dt^2). eta > 0: B does not vanish with dt (CPS's std
    t_next sin does not shrink with the step), so the step loses variance however small the step."""
    t_next = t + dt
    x = _marginal_x(t, 19)
    step = sde_step(x, _exact_velocity_coef(t) * x, t, t_next, noise_level=eta, kind="cps", generator=_gen(20))
    b = (1 - t_next) - t_next * math.cos(eta * math.pi / 2) * (1 - t) / t
    shortfall = b ** 2 * S0 ** 2 * t ** 2 / _var(t)
    tol = _five_standard_errors(_var(t_next))
    assert abs(step.sample.var().item() - (_var(t_next) - shortfall)) <= tol
    if eta == 0:
        assert shortfall == pytest.approx(dt ** 2 * S0 ** 2 / _var(t), rel=1e-12)
        assert abs(step.sample.var().item() - _var(t_next)) <= tol + dt ** 2 * S0 ** 2 / _var(t)
    else:
        assert abs(step.sample.var().item() - _var(t_next)) > tol  # a real loss, not sampling noise


def test_cps_with_the_true_noise_gives_the_exact_marginal_for_any_step():
    """The coefficients-preserving property: with x0_hat = x0 and eps_hat = eps exact (the velocity
    eps - x0 of the very draw), x' = (1 - t_next) x0 + t_next (cos eps + sin z) has the marginal at t_next,
    and its noise keeps correlation cos(eta pi / 2) with the old one, however large the step."""
    eta, t, t_next = 0.7, 0.8, 0.3
    g = _gen(20)
    x0 = S0 * torch.randn(N, 1, generator=g, dtype=D)
    eps = torch.randn(N, 1, generator=g, dtype=D)
    x = (1 - t) * x0 + t * eps
    step = sde_step(x, eps - x0, t, t_next, noise_level=eta, kind="cps", generator=g)
    assert abs(step.sample.var().item() - _var(t_next)) <= _five_standard_errors(_var(t_next))
    new_noise = (step.sample - (1 - t_next) * x0) / t_next
    assert abs(new_noise.var().item() - 1) <= _five_standard_errors(1.0)
    # the mean of eps * new_noise estimates rho; Var(eps * new_noise) = 1 + rho^2 for unit Gaussians
    rho = math.cos(eta * math.pi / 2)
    assert abs((new_noise * eps).mean().item() - rho) <= 5 * math.sqrt((1 + rho ** 2) / N)


def _linear_velocity(weight):
    return lambda x, sigma: x @ weight.T * (1 + sigma)


@pytest.mark.parametrize("kind, level", [("flow_grpo", 0.7), ("cps", 0.5)])
def test_a_trajectory_stores_what_the_update_recomputes_bit_for_bit(kind, level):
    """Each stored step's log-probability, recomputed from the stored latents with the same velocity, is the
    same number: the on-policy ratio of every step is exactly 1. The schedule starts at t = 1, as shifted
    schedules do."""
    weight = torch.randn(3, 3, generator=_gen(30), dtype=torch.float32) * 0.3
    velocity = _linear_velocity(weight)
    x = torch.randn(4, 5, 3, generator=_gen(31))
    sigmas = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.0])
    run = sde_trajectory(velocity, x, sigmas, noise_level=level, kind=kind, generator=_gen(32))
    assert run.latents.shape == (5, 4, 5, 3) and run.log_probs.shape == (4, 4)
    assert torch.equal(run.latents[0], x) and bool(torch.isfinite(run.latents).all())
    for i in range(4):
        again = sde_log_prob(run.latents[i], velocity(run.latents[i], sigmas[i]), sigmas[i], sigmas[i + 1],
                             run.latents[i + 1], noise_level=level, kind=kind)
        assert torch.equal(again.log_prob, run.log_probs[i])
    assert bool((run.log_probs[:3] != 0).all()) and bool((run.log_probs[3] == 0).all())  # the last step: deterministic
    # The same generator seed, the same trajectory; another seed, another one.
    assert torch.equal(sde_trajectory(velocity, x, sigmas, noise_level=level, kind=kind, generator=_gen(32)).latents,
                       run.latents)
    assert not torch.equal(sde_trajectory(velocity, x, sigmas, noise_level=level, kind=kind, generator=_gen(33)).latents,
                           run.latents)


def test_a_trajectory_at_noise_level_zero_is_the_euler_sampler_bit_for_bit():
    """sigma = 0 makes the Flow-GRPO mean x * 1 + (v * 1) * dt, the Euler update's numbers exactly."""
    from editr1.sampling.solvers import euler

    velocity = _linear_velocity(torch.randn(3, 3, generator=_gen(34)) * 0.3)
    x = torch.randn(4, 5, 3, generator=_gen(35))
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])
    run = sde_trajectory(velocity, x, sigmas, noise_level=0.0, generator=_gen(36))
    assert torch.equal(run.latents[-1], euler(velocity, x, sigmas))
    assert bool((run.log_probs == 0).all())


@pytest.mark.parametrize("kind, level", [("flow_grpo", 0.7), ("cps", 0.5)])
def test_with_noise_drawn_per_row_a_rows_trajectory_does_not_depend_on_its_batch(kind, level):
    """Pre-drawn noise (steps, rows, ...): sampling rows 0-1 and 2-3 apart gives the rows of sampling all four
    at once, bit for bit (the velocity here acts on each element alone, so the batch changes no rounding)."""
    velocity = lambda x, sigma: x * (0.5 - sigma) + 0.25  # noqa: E731
    x = torch.randn(4, 5, 3, generator=_gen(40))
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    noise = torch.randn(4, 4, 5, 3, generator=_gen(41))
    whole = sde_trajectory(velocity, x, sigmas, noise_level=level, kind=kind, noise=noise)
    halves = [sde_trajectory(velocity, x[rows], sigmas, noise_level=level, kind=kind, noise=noise[:, rows])
              for rows in (slice(0, 2), slice(2, 4))]
    assert torch.equal(torch.cat([h.latents for h in halves], dim=1), whole.latents)
    assert torch.equal(torch.cat([h.log_probs for h in halves], dim=1), whole.log_probs)
    with pytest.raises(ValueError, match="noise must have shape"):
        sde_trajectory(velocity, x, sigmas, noise_level=level, kind=kind, noise=noise[:3])
