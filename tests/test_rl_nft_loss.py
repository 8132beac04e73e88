import dataclasses

import pytest
import torch

from editr1.rl.nft_loss import NFTLoss, nft_loss

D = torch.float64


def _t(xs):
    return torch.tensor(xs, dtype=D)


def _hand_case():
    """One sample, two dims: x0 = 0, x_t = 1, t = 0.5."""
    return _t([[0.0, 0.0]]), _t([[1.0, 1.0]]), _t([0.5])


def test_r1_beta1_equals_adaptive_flow_matching_value_and_grad():
    x0, xt, t = _hand_case()
    v = _t([[0.0, 2.0]]).requires_grad_()
    v_old = _t([[7.0, -3.0]])  # irrelevant when beta = 1 and r = 1
    out = nft_loss(v, v_old, xt, x0, t, r=_t([1.0]), beta=1.0, adv_clip=5.0)
    # x0_pos = x_t - t v = [1, 0]: mse 0.5, mae 0.5 -> L_pos = 1, policy = 5 * 1 / 1
    assert out.policy.item() == pytest.approx(5.0)
    assert out.pos.item() == pytest.approx(1.0)
    out.total.backward()
    # d mse / dv = -t * 2 (x0_pos - x0) / n = [-0.5, 0]; / sg(mae) = 0.5; * c = 5
    # (without the stop-gradient the answer would be [-2.5, 0])
    assert torch.allclose(v.grad, _t([[-5.0, 0.0]]))
    # descent direction moves x0_pos = x_t - t v toward x0
    with torch.no_grad():
        moved = xt - t[:, None] * (v - 0.01 * v.grad)
    assert (moved - x0).abs().sum() < (xt - t[:, None] * v - x0).abs().sum()


def test_r1_small_beta_at_step0_is_scaled_flow_matching():
    x0, xt, t = _hand_case()
    v = _t([[0.0, 2.0]]).requires_grad_()
    out = nft_loss(v, v.detach().clone(), xt, x0, t, r=_t([1.0]), beta=0.1, adv_clip=5.0)
    assert out.policy.item() == pytest.approx(5.0 * 1.0 / 0.1)
    out.policy.backward()
    # beta in v_pos cancels the 1/beta: gradient is c * grad of the adaptive FM loss
    assert torch.allclose(v.grad, _t([[-5.0, 0.0]]))


def test_r0_negative_branch_hand_computed():
    x0, xt, t = _hand_case()
    v = _t([[0.0, 2.0]]).requires_grad_()
    v_old = _t([[0.0, 0.0]])
    out = nft_loss(v, v_old, xt, x0, t, r=_t([0.0]), beta=1.0, adv_clip=5.0)
    # v_neg = 2 v_old - v = [0, -2]; x0_neg = [1, 2]: mse 2.5, mae 1.5 -> L_neg = 5/3
    assert out.neg.item() == pytest.approx(5.0 / 3.0)
    assert out.policy.item() == pytest.approx(25.0 / 3.0)
    out.policy.backward()
    # d x0_neg / dv = +t beta; 2 diff / n = [1, 2]; * 0.5 / 1.5 * 5
    assert torch.allclose(v.grad, _t([[5.0 / 3.0, 10.0 / 3.0]]))


def test_mixed_r_and_weights_mean_over_batch():
    x0 = _t([[0.0, 0.0], [0.0, 0.0]])
    xt = _t([[1.0, 1.0], [1.0, 1.0]])
    t = _t([0.5, 0.5])
    v = _t([[0.0, 2.0], [0.0, 2.0]])
    v_old = torch.zeros_like(v)
    out = nft_loss(v, v_old, xt, x0, t, r=_t([0.25, 0.5]), beta=1.0, adv_clip=5.0, weight=_t([1.0, 0.0]))
    # sample 0: 0.25 * 1 + 0.75 * 5/3 = 1.5; sample 1 weight 0; mean over B = 2
    assert out.policy.item() == pytest.approx(5.0 * 1.5 / 2)


def test_step0_implicit_policies_equal_v_theta():
    torch.manual_seed(0)
    v = torch.randn(3, 4, 5, dtype=D)
    x0 = torch.randn(3, 4, 5, dtype=D)
    xt = torch.randn(3, 4, 5, dtype=D)
    t = _t([0.2, 0.5, 0.9])
    diff = (xt - t[:, None, None] * v - x0).flatten(1)
    fm = ((diff ** 2).mean(1) / diff.abs().mean(1)).mean()
    for beta in (1.0, 0.1):
        out = nft_loss(v, v.clone(), xt, x0, t, r=_t([0.1, 0.5, 0.9]), beta=beta)
        assert torch.allclose(out.pos, fm) and torch.allclose(out.neg, fm)
        # L_pos == L_neg, so the policy loss is independent of r
        assert torch.allclose(out.policy, 5.0 * fm / beta)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_grad_vanishes_at_old_policy_with_r_half(beta):
    torch.manual_seed(1)
    v_old = torch.randn(3, 4, 5, dtype=D)
    x0 = torch.randn(3, 4, 5, dtype=D)
    xt = torch.randn(3, 4, 5, dtype=D)
    t = _t([0.3, 0.6, 1.0])
    v = v_old.clone().requires_grad_()
    nft_loss(v, v_old, xt, x0, t, r=torch.full((3,), 0.5, dtype=D), beta=beta).policy.backward()
    assert v.grad.abs().max().item() < 1e-12
    # control: a non-neutral r does produce a gradient
    v2 = v_old.clone().requires_grad_()
    nft_loss(v2, v_old, xt, x0, t, r=_t([0.9, 0.1, 0.7]), beta=beta).policy.backward()
    assert v2.grad.abs().max().item() > 1e-3


def test_weight_zero_contributes_nothing():
    torch.manual_seed(2)
    v = torch.randn(2, 6, dtype=D, requires_grad=True)
    v_old, x0, xt = (torch.randn(2, 6, dtype=D) for _ in range(3))
    t, r = _t([0.4, 0.8]), _t([0.9, 0.2])
    out = nft_loss(v, v_old, xt, x0, t, r, beta=1.0, weight=_t([1.0, 0.0]))
    out.policy.backward()
    assert torch.equal(v.grad[1], torch.zeros(6, dtype=D))
    single = nft_loss(v[:1], v_old[:1], xt[:1], x0[:1], t[:1], r[:1], beta=1.0)
    assert torch.allclose(out.policy, single.policy / 2)  # mean over all B samples
    # changing the filtered sample changes nothing
    out2 = nft_loss(v.detach() * torch.tensor([[1.0], [9.0]], dtype=D), v_old, xt, x0, t, r, beta=1.0,
                    weight=_t([1.0, 0.0]))
    assert torch.allclose(out.policy, out2.policy)


def test_microbatch_accumulation_sums_to_full_batch():
    torch.manual_seed(3)
    v, v_old, x0, xt = (torch.randn(5, 3, 2, dtype=D) for _ in range(4))
    t, r = torch.rand(5, dtype=D), torch.rand(5, dtype=D)
    w = _t([1.0, 0.0, 1.0, 1.0, 0.0])
    full = nft_loss(v, v_old, xt, x0, t, r, beta=0.5, weight=w).policy
    parts = [slice(0, 2), slice(2, 5)]
    acc = sum(nft_loss(v[s], v_old[s], xt[s], x0[s], t[s], r[s], beta=0.5, weight=w[s]).policy
              * ((s.stop - s.start) / 5) for s in parts)
    assert torch.allclose(full, acc)


def test_t_broadcasts_per_sample():
    torch.manual_seed(4)
    v, v_old, x0, xt = (torch.randn(2, 3, 4, dtype=D) for _ in range(4))
    t, r = _t([0.1, 0.9]), _t([0.7, 0.3])
    both = nft_loss(v, v_old, xt, x0, t, r, beta=1.0).policy
    each = [nft_loss(v[i:i + 1], v_old[i:i + 1], xt[i:i + 1], x0[i:i + 1], t[i:i + 1], r[i:i + 1], beta=1.0).policy
            for i in range(2)]
    assert torch.allclose(both, (each[0] + each[1]) / 2)


def test_denominator_clamp():
    x0 = torch.zeros(1, 2, dtype=D)
    xt = torch.full((1, 2), 1e-7, dtype=D)
    out = nft_loss(torch.zeros(1, 2, dtype=D), torch.zeros(1, 2, dtype=D), xt, x0, _t([0.5]), _t([1.0]), beta=1.0,
                   adv_clip=1.0)
    # mse 1e-14, mae 1e-7 clamped to 1e-5
    assert out.policy.item() == pytest.approx(1e-9)
    exact = nft_loss(torch.zeros(1, 2, dtype=D), torch.zeros(1, 2, dtype=D), x0, x0, _t([0.5]), _t([1.0]), beta=1.0)
    assert exact.policy.item() == 0.0


def test_kl_term():
    x0, xt, t = _hand_case()
    v = _t([[1.0, 2.0]]).requires_grad_()
    v_ref = _t([[0.0, 0.0]]).requires_grad_()
    out = nft_loss(v, v.detach(), xt, x0, t, _t([0.5]), beta=1.0, v_ref=v_ref, kl_coef=0.5)
    assert out.kl.item() == pytest.approx(0.5 * (1.0 + 4.0) / 2)
    assert torch.allclose(out.total, out.policy + out.kl)
    out.kl.backward()
    assert torch.allclose(v.grad, _t([[0.5, 1.0]]))  # kl_coef * 2 (v - v_ref) / n
    assert v_ref.grad is None  # the reference is never trained
    for kw in ({}, {"v_ref": v_ref, "kl_coef": 0.0}):
        o = nft_loss(v, v.detach(), xt, x0, t, _t([0.5]), beta=1.0, **kw)
        assert torch.is_tensor(o.kl) and o.kl.item() == 0.0
        assert torch.equal(o.total, o.policy)


def test_old_policy_gets_no_gradient_and_logging_detached():
    x0, xt, t = _hand_case()
    v = _t([[0.0, 2.0]]).requires_grad_()
    v_old = _t([[1.0, 1.0]]).requires_grad_()
    out = nft_loss(v, v_old, xt, x0, t, _t([0.8]), beta=0.5)
    out.total.backward()
    assert v_old.grad is None
    assert not out.pos.requires_grad and not out.neg.requires_grad
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.total = out.kl


def test_low_precision_inputs():
    torch.manual_seed(5)
    v = torch.randn(2, 8).bfloat16().requires_grad_()
    others = [torch.randn(2, 8).bfloat16() for _ in range(3)]
    out = nft_loss(v, *others, t=torch.tensor([0.3, 0.7]), r=torch.tensor([0.6, 0.4]), beta=1.0)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert v.grad.dtype == torch.bfloat16


def test_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        nft_loss(x, torch.zeros(2, 4), x, x, torch.zeros(2), torch.zeros(2), beta=1.0)
    with pytest.raises(ValueError):
        nft_loss(x, x, x, x, torch.zeros(3), torch.zeros(2), beta=1.0)
    with pytest.raises(ValueError):
        nft_loss(x, x, x, x, torch.zeros(2), torch.zeros(2), beta=1.0, weight=torch.zeros(2, 1))
    with pytest.raises(ValueError):
        nft_loss(x, x, x, x, torch.zeros(2), torch.zeros(2), beta=0.0)
    assert isinstance(nft_loss(x, x, x, x, torch.zeros(2), torch.zeros(2), beta=1.0), NFTLoss)
