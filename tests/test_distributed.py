"""Two processes through accelerate (gloo on the CPU) train like one process: the config's group count is
the global batch, split over the processes. They sum floats in other orders, so the comparison is the one of
`equivalence.py`."""


import pytest

from equivalence import (
    CONTINUOUS,
    assert_close,
    assert_same_first_rollouts,
    assert_same_gradients,
    gradients,
    tensors,
    weight_tolerance,
)
from tiny_runs import launch_train, tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.trainer.rl_trainer import run_rl


#: Flow-GRPO's settings: its SDE sampler, a noise level and KL term (test_train_grpo.py).
GRPO = ("rl.algorithm=grpo", "rollout.sampler=flow_grpo_sde", "rollout.steps=4", "rollout.noise_level=0.5",
        "rl.kl_coef=0.04", "rl.clip_range=0.01")


def _overrides(shapes_data, out, groups, extra=()):
    return tiny_nft_overrides(shapes_data, out, iterations=2) + [
        f"rollout.groups_per_iteration={groups}", "data.heldout=null", "eval.every=0", "logging.checkpoint_every=1",
        *CONTINUOUS, *extra,
    ]


# NFT under FSDP: test_fsdp.py. GRPO under FSDP, the stricter path (every process makes the same transformer calls,
# and the frozen copies are sharded); under DDP it shares NFT's path, algorithm aside.
@pytest.mark.parametrize("launch, extra", [("ddp_1node.yaml", ()), ("fsdp_1node.yaml", GRPO)], ids=["nft-ddp", "grpo-fsdp"])
def test_two_processes_train_like_one_with_the_same_global_batch(shapes_data, tmp_path, launch, extra):
    two, one = tmp_path / "two", tmp_path / "one"
    # The shipped one-node configs, with two processes on the CPU instead of eight GPUs.
    launch_train(launch, _overrides(shapes_data, two, 2, extra), fsdp_on_cpu=launch.startswith("fsdp"))
    config = load_config(TrainConfig, None, _overrides(shapes_data, one, 2, extra))
    run_rl(config)

    # Same global draw of groups and noise, split over ranks: the same edits, so the same rewards.
    assert_same_first_rollouts(two, one)
    # The same gradient for the first update (summed over ranks, each rank's share normalised globally).
    assert_same_gradients(gradients(two, 1), gradients(one, 1))
    # And the same training: the weights after two updates agree within what float noise can move them.
    lr = config.optim.lr
    for name in ("trained", "old"):
        assert_close(tensors(two, 2, name), tensors(one, 2, name), weight_tolerance(one, 2, lr))


@pytest.mark.parametrize("shipped_config", ["ddp_1node.yaml", "fsdp_1node.yaml"])
def test_a_launch_that_accelerate_sets_up_as_single_processes_is_refused_at_once(shapes_data, tmp_path, shipped_config):
    """On a CPU, the GPU launch configs without ACCELERATE_USE_CPU give each process a single-process setup:
    two independent runs in one folder. Refused in one line, once, before anything is written."""
    launched = launch_train(shipped_config, _overrides(shapes_data, tmp_path / "run", groups=2), check=False, use_cpu=False)
    assert launched.returncode != 0
    output = launched.stdout + launched.stderr
    assert output.count("editr1: error: this process is one of 2 that a launcher started") == 1, output[-3000:]
    assert "ACCELERATE_USE_CPU=1" in output
    assert not (tmp_path / "run").exists()
