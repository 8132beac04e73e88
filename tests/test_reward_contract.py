"""A reward's answer is checked against the contract (editr1/rewards/base.py) wherever editr1 calls it: a
breach, or a crash inside the reward, is one line naming the reward, the samples and their data file; a
crash's traceback goes to `reward_errors.log` in the run (or output) folder. The rewards are tests/toy_plugin.py's."""

import re

import numpy as np
import pytest
import torch
from tiny_runs import tiny_nft_overrides

from editr1.cli.main import main
from editr1.data.jsonl import read_edit_jsonl
from editr1.rewards.base import RewardBatch, contract_breach
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.trainer.checkpoint import checkpoint_folders

#: What each breach of toy_plugin:BreaksContract is reported as, for a call on `count` samples.
BREACHES = {
    "nan": lambda count: "a score marked valid is nan, not finite",
    "seven": lambda count: "a score marked valid is 7, outside [0, 1]",
    "short": lambda count: f"scores has shape ({count - 1},) for {count} samples",
}
CONTRACT = "one score in [0, 1] and one valid flag (bool) per sample"
NO_EVAL = ["eval.every=0", "data.heldout=null"]
#: The (id, line) of the held-out file's first four samples, which `editr1 eval heldout --samples 4` scores at once.
FIRST_FOUR = [(f"test-{n - 1:05d}", n) for n in range(1, 5)]


def _train(overrides, *flags):
    return main(["train", *flags, *[arg for override in overrides for arg in ("--set", override)]])


def _error_line(capsys) -> str:
    """The error the CLI printed: its last line on stderr, which must say all of it."""
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("editr1: error: "), line
    return line


def _named_samples(line: str, data_file) -> list[tuple[str, int]]:
    """The (id, line) of each sample the error names before ` of <data_file>: `, checked to be that file's."""
    named = re.search(rf" on samples? (.+?) of {re.escape(str(data_file))}: ", line)
    assert named, line
    pairs = [(sample_id, int(number)) for sample_id, number in re.findall(r"([^ ,]+) \(line (\d+)\)", named.group(1))]
    lines = {s.id: s.line for s in read_edit_jsonl(data_file, check_images=False)}
    assert pairs and all(lines[sample_id] == number for sample_id, number in pairs), line
    return pairs


def test_a_reward_that_raises_in_training_is_one_line_and_its_traceback_is_logged(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + NO_EVAL + [
        "logging.checkpoint_every=1", "reward.name=toy_plugin:Raises", "reward.options={fail_from: 2}"]
    assert _train(overrides) == 2
    line = _error_line(capsys)
    log = out / "reward_errors.log"
    assert line.startswith("editr1: error: reward 'toy_plugin:Raises' failed on samples ")
    assert line.endswith(f": ZeroDivisionError: division by zero (traceback in {log})")
    _named_samples(line, shapes_data / "train.jsonl")
    logged = log.read_text()
    assert "Traceback (most recent call last)" in logged and "toy_plugin.py" in logged
    assert logged.rstrip().endswith("ZeroDivisionError: division by zero")
    # Nothing of the run is lost: the first iteration's checkpoint and metrics stay, and the run resumes.
    assert [step for step, _ in checkpoint_folders(out / "checkpoints")] == [1]
    assert '"step": 1' in (out / "metrics.jsonl").read_text()
    assert _train(overrides, "--resume") == 0


@pytest.mark.parametrize("breach", BREACHES)
def test_a_reward_that_breaks_the_contract_in_training_is_one_line(shapes_data, tmp_path, capsys, breach):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + NO_EVAL + [
        "reward.name=toy_plugin:BreaksContract", f"reward.options={{breach: {breach}}}"]
    assert _train(overrides) == 2
    line = _error_line(capsys)
    assert line.startswith("editr1: error: reward 'toy_plugin:BreaksContract' broke the reward contract on sample")
    assert f": {BREACHES[breach](8)}; " in line and CONTRACT in line  # a call scores 2 groups x 4 edits
    named = _named_samples(line, shapes_data / "train.jsonl")
    assert len(named) == (1 if breach != "short" else 2)  # the one at fault; all of the call's (2 groups)


def test_the_held_out_evaluation_of_training_checks_its_reward(shapes_data, tmp_path, capsys):
    overrides = tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=1) + [
        "eval.reward.name=toy_plugin:BreaksContract", "eval.reward.options={breach: seven}"]
    assert _train(overrides) == 2
    line = _error_line(capsys)
    assert line.startswith("editr1: error: reward 'toy_plugin:BreaksContract' broke the reward contract on sample ")
    # eval.samples=8, scored at once: the last one is at fault.
    assert _named_samples(line, shapes_data / "test.jsonl") == [("test-00007", 8)]
    assert f": {BREACHES['seven'](8)}; " in line


def _eval_heldout(reward, data, out):
    return main(["eval", "heldout", "--model", str(SHIPPED_BASE), "--data", str(data), "--reward", str(reward),
                 "--resolution", "32", "--samples", "4", "--steps", "2", "--out", str(out)])


@pytest.mark.parametrize("breach", BREACHES)
def test_eval_heldout_checks_its_reward(shapes_data, tmp_path, capsys, breach):
    reward, out, data = tmp_path / "reward.yaml", tmp_path / "eval", shapes_data / "test.jsonl"
    reward.write_text(f"name: toy_plugin:BreaksContract\noptions: {{breach: {breach}}}\n")
    assert _eval_heldout(reward, data, out) == 2
    line = _error_line(capsys)
    assert line.startswith("editr1: error: model (")
    assert " reward 'toy_plugin:BreaksContract' broke the reward contract on sample" in line
    assert _named_samples(line, data) == (FIRST_FOUR[-1:] if breach != "short" else FIRST_FOUR)
    assert f": {BREACHES[breach](4)}; " in line and CONTRACT in line
    assert not (out / "heldout.json").exists()


def test_eval_heldout_logs_a_crashing_rewards_traceback_in_its_folder(shapes_data, tmp_path, capsys):
    reward, out, data = tmp_path / "reward.yaml", tmp_path / "eval", shapes_data / "test.jsonl"
    reward.write_text("name: toy_plugin:Raises\n")
    assert _eval_heldout(reward, data, out) == 2
    line = _error_line(capsys)
    assert line.startswith("editr1: error: model (") and " reward 'toy_plugin:Raises' failed on samples " in line
    assert _named_samples(line, data) == FIRST_FOUR
    assert line.endswith(f": ZeroDivisionError: division by zero (traceback in {out / 'reward_errors.log'})")
    assert "ZeroDivisionError" in (out / "reward_errors.log").read_text()
    # The log is the evaluation's own: once the reward is fixed, it evaluates into the same folder.
    reward.write_text("name: toy_plugin:Brightness\n")
    assert _eval_heldout(reward, data, out) == 0 and (out / "heldout.json").is_file()


@pytest.mark.parametrize("batch, problem, at_fault", [
    (RewardBatch(torch.tensor([0.5, 0.5]), torch.tensor([True, True])), None, None),
    # An unscored sample's NaN is the contract, not a breach.
    (RewardBatch(torch.tensor([0.5, float("nan")]), torch.tensor([True, False])), None, None),
    (RewardBatch(torch.tensor([0.5, -0.25]), torch.tensor([True, True])), "a score marked valid is -0.25, outside [0, 1]", [1]),
    (RewardBatch(torch.tensor([float("inf"), 0.5]), torch.tensor([True, True])), "a score marked valid is inf, not finite", [0]),
    (RewardBatch(torch.tensor([0.5, 0.5]), torch.tensor([1, 1])), "valid is torch.int64, not torch.bool", [0, 1]),
    (RewardBatch(torch.tensor([0.5, 0.5]), torch.tensor([True])), "valid has shape (1,) for 2 samples", [0, 1]),
    (RewardBatch([0.5, 0.5], torch.tensor([True, True])), "scores is a list, not a tensor", [0, 1]),
    (RewardBatch(torch.tensor([0.5, 0.5]), torch.tensor([True, True]), {"mass": torch.ones(3)}),
     "extras['mass'] has shape (3,) for 2 samples", [0, 1]),
    (RewardBatch(torch.tensor([0.5, float("nan")]), torch.tensor([True, False]), failures={2: "timeout"}),
     "failures names 2: not positions in 0..1", [0, 1]),
    (RewardBatch(torch.tensor([0.5, float("nan")]), torch.tensor([True, False]), failures={"b": "?", 5: "?"}),
     "failures names 'b', 5: not positions in 0..1", [0, 1]),
    # Any integer type names a position (numpy's, from np.nonzero).
    (RewardBatch(torch.tensor([0.5, float("nan")]), torch.tensor([True, False]), failures={np.int64(1): "timeout"}),
     None, None),
    ({"scores": [0.5, 0.5]}, "it returned dict, not a RewardBatch", [0, 1]),
])
def test_contract_breach(batch, problem, at_fault):
    breach = contract_breach(batch, 2)
    assert breach == (None if problem is None else (problem, at_fault))
