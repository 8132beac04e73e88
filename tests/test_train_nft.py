"""End-to-end NFT training on the tiny model: a short run, and exact resume."""

import json

import torch
from safetensors.torch import load_file
from tiny_runs import tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl


def test_three_iteration_run_writes_everything(shapes_data, tmp_path):
    out = tmp_path / "run"
    summary = run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, out)))
    assert summary["iterations"] == 3
    assert summary["heldout_n"] == 8
    for name in ("summary.json", "report.md", "reward_curve.png", "before_after.png", "metrics.jsonl",
                 "final/pytorch_lora_weights.safetensors", "checkpoints/latest"):
        assert (out / name).exists(), name
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert 0 <= row["reward_mean"] <= 1
        assert row["seconds_rollout_and_reward"] > 0 and row["seconds_reward_compute"] > 0 and row["seconds_train"] > 0
        assert 0 <= row["fraction_filtered"] <= 1
    # The linear schedule starts on-policy (decay 0 after iteration 0): old == trained until then.
    assert rows[0]["old_deviation"] == 0.0
    assert rows[1]["old_deviation"] == 0.0
    assert rows[2]["old_deviation"] > 0.0
    assert list((out / "grids").glob("step_000001_group*.png"))  # named by iteration, as metrics are
    lora = load_file(out / "final/pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("transformer.") for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k), "training changed nothing"


def test_resume_continues_exactly(shapes_data, tmp_path):
    straight = tmp_path / "straight"
    run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, straight, iterations=4)))

    split = tmp_path / "split"
    run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, split, iterations=2)))
    run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, split, iterations=4)), resume=True)

    for name in ("trained.safetensors", "old.safetensors", "optimizer.safetensors"):
        a = load_file(straight / "checkpoints/step_000004" / name)
        b = load_file(split / "checkpoints/step_000004" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert json.loads((split / "checkpoints/step_000004/state.json").read_text())["position"] == 8
    steps = [r["step"] for r in read_metrics(split) if "reward_mean" in r]
    assert steps == [1, 2, 3, 4]
    a = [r["reward_mean"] for r in read_metrics(straight) if "reward_mean" in r]
    b = [r["reward_mean"] for r in read_metrics(split) if "reward_mean" in r]
    assert a == b


def test_full_fine_tuning_with_kl_reference(shapes_data, tmp_path):
    out = tmp_path / "full"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + [
        "model.train_mode=full", "rl.kl_coef=0.01", "eval.every=0", "data.heldout=null", "optim.lr=1e-4",
    ]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    assert summary == {"iterations": 2, "train_seconds": summary["train_seconds"]}
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert all(r["kl_loss"] >= 0 for r in rows) and rows[1]["kl_loss"] > 0
    trained = load_file(out / "checkpoints/step_000002/trained.safetensors")
    assert any("transformer_blocks.0.attn.to_q.weight" == k for k in trained)
