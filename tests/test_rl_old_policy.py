import pytest
import torch

from editr1.rl.old_policy import old_policy_decay, soft_update_


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.001), (75, 0.075), (76, 0.076), (499, 0.499),
                                           (500, 0.5), (10 ** 6, 0.5)])
def test_linear(step, expected):
    assert old_policy_decay(step, "linear") == pytest.approx(expected)
    assert old_policy_decay(step) == pytest.approx(expected)  # default schedule


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.0), (74, 0.0), (75, 0.0), (76, 0.0075),
                                           (100, 0.1875), (208, 0.9975), (209, 0.999), (10 ** 6, 0.999)])
def test_delayed(step, expected):
    assert old_policy_decay(step, "delayed") == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.0), (1, 0.01), (49, 0.49), (50, 0.5), (75, 0.5)])
def test_linear_fast(step, expected):
    assert old_policy_decay(step, "linear_fast") == pytest.approx(expected)


def test_on_policy_and_errors():
    assert all(old_policy_decay(s, "on_policy") == 0.0 for s in (0, 1, 75, 10 ** 6))
    with pytest.raises(ValueError, match="linear.*delayed"):
        old_policy_decay(3, "cosine")
    with pytest.raises(ValueError):
        old_policy_decay(-1)


def test_soft_update_math():
    tgt = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    src = [torch.tensor([3.0, 6.0]), torch.tensor([[0.0]])]
    soft_update_(tgt, src, 0.25)
    assert torch.allclose(tgt[0], torch.tensor([2.5, 5.0]))  # 0.25*1 + 0.75*3, 0.25*2 + 0.75*6
    assert torch.allclose(tgt[1], torch.tensor([[1.0]]))
    assert torch.equal(src[0], torch.tensor([3.0, 6.0]))  # source untouched


def test_soft_update_extremes_and_parameters():
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    soft_update_(a.parameters(), b.parameters(), 1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
    soft_update_(a.parameters(), b.parameters(), 0.0)  # generators and requires_grad params work
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.weight.grad is None


def test_soft_update_errors():
    with pytest.raises(ValueError):
        soft_update_([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], 0.5)
    with pytest.raises(ValueError):
        soft_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError):
        soft_update_([torch.zeros(2)], [torch.zeros(2)], 1.5)
