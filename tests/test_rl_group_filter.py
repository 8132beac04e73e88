import pytest
import torch

from editr1.rl.group_filter import groups_to_ban, low_variance_keep_mask
from editr1.rl.group_stats import group_stats64


def _t(xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_group_stats_population_std_and_sorted_ids():
    r = _t([0.5, 1.0, 0.0, 0.0, 0.2, 0.6])
    g = torch.tensor([9, 9, 2, 2, 4, 4])
    ids, means, stds, _ = group_stats64(r, g, None)
    assert ids.tolist() == [2, 4, 9]
    assert torch.allclose(means, _t([0.0, 0.4, 0.75]))
    assert torch.allclose(stds, _t([0.0, 0.2, 0.25]))  # population, not unbiased


def test_group_stats_ignores_invalid():
    r = _t([0.5, 1.0, float("nan"), 0.3])
    g = torch.tensor([1, 1, 1, 2])
    valid = torch.tensor([True, True, False, False])
    ids, means, stds, _ = group_stats64(r, g, valid)
    assert ids.tolist() == [1]  # group 2 has no valid sample
    assert torch.allclose(means, _t([0.75])) and torch.allclose(stds, _t([0.25]))


def test_paper_rule_drops_high_mean_low_std():
    r = _t([1.0, 1.0, 0.95, 0.95, 0.2, 0.8, 0.5, 0.5])
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    keep = low_variance_keep_mask(r, g, rule="paper")
    # g0, g1: mean > 0.9 and std 0 -> dropped; g2 spread -> kept; g3 low mean, std 0 -> kept (paper)
    assert keep.tolist() == [False, False, False, False, True, True, True, True]


def test_strict_rule():
    r = _t([1.0, 1.0, 0.2, 0.8, 0.5, 0.5, 0.9, 1.0])
    g = torch.tensor([0, 0, 2, 2, 3, 3, 4, 4])
    keep = low_variance_keep_mask(r, g, rule="strict")
    # g0 high/flat -> drop; g2 spread and low mean -> keep; g3 flat -> drop; g4 mean 0.95 -> drop
    assert keep.tolist() == [False, False, True, True, False, False, False, False]


def test_boundaries_exact():
    # r = [0.5, 1.0]: mean == 0.75 and std == 0.25 exactly (binary-exact numbers); each case puts
    # one statistic exactly on its threshold and the other far on the deciding side
    r = _t([0.5, 1.0])
    g = torch.tensor([0, 0])

    def keep(rule, mt, st):
        return low_variance_keep_mask(r, g, rule=rule, mean_threshold=mt, std_threshold=st).tolist()

    # paper drops on mean > mt and std < st, both strict
    assert keep("paper", 0.75, 0.5) == [True, True]    # mean == mt, std clearly low
    assert keep("paper", 0.5, 0.25) == [True, True]    # std == st, mean clearly high
    assert keep("paper", 0.74, 0.5) == [False, False]  # just past both
    assert keep("paper", 0.5, 0.26) == [False, False]
    # strict keeps on std > st and mean < mt, both strict
    assert keep("strict", 0.9, 0.25) == [False, False]  # std == st, mean clearly low
    assert keep("strict", 0.75, 0.1) == [False, False]  # mean == mt, std clearly high
    assert keep("strict", 0.9, 0.24) == [True, True]
    assert keep("strict", 0.76, 0.1) == [True, True]
    # ban uses the paper condition: on-threshold groups are not banned
    assert groups_to_ban(r, g, 0.75, 0.5) == [] and groups_to_ban(r, g, 0.5, 0.25) == []
    assert groups_to_ban(r, g, 0.74, 0.26) == [0]


def test_default_thresholds_near_boundary():
    g = torch.tensor([0, 0, 0, 0])
    # mean 0.93, std 0.03: paper drops, strict drops
    r = _t([0.90, 0.96, 0.90, 0.96])
    assert not low_variance_keep_mask(r, g, rule="paper").any()
    assert not low_variance_keep_mask(r, g, rule="strict").any()
    # mean 0.93, std 0.07: paper keeps (std not < 0.05), strict drops (mean not < 0.9)
    r = _t([0.86, 1.0, 0.86, 1.0])
    assert low_variance_keep_mask(r, g, rule="paper").all()
    assert not low_variance_keep_mask(r, g, rule="strict").any()
    # mean 0.5, std 0.03: paper keeps (mean not > 0.9), strict drops (std not > 0.05)
    r = _t([0.47, 0.53, 0.47, 0.53])
    assert low_variance_keep_mask(r, g, rule="paper").all()
    assert not low_variance_keep_mask(r, g, rule="strict").any()


def test_rule_none_and_invalid_never_kept():
    r = _t([1.0, 1.0, float("nan")])
    g = torch.tensor([0, 0, 0])
    valid = torch.tensor([True, True, False])
    assert low_variance_keep_mask(r, g, rule="none", valid=valid).tolist() == [True, True, False]
    assert low_variance_keep_mask(r[:2], g[:2], rule="none").tolist() == [True, True]


def test_invalid_sample_does_not_change_group_stats_for_filter():
    # without masking, the 0.0 would give the group a large std and keep it under "paper"
    r = _t([1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0])
    valid = torch.tensor([True, True, False])
    assert low_variance_keep_mask(r, g, rule="paper", valid=valid).tolist() == [False, False, False]
    assert low_variance_keep_mask(r, g, rule="paper").tolist() == [True, True, True]


def test_ids_not_text_define_groups():
    # two "same instruction" pairs with distinct ids: one saturated, one spread
    r = _t([1.0, 1.0, 0.2, 0.9])
    g = torch.tensor([11, 11, 12, 12])
    assert low_variance_keep_mask(r, g).tolist() == [False, False, True, True]
    assert low_variance_keep_mask(r, torch.tensor([11, 11, 11, 11])).tolist() == [True] * 4


def test_groups_to_ban():
    r = _t([1.0, 1.0, 0.2, 0.9, 0.95, 0.95, 0.5, 0.5])
    g = torch.tensor([30, 30, 12, 12, 4, 4, 8, 8])
    assert groups_to_ban(r, g, 0.9, 0.05) == [4, 30]
    assert groups_to_ban(r, g, 0.99, 0.05) == [30]
    valid = torch.tensor([True, True, True, True, False, False, True, True])
    assert groups_to_ban(r, g, 0.9, 0.05, valid=valid) == [30]
    assert all(isinstance(i, int) for i in groups_to_ban(r, g, 0.9, 0.05))


def test_errors():
    r = _t([0.0, 1.0])
    with pytest.raises(ValueError, match="rule"):
        low_variance_keep_mask(r, torch.tensor([0, 0]), rule="loose")
    with pytest.raises(ValueError, match="shape"):
        group_stats64(r, torch.tensor([0]), None)
    with pytest.raises(ValueError):
        group_stats64(r, torch.tensor([0.0, 1.0]), None)
