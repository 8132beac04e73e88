"""A training run killed with SIGKILL at controlled points and resumed each time with `--resume` ends
exactly where an uninterrupted run ends: weights, optimizer state, metrics (timings aside), summary."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import TrainConfig, SFTConfig, load_config
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl
from editr1.trainer.sft import run_sft

# (where, which call): each run is killed there, then the next one resumes.
KILLS = [
    # (Killed during an iteration after a checkpoint: every family, test_family_features.py; before any checkpoint,
    # a run starts again: test_run_folder.py.)
    ("checkpoint", "save_safetensors", 6),  # while writing the checkpoint of iteration 4 (the 4 files of 2 are whole)
    ("rl_trainer", "reward_curve", 1),  # at the start of the final save, after every checkpoint
    ("rl_trainer", "write_report", 1),  # at the end of the final save (final weights and summary written)
]


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


def test_killed_anywhere_and_resumed_equals_an_uninterrupted_run(shapes_data, tmp_path, capsys):
    def overrides(out):
        # Evaluations at 0, 3 and (after the last checkpoint) 4: a resume must not evaluate 4 twice.
        return tiny_nft_overrides(shapes_data, out, iterations=4) + ["logging.keep_checkpoints=2", "eval.every=3"]

    straight = tmp_path / "straight"
    run_rl(load_config(TrainConfig, None, overrides(straight)))

    killed = tmp_path / "killed"
    for kill in KILLS:
        result = run_killed(overrides(killed), kill)
        assert result.returncode == -9, f"{kill}: expected SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
    run_rl(load_config(TrainConfig, None, overrides(killed)), resume=True)
    assert "resumed from" in capsys.readouterr().out

    for name in ("trained.safetensors", "old.safetensors", "optimizer.safetensors"):
        a, b = load_file(straight / "checkpoints/step_000004" / name), load_file(killed / "checkpoints/step_000004" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"
    assert json.loads((killed / "checkpoints/step_000004/optimizer.json").read_text()) == json.loads(
        (straight / "checkpoints/step_000004/optimizer.json").read_text())
    assert _untimed(read_metrics(killed)) == _untimed(read_metrics(straight))
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (straight, killed))
    a.pop("train_seconds"), b.pop("train_seconds")
    assert a == b
    lora_a = load_file(straight / "final/pytorch_lora_weights.safetensors")
    lora_b = load_file(killed / "final/pytorch_lora_weights.safetensors")
    assert all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["latest", "step_000002", "step_000004"]


# Each mode is killed at two of the four points (each kill is a process start, seconds here): together, before the
# first checkpoint, mid-run after it, while writing one, and during the final save.
SFT_KILLS = {
    "full": [
        ("sft", "flow_matching_batch", 5),  # mid-run, after the checkpoint of step 3 and the evaluation at 4
        ("sft", "save_model", 1),  # during the final save (resumed from step 6)
    ],
    "lora": [
        ("sft", "flow_matching_batch", 2),  # before the first checkpoint (step 3)
        ("checkpoint", "save_safetensors", 2),  # while writing the checkpoint of step 3: starts again from the beginning
    ],
}


@pytest.mark.parametrize("mode", list(SFT_KILLS))
def test_sft_killed_anywhere_and_resumed_equals_an_uninterrupted_run(shapes_data, tmp_path, mode):
    def overrides(out):
        return [f"data.train={shapes_data / 'train.jsonl'}", f"data.heldout={shapes_data / 'test.jsonl'}",
                f"output_dir={out}", "steps=7", "batch_size=4", "warmup_steps=1", "eval.every=4", "eval.samples=4",
                "eval.steps=2", "eval.reward.name=shapes_verifier", "logging.checkpoint_every=3",
                "logging.progress=false", "logging.trackers=[]", "ema_decay=0.9", "save_dtype=float32",
                f"model.train_mode={mode}", "model.lora.rank=4", "model.lora.alpha=8"]

    straight = tmp_path / "straight"
    run_sft(load_config(SFTConfig, None, overrides(straight)))
    killed = tmp_path / "killed"
    for kill in SFT_KILLS[mode]:
        result = run_killed(overrides(killed), kill, command="sft")
        assert result.returncode == -9, f"{kill}: expected SIGKILL, got {result.returncode}\n{result.stderr[-3000:]}"
    run_sft(load_config(SFTConfig, None, overrides(killed)), resume=True)

    for name in ("trained.safetensors", "old.safetensors", "optimizer.safetensors"):
        a, b = load_file(straight / "checkpoints/step_000007" / name), load_file(killed / "checkpoints/step_000007" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    weights = sorted((straight / "model").rglob("*.safetensors"))
    assert weights
    for path in weights:
        a, b = load_file(path), load_file(killed / path.relative_to(straight))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{path.name} differs"
    assert _untimed(read_metrics(killed)) == _untimed(read_metrics(straight))
