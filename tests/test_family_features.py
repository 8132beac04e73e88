"""Every family's tiny preset through the trainer's features that depend on the model: LoRA and full
fine-tuning, and a run killed with SIGKILL in its second iteration and resumed, which ends where a straight run
ends. (SIGKILL at every point runs on the shipped base in test_kill_and_resume.py; DDP and FSDP for every
family in test_family_launches.py.)"""

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed, tiny_nft_overrides, tiny_presets

from editr1.config import TrainConfig, load_config
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

STATE = ("checkpoints/step_000002/trained.safetensors", "checkpoints/step_000002/optimizer.safetensors",
         "eval/step_000002.safetensors")


def _overrides(preset, data, out, *extra):
    return tiny_nft_overrides(data, out, iterations=2) + [
        f"model.path={preset}", "reward.name=toy_plugin:Brightness", "reward.options={}",
        "eval.reward.name=toy_plugin:Brightness", "eval.reward.options={}", "eval.samples=4", "logging.checkpoint_every=1",
        "rl.filter_rule=none",  # brightness of shapes scenes is ~0.99: the paper rule would drop every group
        *extra]


def _config(preset, data, out, *extra):
    return load_config(TrainConfig, None, _overrides(preset, data, out, *extra))


@pytest.mark.parametrize("preset", tiny_presets())
def test_a_killed_and_resumed_lora_run_ends_where_a_straight_run_ends(preset, shapes_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_rl(_config(preset, shapes_data, straight))
    # SIGKILL in the second iteration's update, after the first iteration's checkpoint.
    killed = run_killed(_overrides(preset, shapes_data, resumed), ("trainer", "_train", 2))
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_rl(_config(preset, shapes_data, resumed), resume=True)
    for name in STATE:
        first, second = load_file(straight / name), load_file(resumed / name)
        assert first.keys() == second.keys(), name
        for key in first:
            assert torch.equal(first[key], second[key]), f"{preset}: {name}: {key}"
    # Not a run that stands still: the second iteration moved the weights.
    one, two = (load_file(straight / f"checkpoints/step_00000{i}/trained.safetensors") for i in (1, 2))
    assert any(not torch.equal(one[key], two[key]) for key in one)


@pytest.mark.parametrize("preset", tiny_presets())
def test_full_fine_tuning_trains_every_family(preset, shapes_data, tmp_path):
    out = tmp_path / "run"
    run_rl(_config(preset, shapes_data, out, "model.train_mode=full", "iterations=1", "optim.lr=1e-4"))
    trained = load_file(out / "checkpoints/step_000001/trained.safetensors")
    assert trained and all(torch.isfinite(t).all() for t in trained.values())
    assert [r["grad_norm"] > 0 for r in read_metrics(out) if "grad_norm" in r] == [True]
    assert (out / "final" / "model_index.json").is_file()  # a whole model, which `edit --run` loads
