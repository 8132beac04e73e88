import json

import pytest
import torch

from editr1.data.order import take_indices
from editr1.errors import EditR1Error
from editr1.trainer.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def test_order_is_a_permutation_per_epoch_and_resumable():
    first, position = take_indices(10, seed=3, position=0, count=10)
    assert sorted(first) == list(range(10)) and position == 10
    second, _ = take_indices(10, seed=3, position=10, count=10)
    assert sorted(second) == list(range(10)) and second != first
    # Taking 4 then 6 equals taking 10 at once.
    a, p = take_indices(10, 3, 0, 4)
    b, _ = take_indices(10, 3, p, 6)
    assert a + b == first


def test_order_skips_banned_and_fails_when_everything_is_banned():
    chosen, _ = take_indices(5, 0, 0, 8, skip={1, 2})
    assert 1 not in chosen and 2 not in chosen and len(chosen) == 8
    with pytest.raises(EditR1Error, match="banned"):
        take_indices(3, 0, 0, 1, skip={0, 1, 2})


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    torch.manual_seed(5)
    folder = save_checkpoint(tmp_path, 7, model.state_dict(), {"w": torch.ones(2)}, optimizer, {"position": 3, "banned": ["a"]})
    expected_draw = torch.rand(3)

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert latest_checkpoint(tmp_path) == folder
    trained, old, state = load_checkpoint(folder, fresh_optimizer)
    assert torch.equal(torch.rand(3), expected_draw)
    assert state == {"step": 7, "position": 3, "banned": ["a"]}
    assert torch.equal(old["w"], torch.ones(2)) and torch.equal(trained["weight"], model.weight)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    for index in saved["state"]:
        for key, value in saved["state"][index].items():
            assert torch.equal(loaded["state"][index][key], value)
    assert json.loads((folder / "optimizer.json").read_text())["param_groups"][0]["lr"] == 1e-2


def test_broken_latest_pointer_is_a_clear_error(tmp_path):
    (tmp_path / "latest").write_text("step_000009")
    with pytest.raises(EditR1Error, match="step_000009"):
        latest_checkpoint(tmp_path)
