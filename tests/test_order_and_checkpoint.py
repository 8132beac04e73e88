import json

import pytest
import torch

from editr1.data.order import take_indices
from editr1.errors import EditR1Error
from editr1.fileio import default_file_mode
from editr1.trainer.checkpoint import (
    newest_intact_checkpoint,
    read_checkpoint,
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
    checkpoint, skipped = newest_intact_checkpoint(tmp_path)
    assert checkpoint.folder == folder and skipped == []
    checkpoint.restore(fresh_optimizer)
    assert torch.equal(torch.rand(3), expected_draw)
    assert checkpoint.state == {"step": 7, "position": 3, "banned": ["a"]}
    assert torch.equal(checkpoint.old["w"], torch.ones(2)) and torch.equal(checkpoint.trained["weight"], model.weight)
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    for index in saved["state"]:
        for key, value in saved["state"][index].items():
            assert torch.equal(loaded["state"][index][key], value)
    assert json.loads((folder / "optimizer.json").read_text())["param_groups"][0]["lr"] == 1e-2
    assert (folder / "trained.safetensors").stat().st_mode & 0o777 == default_file_mode()


def _save(root, step, value=1.0):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(root, step, {"w": torch.full((2,), value)}, {"w": torch.zeros(2)}, optimizer, {"position": step}, keep=2)


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    _save(tmp_path, 2)
    newest = _save(tmp_path, 4)
    (newest / "old.safetensors").write_bytes(b"torn")  # a truncated file, as a crash mid-write leaves
    checkpoint, skipped = newest_intact_checkpoint(tmp_path)
    assert checkpoint.step == 2
    assert len(skipped) == 1 and "step_000004" in skipped[0]
    with pytest.raises(EditR1Error, match="incomplete checkpoint"):
        read_checkpoint(newest)


def test_an_intact_checkpoint_is_never_rewritten_and_a_broken_one_is_replaced(tmp_path):
    first = _save(tmp_path, 4, value=1.0)
    _save(tmp_path, 4, value=2.0)  # the final save at an already checkpointed step
    assert torch.equal(read_checkpoint(first).trained["w"], torch.full((2,), 1.0))
    (first / "manifest.json").unlink()
    (first / "trained.safetensors").write_bytes(b"")
    _save(tmp_path, 4, value=3.0)
    assert torch.equal(read_checkpoint(first).trained["w"], torch.full((2,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000004"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000006", "step_000008"]
    assert (tmp_path / "latest").read_text() == "step_000008"
