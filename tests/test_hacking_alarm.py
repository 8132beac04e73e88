"""Evaluation-only rewards and the hacking alarm: the rule as pure functions, and in a run whose training reward
(brightness) is the exact opposite of its evaluation-only reward (darkness), where the alarm must fire, against
one whose evaluation-only reward agrees with training, where it must stay silent. A run killed after the alarm's
first evaluation and resumed continues its streaks and ends as the uninterrupted run ends."""

import json

import pytest
import torch
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.eval.hacking import fallen_most, is_signal, next_streak
from editr1.eval.heldout import load_eval
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl


@pytest.mark.parametrize("training, training_se, independent, independent_se, signal", [
    (0.05, 0.01, -0.04, 0.01, True),
    (0.05, 0.01, -0.004, 0.01, False),  # the fall is within its standard error
    (0.005, 0.01, -0.04, 0.01, False),  # so is the rise
    (-0.05, 0.01, -0.04, 0.01, False),  # both fell: a worse policy, not hacking
    (0.05, 0.01, 0.04, 0.01, False),  # both rose
    (0.05, None, -0.04, 0.01, False),  # no standard error: no evidence
    (0.05, 0.01, -0.04, None, False),
])
def test_a_signal_is_a_rise_and_a_fall_each_beyond_its_standard_error(training, training_se, independent,
                                                                      independent_se, signal):
    assert is_signal(training, training_se, independent, independent_se) is signal


def test_a_streak_counts_signals_in_a_row():
    streak, seen = 0, []
    for signal in (True, True, False, True, True, True):
        streak = next_streak(streak, signal)
        seen.append(streak)
    assert seen == [1, 2, 0, 1, 2, 3]


def test_the_samples_that_fell_most_come_first_and_only_those_that_fell():
    before = torch.tensor([0.9, 0.5, 0.8, 0.2, 0.7])
    after = torch.tensor([0.1, 0.6, 0.3, 0.1, 0.0])
    valid = torch.tensor([True, True, True, True, False])
    assert fallen_most(before, valid, after, torch.ones(5, dtype=torch.bool), 10) == [0, 2, 3]
    assert fallen_most(before, valid, after, torch.ones(5, dtype=torch.bool), 2) == [0, 2]


def _overrides(data, out, darkness_is_watched=True, iterations=4):
    # Training brightens the edits (target 1); the evaluation-only reward wants them dark (target 0): exactly
    # 1 - the training score, so every rise beyond its error is a fall beyond the same error.
    watched = 0.0 if darkness_is_watched else 1.0
    return tiny_nft_overrides(data, out, iterations=iterations) + [
        "reward.name=toy_plugin:Brightness", "reward.options={target: 1.0}", "rl.filter_rule=none", "optim.lr=3e-3",
        f"eval.rewards=[{{name: 'toy_plugin:Brightness', options: {{target: {watched}}}}}]", "eval.every=1",
        "eval.hacking_patience=2", "logging.grid_every=0", "logging.checkpoint_every=1",
    ]


def test_the_alarm_fires_when_training_and_an_independent_reward_part_and_a_resumed_run_ends_alike(shapes_data,
                                                                                                   tmp_path):
    run = tmp_path / "run"
    summary = run_rl(load_config(TrainConfig, None, _overrides(shapes_data, run)))
    rows = [row for row in read_metrics(run) if "heldout_reward" in row]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert all("eval_Brightness" in row for row in rows) and "eval_Brightness_gain" in rows[-1]
    # The rule, applied to what the run logged, gives the streaks it logged.
    streak = 0
    for row in rows[2:]:  # changes start at the second evaluation after step 0
        signal = is_signal(row["heldout_training_change"], row.get("heldout_training_change_stderr"),
                           row["eval_Brightness_change"], row.get("eval_Brightness_change_stderr"))
        streak = next_streak(streak, signal)
        assert row["eval_Brightness_hacking_streak"] == streak
        assert ("hacking_alarm" in row) == (streak >= 2)
    alarm = summary["hacking_alarm"]
    assert alarm["fired"], f"the training reward did not rise steadily: {[r.get('heldout_reward') for r in rows]}"
    assert alarm["steps"] == [row["step"] for row in rows if row.get("hacking_alarm")] and alarm["patience"] == 2
    gains = summary["eval_rewards"]["Brightness"]
    assert gains["gain"] < 0 and summary["final_heldout_reward"] > summary["base_heldout_reward"]
    assert (run / "hacking.png").is_file()
    report = (run / "report.md").read_text()
    assert "The alarm fired" in report and "hacking.png" in report
    final = load_eval(run / "eval/step_000004.safetensors")
    assert set(final.independent) == {"Brightness"}

    # Killed in iteration 3, after its checkpoint of iteration 2 and the alarm's first evaluations; resumed.
    killed = tmp_path / "killed"
    result = run_killed(_overrides(shapes_data, killed), ("trainer", "_train", 3))
    assert result.returncode == -9, result.stderr[-3000:]
    resumed = run_rl(load_config(TrainConfig, None, _overrides(shapes_data, killed)), resume=True)
    untimed = [[{k: v for k, v in row.items() if not k.startswith("seconds")} for row in read_metrics(folder)]
               for folder in (run, killed)]
    assert untimed[0] == untimed[1]
    resumed.pop("train_seconds"), summary.pop("train_seconds")
    assert resumed == summary


def test_the_alarm_stays_silent_when_the_independent_reward_agrees(shapes_data, tmp_path):
    run = tmp_path / "run"
    # An eval.reward with the training reward's settings is the training reward, scored once.
    same = "eval.reward={name: 'toy_plugin:Brightness', options: {target: 1.0}}"
    overrides = [*_overrides(shapes_data, run, darkness_is_watched=False, iterations=3), same]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    assert not any("heldout_training_reward" in row for row in read_metrics(run))
    assert summary["hacking_alarm"] == {"fired": False, "steps": [], "patience": 2}
    assert not (run / "hacking.png").exists() and "did not fire" in (run / "report.md").read_text()
    assert json.loads((run / "summary.json").read_text())["eval_rewards"]["Brightness"]["gain"] > 0


def test_evaluation_only_rewards_need_evaluations(shapes_data, tmp_path):
    overrides = _overrides(shapes_data, tmp_path / "run") + ["eval.every=0"]
    with pytest.raises(EditR1Error, match="eval.rewards: evaluation-only rewards score the held-out evaluations"):
        run_rl(load_config(TrainConfig, None, overrides))
    assert not (tmp_path / "run").exists()
