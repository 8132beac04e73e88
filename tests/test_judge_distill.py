import json

import pytest

from editr1.config import load_config
from editr1.data.preference_pairs import read_preference_jsonl
from editr1.errors import EditR1Error
from editr1.rewards.registry import build_reward
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.tasks.shapes.config import JudgeDistillConfig
from editr1.tasks.shapes.judge_distill import run_judge_distill
from editr1.trainer.metrics_log import read_metrics


def test_distillation_writes_a_loadable_judge_and_heldout_pairs(shapes_data, tmp_path):
    out = tmp_path / "judge"
    config = load_config(JudgeDistillConfig, None, [
        f"output_dir={out}", f"policy.path={SHIPPED_BASE}", f"data.train={shapes_data / 'train.jsonl'}",
        f"data.heldout={shapes_data / 'test.jsonl'}", "rollouts=[{sampler: euler, steps: 2, count: 1}]",
        "corruptions_per_sample=2", "steps=4", "batch_size=8", "eval_every=2", "eval_pairs=6",
        "arch={hidden: 32, layers: 1, vision_hidden: 16, vision_depth: 1}", "logging.progress=false",
        "logging.trackers=[]",
    ])
    summary = run_judge_distill(config)
    assert summary["steps"] == 4 and summary["training_edits"] == 40 * (1 + 1 + 2)
    assert summary["decided_pairs"] + summary["tie_pairs"] == 6
    assert json.loads((out / "summary.json").read_text()) == summary
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    pairs = read_preference_jsonl(out / "heldout_pairs" / "pairs.jsonl")
    assert {p.preferred for p in pairs} <= {"a", "b", "tie"} and len(pairs) == 6
    reward = build_reward("mllm", {"model": str(out / "judge")})
    from editr1.data.batching import source_tensors  # the saved judge scores like any reward
    from editr1.data.jsonl import read_edit_jsonl

    sample = read_edit_jsonl(shapes_data / "test.jsonl")[0]
    sources = source_tensors(sample, 32)
    assert reward.score([sources], [sources[0]], [sample.prompt], [None]).valid.all()

    reused = load_config(JudgeDistillConfig, None, [
        f"output_dir={tmp_path / 'again'}", f"policy.path={SHIPPED_BASE}", f"data.train={shapes_data / 'train.jsonl'}",
        "data.heldout=null", f"reuse_examples={out / 'examples.npz'}", "steps=1", "batch_size=4",
        "arch={hidden: 32, layers: 1, vision_hidden: 16, vision_depth: 1}", "logging.progress=false",
        "logging.trackers=[]",
    ])
    assert run_judge_distill(reused)["training_edits"] == summary["training_edits"]


def test_distillation_under_a_launcher_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(JudgeDistillConfig, None, [f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(EditR1Error, match="editr1 judge distill trains in one process"):
        run_judge_distill(config)
    assert not (tmp_path / "run").exists()
