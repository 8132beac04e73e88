"""Flow-GRPO (`rl.algorithm: grpo`) in the trainer: on-policy at its first update, its KL term zero until the
policy moves, LoRA and full fine-tuning killed mid-update and resumed ending bitwise where an uninterrupted run
ends, and one-line errors for settings it cannot train with. The math is tested in test_grpo_math.py."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import NFTConfig, load_config
from editr1.errors import EditR1Error
from editr1.trainer.algorithms import build_algorithm
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.nft import run_nft

#: Per mode: its SDE, and the call of the GRPO loss killed (2 per iteration: 2 trainable steps x 8 edits / 4 per
#: micro-batch), in iteration 3, after the checkpoint of iteration 2.
MODES = {"lora": ("flow_grpo_sde", 10), "full": ("cps_sde", 9)}


def _overrides(data, out, mode):
    sampler, _ = MODES[mode]
    # Brightness: every edit scores differently (at 4 SDE steps the verifier scores most edits 0).
    return tiny_nft_overrides(data, out, iterations=3) + [
        "rl.algorithm=grpo", f"rollout.sampler={sampler}", "rollout.steps=4", "rollout.noise_level=0.5",
        "rl.kl_coef=0.04", "rl.clip_range=0.01", "rl.filter_rule=none", "reward.name=toy_plugin:Brightness",
        f"model.train_mode={mode}", "eval.every=3", "logging.grid_every=0",
    ]


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


@pytest.mark.parametrize("mode", list(MODES))
def test_grpo_is_on_policy_and_killed_mid_update_resumes_bitwise(shapes_data, tmp_path, mode):
    straight = tmp_path / "straight"
    run_nft(load_config(NFTConfig, None, _overrides(shapes_data, straight, mode)))
    rows = [row for row in read_metrics(straight) if "loss" in row]
    first, second = rows[0], rows[1]
    # The rollout's policy is the trained one: the ratio is 1 up to float rounding of the recomputed velocities
    # (batched differently), far inside the clip range; the policy equals the reference until its first step.
    assert abs(first["ratio"] - 1) < 1e-4 and first["clip_frac"] == 0.0
    assert first["kl"] == 0.0 and second["kl"] > 0.0
    assert all(row["grad_norm"] > 0 for row in rows) and all(row["old_policy_decay"] == 0.0 for row in rows)
    report = (straight / "report.md").read_text()
    assert "Flow-GRPO" in report and "DiffusionNFT" not in report

    killed = tmp_path / "killed"
    result = run_killed(_overrides(shapes_data, killed, mode), ("grpo", "grpo", MODES[mode][1]))
    assert result.returncode == -9, result.stderr[-3000:]
    assert (killed / "checkpoints/step_000002").is_dir() and not (killed / "checkpoints/step_000003").exists()
    run_nft(load_config(NFTConfig, None, _overrides(shapes_data, killed, mode)), resume=True)

    for name in ("trained.safetensors", "optimizer.safetensors"):
        a, b = (load_file(folder / "checkpoints/step_000003" / name) for folder in (straight, killed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _untimed(read_metrics(killed)) == _untimed(read_metrics(straight))
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (straight, killed))
    a.pop("train_seconds"), b.pop("train_seconds")
    assert a == b


@pytest.mark.parametrize("overrides, message", [
    (["rl.algorithm=grpo"], "rollout.sampler: 'dpmpp_2m' is an ODE sampler, and rl.algorithm grpo trains on its "
                            "rollout's own stochastic steps"),
    (["rl.algorithm=grpo", "rollout.sampler=flow_grpo_sde", "rollout.noise_level=0"], "rollout.noise_level: 0.0 with"),
    (["rl.algorithm=grpo", "rollout.sampler=cps_sde", "rollout.noise_level=1.5"], "it must be in (0, 1] (eta)"),
    (["rl.algorithm=grpo", "rollout.sampler=flow_grpo_sde", "rl.clip_range=-0.1"], "rl.clip_range: -0.1; the PPO clip"),
    (["rl.algorithm=grpo", "rollout.sampler=flow_grpo_sde", "rollout.cfg_scale=4"], "rollout.cfg_scale: 4.0; rl.algorithm grpo"),
    (["rollout.sampler=flow_grpo_sde"], "rollout.sampler: 'flow_grpo_sde' is not an ODE sampler; rl.algorithm nft"),
    (["rl.algorithm=ppo"], "rl.algorithm: unknown algorithm 'ppo'; known: ['grpo', 'nft']"),
    (["rl.algorithm=toy_plugin:Brightness"], "rl.algorithm: 'toy_plugin:Brightness' is not a subclass of"),
])
def test_settings_an_algorithm_cannot_train_with_are_one_line_errors(overrides, message):
    with pytest.raises(EditR1Error) as error:
        build_algorithm(load_config(NFTConfig, None, overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_grpo_from_the_conditions_cache_is_the_run_that_encodes_on_the_fly(shapes_data, tmp_path):
    from editr1.trainer.conditions_cache import precompute_conditions

    def overrides(out, *extra):
        return _overrides(shapes_data, out, "lora") + ["iterations=2", "eval.every=2", *extra]

    run_nft(load_config(NFTConfig, None, overrides(tmp_path / "on_the_fly")))
    cached = overrides(tmp_path / "cached", f"data.conditions_cache={tmp_path / 'cache'}")
    precompute_conditions(load_config(NFTConfig, None, cached))
    run_nft(load_config(NFTConfig, None, cached))
    for name in ("checkpoints/step_000002/trained.safetensors", "eval/step_000002.safetensors"):
        a, b = (load_file(tmp_path / run / name) for run in ("on_the_fly", "cached"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
