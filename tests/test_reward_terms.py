"""Several rewards at once: the weighted mean, GDPO's per-reward normalisation, masking, the config's list form,
concurrent scoring, and a run on a judge-like reward plus the verifier that logs each reward and, killed and
resumed, ends bitwise where an uninterrupted run ends."""

import json
import math
import threading
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import ConfigError, RewardTermConfig, TrainConfig, load_config
from editr1.data.jsonl import EditSample
from editr1.rewards.base import Reward, RewardBatch, concat_reward_batches
from editr1.rewards.checked import CheckedReward
from editr1.rewards.combined import CombinedReward, RewardTerm, unique_labels, weighted_mean
from editr1.rl.advantages import decoupled_advantages, group_advantages
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

NAN = float("nan")


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


# ---- the combination ------------------------------------------------------------------------------------------


def test_weighted_mean_is_the_formula_and_masks_a_sample_any_reward_left_unscored():
    scores = _t([[0.2, 0.8, NAN, 0.5], [1.0, 0.0, 0.3, NAN]])
    valid = torch.tensor([[True, True, False, True], [True, True, True, False]])
    combined, scored = weighted_mean(scores, valid, [3.0, 1.0])
    assert scored.tolist() == [True, True, False, False]
    assert torch.allclose(combined[:2], _t([(3 * 0.2 + 1.0) / 4, (3 * 0.8 + 0.0) / 4]))
    assert combined[2:].isnan().all()  # masked, never filled in


def test_one_reward_comes_back_bit_for_bit_and_the_weights_scale_does_not_matter():
    scores = torch.rand(1, 50, dtype=torch.float32)
    combined, scored = weighted_mean(scores, torch.ones(1, 50, dtype=torch.bool), [0.3])
    assert torch.equal(combined, scores[0]) and scored.all()
    two = torch.rand(2, 50, dtype=torch.float64)
    everything = torch.ones(2, 50, dtype=torch.bool)
    assert torch.allclose(weighted_mean(two, everything, [1, 2])[0], weighted_mean(two, everything, [10, 20])[0])


@pytest.mark.parametrize("weights", [[1.0, 0.0], [1.0, -1.0], [1.0]])
def test_weighted_mean_refuses_bad_weights(weights):
    with pytest.raises(ValueError):
        weighted_mean(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), weights)


def test_per_reward_normalisation_is_gdpo():
    # Two groups of 3; reward 0 varies in both groups, reward 1 only in group 1 and on a 100x smaller scale.
    r0 = _t([0.1, 0.5, 0.9, 0.2, 0.2, 0.8])
    r1 = _t([0.5, 0.5, 0.5, 0.001, 0.002, 0.003])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    weights = [2.0, 1.0]
    eps = 1e-4

    def per_group(r):  # (r - group mean) / (group population std + eps)
        out = torch.empty_like(r)
        for g in (0, 1):
            m = groups == g
            out[m] = (r[m] - r[m].mean()) / (r[m].std(unbiased=False) + eps)
        return out

    summed = (2 * per_group(r0) + per_group(r1)) / 3
    expected = (summed - summed.mean()) / (summed.std(unbiased=False) + eps)
    got = decoupled_advantages(torch.stack([r0, r1]), weights, groups)
    assert torch.allclose(got, expected, atol=1e-12)
    # The small reward counts as much as the large one within group 1: its advantages there are not ~0.
    assert per_group(r1)[3:].abs().max() > 1
    # Group 0's constant reward 1 adds nothing there: the order within group 0 is reward 0's.
    assert torch.argsort(got[:3]).tolist() == torch.argsort(r0[:3]).tolist()
    assert abs(float(got.mean())) < 1e-12 and math.isclose(float(got.std(unbiased=False)), 1.0, rel_tol=1e-3)


def test_per_reward_normalisation_skips_unscored_samples():
    rewards = _t([[0.1, 0.5, NAN, 0.2, 0.9, 0.4], [0.3, 0.7, 0.1, NAN, 0.6, 0.2]])
    valid = torch.tensor([True, True, False, False, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    got = decoupled_advantages(rewards, [1.0, 1.0], groups, valid)
    assert got[~valid].eq(0).all() and got[valid].isfinite().all()
    only_valid = decoupled_advantages(rewards[:, valid], [1.0, 1.0], groups[valid])
    assert torch.allclose(got[valid], only_valid, atol=1e-12)


def test_combined_normalisation_of_one_reward_is_the_usual_advantage():
    rewards, groups = torch.rand(12, dtype=torch.float64), torch.arange(12) // 4
    combined, _ = weighted_mean(rewards.unsqueeze(0), torch.ones(1, 12, dtype=torch.bool), [1.0])
    assert torch.equal(group_advantages(combined, groups), group_advantages(rewards, groups))


def _labels(*specs):
    return unique_labels([RewardTermConfig(name, label=label) for name, label in specs])


def test_labels_are_the_names_made_unique_or_the_labels_given():
    assert _labels(("mllm", None), ("shapes_verifier", None), ("my.plugin:Brightness", None), ("mllm", None)) == [
        "mllm", "shapes_verifier", "Brightness", "mllm_2"]
    # A given label is kept, and a name's default steps around it.
    assert _labels(("mllm", None), ("mllm", "judge_7b"), ("mllm", "mllm_2"), ("mllm", None)) == [
        "mllm", "judge_7b", "mllm_2", "mllm_3"]


@pytest.mark.parametrize("setting, message", [
    ("reward=[{name: mllm, label: a}, {name: shapes_verifier, label: a}]", r"reward.terms\[1\].label: 'a' names another"),
    ("eval.rewards=[{name: mllm, label: a}, {name: shapes_verifier, label: a}]", r"eval.rewards\[1\].label: 'a' names"),
    ("eval.rewards=[{name: mllm, label: 'my judge'}]", r"eval.rewards\[0\].label: 'my judge': use letters, digits"),
    ("reward=[{name: mllm, label: _x}]", r"reward.terms\[0\].label: '_x': use letters"),
])
def test_a_label_given_twice_or_unfit_for_a_metric_name_is_refused_when_the_config_is_read(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [setting])


# ---- scoring ------------------------------------------------------------------------------------------------


class _Slow(Reward):
    """Scores `value` after `seconds`, recording which threads were inside it at once."""

    inside: set = set()
    overlapped = False

    def __init__(self, value, seconds, skip=()):
        self.value, self.seconds, self.skip = value, seconds, set(skip)

    def score(self, sources, edited, prompts, requirements):
        _Slow.inside.add(threading.get_ident())
        _Slow.overlapped |= len(_Slow.inside) > 1
        time.sleep(self.seconds)
        _Slow.inside.discard(threading.get_ident())
        n = len(edited)
        valid = torch.tensor([i not in self.skip for i in range(n)])
        return RewardBatch(torch.where(valid, self.value, NAN), valid, failures={i: "skipped" for i in self.skip})


def _samples(n):
    return [EditSample(id=f"s{i}", images=(), prompt="p", requirement=None, target=None, line=i + 1) for i in range(n)]


def test_a_combined_reward_asks_its_rewards_at_once_and_keeps_each_answer():
    terms = [RewardTerm("slow", CheckedReward(_Slow(0.2, 0.3), "slow"), 1.0),
             RewardTerm("fast", CheckedReward(_Slow(0.8, 0.3, skip=[1]), "fast"), 3.0)]
    combined = CombinedReward(terms)
    image = torch.zeros(3, 4, 4)
    _Slow.overlapped = False
    batch = combined.score([[image]] * 3, [image] * 3, _samples(3), "data.jsonl")
    combined.close()
    assert _Slow.overlapped  # both rewards were scoring at the same time
    assert batch.valid.tolist() == [True, False, True]
    assert torch.allclose(batch.scores[[0, 2]], torch.tensor([0.65, 0.65]))
    assert batch.failures == {1: "fast: skipped"}
    assert set(batch.components) == {"slow", "fast"} and batch.components["fast"].valid.tolist() == [True, False, True]
    joined = concat_reward_batches([batch, batch])
    assert joined.components["fast"].valid.tolist() == [True, False, True] * 2 and set(joined.failures) == {1, 4}


# ---- the config ----------------------------------------------------------------------------------------------


def _load(tmp_path, text, *overrides):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(TrainConfig, path, list(overrides))


def test_the_list_form_and_its_round_trip(tmp_path):
    config = _load(tmp_path, "reward:\n  - {name: mllm, options: {batch_size: 4}, weight: 2}\n  - {name: shapes_verifier}\n")
    assert [(t.name, t.weight) for t in config.reward.term_list()] == [("mllm", 2.0), ("shapes_verifier", 1.0)]
    assert config.reward.term_section("reward", 1) == "reward.terms[1]"
    from editr1.config import save_config

    save_config(config, tmp_path / "saved.yaml")
    assert load_config(TrainConfig, tmp_path / "saved.yaml").reward == config.reward
    single = _load(tmp_path, "seed: 1\n")
    save_config(single, tmp_path / "single.yaml")
    assert load_config(TrainConfig, tmp_path / "single.yaml").reward.term_list()[0].name == "shapes_verifier"


@pytest.mark.parametrize("text, message", [
    ("reward: []\n", "reward: the list of rewards is empty"),
    ("reward: [{name: mllm, weight: 0}]\n", "reward.terms[0].weight: must be > 0"),
    ("reward: [{options: {a: 1}}]\n", "reward.terms[0].name: required"),
    ("reward: [{name: mllm, wieght: 2}]\n", "reward.terms[0].wieght: unknown field (did you mean 'weight'?)"),
    ("reward: {name: mllm, terms: [{name: shapes_verifier}]}\n", "reward: give one reward (name and options) or a list"),
    ("reward: {name: null}\n", "reward: name a reward, or give a list of rewards"),
])
def test_config_mistakes_are_one_line_naming_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, text)
    assert message in str(error.value) and str(tmp_path / "config.yaml") in str(error.value)


def test_a_term_that_cannot_be_built_is_named_by_its_place(tmp_path, shapes_data):
    config = _load(tmp_path, "reward: [{name: shapes_verifier}, {name: toy_plugin:Brightness, options: {colour: 1}}]\n",
                   *tiny_nft_overrides(shapes_data, tmp_path / "run"))
    with pytest.raises(Exception) as error:
        run_rl(config)
    assert "reward.terms[1].options for 'toy_plugin:Brightness'" in str(error.value)


# ---- training ---------------------------------------------------------------------------------------------------

#: The reward of the runs below: the verifier, and a Brightness that cannot score dark edits (a judge that
#: sometimes fails), weighted 2:1, normalised per reward.
TERMS = ("reward=[{name: shapes_verifier, weight: 2}, "
         "{name: 'toy_plugin:SkipsDark', options: {below: 0.03}, label: flaky_judge}]",
         "rl.reward_normalization=per_reward", "rl.filter_rule=none", "rl.max_unscored_fraction=0.75", "eval.every=3", "logging.grid_every=0")
#: In the update of iteration 3, after the checkpoint of iteration 2.
KILL = ("trainer", "_train", 3)


def test_several_rewards_train_log_each_reward_and_resume_bitwise(shapes_data, tmp_path):
    run, killed = tmp_path / "run", tmp_path / "killed"
    run_rl(load_config(TrainConfig, None, [*tiny_nft_overrides(shapes_data, run), *TERMS]))
    rows = [row for row in read_metrics(run) if "reward_mean" in row]
    for row in rows:
        for label in ("shapes_verifier", "flaky_judge"):
            assert {f"reward_{label}_{k}" for k in ("mean", "std", "unscored")} <= row.keys()
        assert row["reward_shapes_verifier_unscored"] == 0
        # A sample the judge-like reward left unscored is masked in the combination, and counted.
        assert row["unscored"] == row["reward_flaky_judge_unscored"]
    assert sum(row["unscored"] for row in rows) > 0, "the dark threshold should leave some edits unscored"

    result = run_killed([*tiny_nft_overrides(shapes_data, killed), *TERMS], KILL)
    assert result.returncode == -9, result.stderr[-3000:]
    run_rl(load_config(TrainConfig, None, [*tiny_nft_overrides(shapes_data, killed), *TERMS]), resume=True)
    for name in ("checkpoints/step_000003/trained.safetensors", "eval/step_000003.safetensors"):
        a, b = (load_file(folder / name) for folder in (run, killed))
        assert a.keys() == b.keys(), name
        for key in a:  # bitwise; an unscored sample's NaN equals itself
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=f"{name}: {key}")
    untimed = [[{k: v for k, v in row.items() if not k.startswith("seconds")} for row in read_metrics(folder)]
               for folder in (run, killed)]
    assert untimed[0] == untimed[1]
    a, b = (json.loads((folder / "summary.json").read_text()) for folder in (run, killed))
    assert a.pop("train_seconds") is not None and b.pop("train_seconds") is not None and a == b
