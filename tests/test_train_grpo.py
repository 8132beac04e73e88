"""Flow-GRPO (`rl.algorithm: grpo`) in the trainer: on-policy at its first update and its KL term zero until the
policy moves (LoRA and full fine-tuning); a run killed mid-update and resumed, from the conditions cache, ends
bitwise where an uninterrupted run encoding on the fly ends; one-line errors for settings it cannot train with.
The math is tested in test_grpo_math.py; multi-process runs in test_distributed.py."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.trainer.algorithms import build_algorithm
from editr1.trainer.conditions_cache import precompute_conditions
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

#: Per mode, its SDE.
SAMPLERS = {"lora": "flow_grpo_sde", "full": "cps_sde"}
#: The call of the GRPO loss killed in the LoRA run (2 per iteration: 2 trainable steps x 8 edits / 4 per
#: micro-batch): in iteration 3, after the checkpoint of iteration 2.
KILL = ("grpo", "grpo", 10)


def _overrides(data, out, mode, *extra):
    # Brightness: every edit scores differently (at 4 SDE steps the verifier scores most edits 0).
    return tiny_nft_overrides(data, out, iterations=3) + [
        "rl.algorithm=grpo", f"rollout.sampler={SAMPLERS[mode]}", "rollout.steps=4", "rollout.noise_level=0.5",
        "rl.kl_coef=0.04", "rl.clip_range=0.01", "rl.filter_rule=none", "reward.name=toy_plugin:Brightness",
        f"model.train_mode={mode}", "eval.every=3", "logging.grid_every=0", *extra,
    ]


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


@pytest.mark.parametrize("mode", list(SAMPLERS))
def test_grpo_is_on_policy_and_its_kl_term_zero_until_the_policy_moves(shapes_data, tmp_path, mode):
    run = tmp_path / "run"
    run_rl(load_config(TrainConfig, None, _overrides(shapes_data, run, mode)))
    rows = [row for row in read_metrics(run) if "loss" in row]
    first, second = rows[0], rows[1]
    # The rollout's policy is the trained one: the ratio is 1 up to float rounding of the recomputed velocities
    # (batched differently), far inside the clip range; the policy equals the reference until its first step.
    assert abs(first["ratio"] - 1) < 1e-4 and first["clip_frac"] == 0.0
    assert first["kl"] == 0.0 and second["kl"] > 0.0
    assert all(row["grad_norm"] > 0 for row in rows) and all(row["old_policy_decay"] == 0.0 for row in rows)
    report = (run / "report.md").read_text()
    assert "Flow-GRPO" in report and "DiffusionNFT" not in report
    if mode == "full":
        return
    # Killed mid-update and resumed, from the conditions cache: the run above, bit for bit.
    killed = tmp_path / "killed"
    cached = _overrides(shapes_data, killed, mode, f"data.conditions_cache={tmp_path / 'cache'}")
    precompute_conditions(load_config(TrainConfig, None, cached))
    result = run_killed(cached, KILL)
    assert result.returncode == -9, result.stderr[-3000:]
    assert (killed / "checkpoints/step_000002").is_dir() and not (killed / "checkpoints/step_000003").exists()
    run_rl(load_config(TrainConfig, None, cached), resume=True)
    for name in ("checkpoints/step_000003/trained.safetensors", "checkpoints/step_000003/optimizer.safetensors",
                 "eval/step_000003.safetensors"):
        a, b = (load_file(folder / name) for folder in (run, killed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _untimed(read_metrics(killed)) == _untimed(read_metrics(run))
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (run, killed))
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
        build_algorithm(load_config(TrainConfig, None, overrides))
    assert message in str(error.value) and "\n" not in str(error.value)

