"""What "trains the same way" means when two runs sum floats in different orders (1 vs 2 processes, DDP vs
FSDP, another thread count or CPU kernel), with tolerances from the numerics, not from one machine.

Such runs are equal in exact arithmetic, so what they compare must be continuous in the rounding:
- the reward is `toy_plugin:Brightness` (1-Lipschitz in the mean pixel), never a thresholded score, which one
  flipped pixel moves;
- AdamW's step for a new gradient is g/(|g|+eps): at torch's eps (1e-8) a gradient that is float noise takes a
  full-size step. With `optim.eps` = EPS the step is Lipschitz in the gradient (constant at most 2/eps), so
  the weights differ by at most 2/eps times the gradients' difference, per update, times the learning rate.
Bitwise claims stay for runs that compute the same thing in the same order (same process count and shapes).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from editr1.trainer.metrics_log import read_metrics

#: float32's unit roundoff.
U32 = 2.0**-24
#: bfloat16's unit roundoff.
UBF16 = 2.0**-8
#: A gradient element of these tiny models sums at most ~10^4 float32 products (rows x tokens x features);
#: summed in another order it moves by at most n*u of the sum of their magnitudes, which the tensor's
#: largest gradient stands in for.
GRADIENT_RTOL = 1e4 * U32
#: Edits are a few float32 transformer calls (~10^3 roundings deep); their mean pixel, and so the brightness
#: reward, moves by at most ~10^3 * u.
REWARD_ATOL = 1e3 * U32
#: The same in bfloat16: an edit's pixels move by a few bf16 roundings.
REWARD_ATOL_BF16 = 4 * UBF16
#: AdamW's epsilon for the comparisons: of the order of the largest gradients, so Adam's step stays Lipschitz.
EPS = 1e-3
#: A continuous reward and a Lipschitz optimizer step: the overrides an equivalence run adds.
CONTINUOUS = ("reward.name=toy_plugin:Brightness", f"optim.eps={EPS}")


def tensors(run, step, name):
    return load_file(run / "checkpoints" / f"step_{step:06d}" / f"{name}.safetensors")


def gradients(run, step, beta1=0.9):
    """The first update's gradients, read back from Adam's first moment (exp_avg = (1 - beta1) g after one
    step; a multiplication, exact to one rounding)."""
    return {key[: -len(".exp_avg")]: value / (1 - beta1)
            for key, value in tensors(run, step, "optimizer").items() if key.endswith(".exp_avg")}


def assert_same_gradients(a, b):
    """Every gradient within GRADIENT_RTOL of its tensor's largest element."""
    assert a.keys() == b.keys()
    for key, value in b.items():
        scale = float(value.abs().max())
        difference = float((a[key].float() - value.float()).abs().max())
        assert difference <= GRADIENT_RTOL * scale, (key, difference, scale)


def weight_tolerance(run, updates, lr, eps=EPS):
    """How far `updates` AdamW steps may move a weight apart when the gradients differ by GRADIENT_RTOL of the
    largest one (`run`'s first update gives its size): updates * lr * (2/eps) * GRADIENT_RTOL * max|g|. Checked
    to be well under one step (lr), so the comparison still tells a wrong update from float noise."""
    largest = max(float(g.abs().max()) for g in gradients(run, 1).values())
    tolerance = updates * lr * 2 / eps * GRADIENT_RTOL * largest
    assert tolerance < 0.25 * lr, f"gradients up to {largest:.3g} make the tolerance {tolerance:.3g} useless; raise EPS"
    return tolerance


def assert_close(a, b, atol):
    assert a.keys() == b.keys()
    for key, value in b.items():
        difference = float((a[key].float() - value.float()).abs().max())
        assert difference <= atol, (key, difference, atol)


def assert_equal(a, b):
    assert a.keys() == b.keys()
    for key, value in b.items():
        assert torch.equal(a[key], value), key


def rows(run, key):
    return [(row["step"], row[key]) for row in read_metrics(run) if key in row]


def assert_same_first_rollouts(a, b):
    """The first iteration's rollouts come from the same weights: the same edits, so rewards within
    REWARD_ATOL (the same iterations logged). Later rollouts come from weights that float noise, amplified
    through the updates, has moved apart: `weight_tolerance` bounds those."""
    a_rows, b_rows = rows(a, "reward_mean"), rows(b, "reward_mean")
    assert [step for step, _ in a_rows] == [step for step, _ in b_rows]
    for key in ("reward_mean", "reward_std"):
        assert rows(a, key)[0][1] == pytest.approx(rows(b, key)[0][1], abs=REWARD_ATOL), key


def assert_same_rows(a, b, key, atol):
    """The same steps logged, their values within `atol`."""
    a_rows, b_rows = rows(a, key), rows(b, key)
    assert [step for step, _ in a_rows] == [step for step, _ in b_rows]
    assert [value for _, value in a_rows] == pytest.approx([value for _, value in b_rows], abs=atol)
