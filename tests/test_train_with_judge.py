"""NFT with the MLLM judge's reward, and the masking of unscored samples."""

import math

import pytest
import torch
from tiny_runs import tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.rewards.base import Reward, RewardBatch
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl


class EveryThirdUnscored(Reward):
    """Scores by mean brightness; every third sample of a call is unscored, as a flaky judge's would be."""

    name = "test_every_third_unscored"

    def score(self, sources, edited, prompts, requirements):
        scores = torch.stack([e.mean() for e in edited]).float()
        valid = torch.tensor([i % 3 != 2 for i in range(len(edited))])
        scores[~valid] = float("nan")
        return RewardBatch(scores, valid, failures={i: "judge timed out" for i in range(len(edited)) if i % 3 == 2})


def test_nft_trains_on_the_judge_and_tracks_it_next_to_the_verifier(shapes_data, tiny_judge_dir, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + [
        "reward.name=mllm", f"reward.options={{model: '{tiny_judge_dir}'}}", "eval.track_training_reward=true",
        "eval.reward.name=shapes_verifier",
        "rollout.batch_size=3",  # several batches: scoring overlaps the next batch's sampling
    ]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    for key in ("base_heldout_training_reward", "final_heldout_training_reward", "heldout_training_stderr",
                "base_heldout_reward", "final_heldout_reward"):
        assert math.isfinite(summary[key]), key
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert all(0 < r["judge_score_mass_mean"] <= 1 and r["unscored"] == 0 for r in rows)


def test_overlapped_and_inline_scoring_give_the_same_run(shapes_data, tiny_judge_dir, tmp_path):
    rewards = {}
    for overlap in (True, False):
        out = tmp_path / f"overlap_{overlap}"
        overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + [
            "reward.name=mllm", f"reward.options={{model: '{tiny_judge_dir}'}}", "rollout.batch_size=3",
            f"reward.overlap={str(overlap).lower()}", "eval.every=0", "data.heldout=null",
        ]
        run_rl(load_config(TrainConfig, None, overrides))
        rewards[overlap] = [(r["reward_mean"], r["loss"]) for r in read_metrics(out) if "reward_mean" in r]
    assert rewards[True] == rewards[False]


def test_unscored_samples_are_masked_and_counted(shapes_data, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=2) + [
        "reward.name=test_train_with_judge:EveryThirdUnscored", "rl.max_unscored_fraction=0.5", "eval.every=0",
        "data.heldout=null",
    ]
    run_rl(load_config(TrainConfig, None, overrides))
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["unscored"] for r in rows] == [2, 2]  # 8 samples per iteration, rows 2 and 5 of the batch
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["loss"]) for r in rows)


def test_too_many_unscored_samples_fail_the_iteration(shapes_data, tmp_path):
    overrides = tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=2) + [
        "reward.name=test_train_with_judge:EveryThirdUnscored", "rl.max_unscored_fraction=0.1", "eval.every=0",
        "data.heldout=null",
    ]
    with pytest.raises(EditR1Error, match=r"iteration 1: 2 of 8 samples could not be scored.*judge timed out"):
        run_rl(load_config(TrainConfig, None, overrides))
