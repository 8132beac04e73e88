import math

import pytest
import torch

from editr1.rl.advantages import group_advantages, optimality_probability


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_global_std_hand_computed():
    # group 0: [1, 3] mean 2; group 1: [10, 14] mean 12; all rewards mean 7,
    # population var = (36 + 16 + 9 + 49) / 4 = 27.5
    r = _t([1.0, 3.0, 10.0, 14.0])
    g = torch.tensor([0, 0, 1, 1])
    a = group_advantages(r, g, eps=0.0)
    std = math.sqrt(27.5)
    assert torch.allclose(a, _t([-1.0, 1.0, -2.0, 2.0]) / std)


def test_group_mean_uses_only_own_group():
    # interleaved ids: mean of id 7 is (0 + 4) / 2 = 2, never mixed with id 3's samples
    r = _t([0.0, 100.0, 4.0, 102.0])
    g = torch.tensor([7, 3, 7, 3])
    a = group_advantages(r, g, std_mode="group", eps=0.0)
    assert torch.allclose(a, _t([-1.0, -1.0, 1.0, 1.0]))


def test_group_std_mode_differs_from_global():
    r = _t([0.0, 2.0, 0.0, 20.0])
    g = torch.tensor([0, 0, 1, 1])
    a_grp = group_advantages(r, g, std_mode="group", eps=0.0)
    assert torch.allclose(a_grp, _t([-1.0, 1.0, -1.0, 1.0]))  # stds 1 and 10
    a_glob = group_advantages(r, g, std_mode="global", eps=0.0)
    std = math.sqrt(((0 - 5.5) ** 2 * 2 + (2 - 5.5) ** 2 + (20 - 5.5) ** 2) / 4)
    assert torch.allclose(a_glob, _t([-1.0, 1.0, -10.0, 10.0]) / std)


def test_eps_in_denominator():
    r = _t([0.0, 2.0])
    g = torch.tensor([0, 0])
    a = group_advantages(r, g, eps=1e-4)
    assert torch.allclose(a, _t([-1.0, 1.0]) / (1.0 + 1e-4))


def test_invalid_samples_excluded_and_zero():
    # sample 2 (NaN, unscored) must not shift group 0's mean nor the global std
    r = _t([1.0, 3.0, float("nan"), 10.0, 14.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    valid = torch.tensor([True, True, False, True, True])
    a = group_advantages(r, g, valid=valid, eps=0.0)
    expect = _t([-1.0, 1.0, 0.0, -2.0, 2.0]) / math.sqrt(27.5)
    assert torch.allclose(a, expect)
    assert a[2].item() == 0.0
    a_grp = group_advantages(r, g, valid=valid, std_mode="group", eps=0.0)
    assert torch.allclose(a_grp, _t([-1.0, 1.0, 0.0, -1.0, 1.0]))


def test_invalid_finite_reward_does_not_enter_stats():
    r = _t([1.0, 3.0, 1000.0])
    g = torch.tensor([0, 0, 0])
    valid = torch.tensor([True, True, False])
    a = group_advantages(r, g, valid=valid, eps=0.0)
    assert torch.allclose(a, _t([-1.0, 1.0, 0.0]))


def test_all_invalid_gives_zeros():
    r = _t([float("nan"), float("nan")])
    a = group_advantages(r, torch.tensor([0, 0]), valid=torch.tensor([False, False]))
    assert torch.equal(a, torch.zeros(2, dtype=torch.float64))


def test_same_text_different_ids_are_separate_groups():
    # two samples share an instruction text but have different pair ids: they are two groups
    texts = ["make it red", "make it red", "make it red", "make it red"]
    ids = torch.tensor([0, 0, 1, 1])
    assert texts[0] == texts[2]
    r = _t([0.0, 2.0, 10.0, 12.0])
    a = group_advantages(r, ids, std_mode="group", eps=0.0)
    assert torch.allclose(a, _t([-1.0, 1.0, -1.0, 1.0]))
    # if they were one group (same id), the result would be different
    a_one = group_advantages(r, torch.zeros(4, dtype=torch.long), std_mode="group", eps=0.0)
    assert not torch.allclose(a, a_one)


def test_dtype_and_float32():
    r = torch.tensor([0.0, 1.0], dtype=torch.float32)
    a = group_advantages(r, torch.tensor([5, 5]))
    assert a.dtype == torch.float32
    assert torch.allclose(a, torch.tensor([-0.5, 0.5]) / (0.5 + 1e-4))


def test_errors():
    r = _t([0.0, 1.0])
    with pytest.raises(ValueError, match="std_mode"):
        group_advantages(r, torch.tensor([0, 0]), std_mode="batch")
    with pytest.raises(ValueError, match="shape"):
        group_advantages(r, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="shape"):
        group_advantages(r, torch.tensor([0, 0]), valid=torch.tensor([True]))
    with pytest.raises(ValueError):
        group_advantages(_t([0.0, float("nan")]), torch.tensor([0, 0]))


def test_optimality_probability_linear_region():
    a = _t([-5.0, -2.0, 0.0, 1.0, 3.0, 5.0])
    r = optimality_probability(a, clip=5.0)
    assert torch.allclose(r, 0.5 + a / 10.0)
    assert torch.allclose(r, _t([0.0, 0.3, 0.5, 0.6, 0.8, 1.0]))


def test_optimality_probability_clipping():
    r = optimality_probability(_t([-100.0, -5.5, 7.0, float("inf")]), clip=5.0)
    assert torch.equal(r, _t([0.0, 0.0, 1.0, 1.0]))
    r2 = optimality_probability(_t([1.0, 3.0]), clip=2.0)
    assert torch.allclose(r2, _t([0.75, 1.0]))
    with pytest.raises(ValueError):
        optimality_probability(_t([0.0]), clip=0.0)
