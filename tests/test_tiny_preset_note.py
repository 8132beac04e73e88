"""A run on a `tiny:` preset says, on the console and in report.md, that its weights are random and that
the shipped judge knows only the shapes task (issue 17: such a run looked broken); a saved model's run
does not."""

import pytest
from tiny_runs import tiny_nft_overrides

from editr1.config import TrainConfig, SFTConfig, load_config
from editr1.models.registry import tiny_preset_note
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.trainer.rl_trainer import run_rl
from editr1.trainer.sft import run_sft

TINY = "tiny:qwen-image-edit"


def test_the_note_says_what_a_tiny_preset_is_for():
    note = tiny_preset_note(TINY)
    assert TINY in note and "random weights" in note and "not for results" in note
    assert "shapes task" in note and "shipped judge" in note and "knows only that task" in note
    # True for the demo too: it starts from a tiny model fine-tuned on the shapes task, and gains.
    assert "editr1 demo" in note and "real gain" in note


def test_a_tiny_nft_run_prints_and_reports_the_note(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + [
        f"model.path={TINY}", "eval.every=0", "data.heldout=null", "rollout.groups_per_iteration=1",
        "rollout.group_size=2", "rollout.steps=2", "optim.micro_batch=2"]
    run_rl(load_config(TrainConfig, None, overrides))
    assert tiny_preset_note(TINY) in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## Tiny preset" in report and tiny_preset_note(TINY) in report


@pytest.mark.parametrize("path, noted", [(TINY, True), (str(SHIPPED_BASE), False)])
def test_sft_prints_the_note_for_a_tiny_preset_only(shapes_data, tmp_path, capsys, path, noted):
    run_sft(load_config(SFTConfig, None, [
        f"model.path={path}", f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null",
        f"output_dir={tmp_path / 'sft'}", "steps=1", "batch_size=2", "warmup_steps=0", "logging.progress=false",
        "logging.trackers=[]",
    ]))
    assert ("random weights" in capsys.readouterr().out) == noted
