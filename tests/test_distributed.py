"""Two processes through accelerate (gloo on the CPU) train like one process: the config's group count is
the global batch, split over the processes."""

import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import run_launch, tiny_nft_overrides

from editr1.config import NFTConfig, load_config
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.nft import run_nft


def _overrides(shapes_data, out, groups):
    return tiny_nft_overrides(shapes_data, out, iterations=2) + [
        f"rollout.groups_per_iteration={groups}", "data.heldout=null", "eval.every=0",
    ]


def test_two_processes_train_like_one_with_the_same_global_batch(shapes_data, tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"
    # The shipped one-node config, with two processes on the CPU instead of eight GPUs.
    shipped = Path(__file__).parent.parent / "configs" / "accelerate" / "ddp_1node.yaml"
    command = [str(launcher), "launch", "--config_file", str(shipped), "--num_processes", "2", "-m", "editr1.cli.main",
               "train"]
    for override in _overrides(shapes_data, tmp_path / "two", groups=2):
        command += ["--set", override]
    run_launch(command)

    run_nft(load_config(NFTConfig, None, _overrides(shapes_data, tmp_path / "one", groups=2)))
    two = [r for r in read_metrics(tmp_path / "two") if "reward_mean" in r]
    one = [r for r in read_metrics(tmp_path / "one") if "reward_mean" in r]
    assert [r["step"] for r in two] == [1, 2]
    # Same global draw of groups and noise, split over ranks: the first rollouts are the same edits.
    assert two[0]["reward_mean"] == one[0]["reward_mean"]
    assert two[0]["reward_std"] == one[0]["reward_std"]
    # The same training: the weights after two iterations agree up to the order of float sums.
    from safetensors.torch import load_file

    two_weights = load_file(tmp_path / "two" / "checkpoints" / "step_000002" / "trained.safetensors")
    one_weights = load_file(tmp_path / "one" / "checkpoints" / "step_000002" / "trained.safetensors")
    assert two_weights.keys() == one_weights.keys()
    for name, value in one_weights.items():
        assert torch.allclose(two_weights[name], value, rtol=1e-4, atol=1e-5), name
    assert [r["reward_mean"] for r in two] == pytest.approx([r["reward_mean"] for r in one], abs=1e-6)
