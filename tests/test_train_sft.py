"""Supervised flow matching: a short run that learns, saves a loadable model and logs held-out reward."""

import pytest

from editr1.config import SFTConfig, load_config
from editr1.models.registry import load_adapter
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.sft import learning_rate_factor, run_sft


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 100, 10, "cosine") == 0.1
    assert learning_rate_factor(10, 100, 10, "cosine") == 1.0
    assert abs(learning_rate_factor(55, 100, 10, "cosine") - 0.5) < 1e-9
    assert learning_rate_factor(100, 100, 10, "cosine") == 0.0
    assert learning_rate_factor(99, 100, 10, "constant") == 1.0


def test_short_sft_run_saves_a_loadable_model(shapes_data, tmp_path, capsys):
    out = tmp_path / "sft"
    config = load_config(SFTConfig, None, [
        f"data.train={shapes_data / 'train.jsonl'}", f"data.heldout={shapes_data / 'test.jsonl'}", f"output_dir={out}",
        "steps=12", "batch_size=8", "eval.every=6", "eval.samples=8", "eval.steps=3", "warmup_steps=2",
        "logging.progress=false", "logging.trackers=[]", "save_dtype=float16", "eval.reward.name=shapes_verifier",
    ])
    summary = run_sft(config)
    printed = capsys.readouterr().out
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("sft step") and "loss" in line] == [
        "sft step 1/12", "sft step 10/12", "sft step 12/12"]  # without a terminal: plain progress lines
    rows = read_metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12
    assert sum(losses[-4:]) < sum(losses[:4]), "the flow-matching loss did not go down"
    assert [r["step"] for r in rows if "heldout_reward" in r] == [6, 12]
    assert summary["steps"] == 12 and 0 <= summary["final_heldout_reward"] <= 1
    assert (out / "eval" / "final.safetensors").is_file() and (out / "heldout_curve.png").is_file()
    adapter = load_adapter(out / "model")
    assert adapter.transformer.dtype.is_floating_point


def test_sft_under_a_launcher_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from editr1.errors import EditR1Error

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(SFTConfig, None, [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(EditR1Error, match="editr1 sft trains in one process"):
        run_sft(config)
    assert not (tmp_path / "run").exists()
