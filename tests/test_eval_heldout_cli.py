"""`editr1 eval heldout`: one model, a paired comparison, a finished run, unscored samples, input errors."""

import argparse
import json

import pytest
import torch
from tiny_runs import tiny_nft_overrides

from editr1.cli.heldout import add_heldout_arguments, run_heldout
from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.rewards.base import Reward, RewardBatch
from editr1.tasks.shapes import SHIPPED_BASE

FAST = ["--samples", "8", "--steps", "2"]


class HalfReward(Reward):
    """Scores every other sample of a batch 0.5; the rest are unscored, with a reason."""

    name = "half"

    def score(self, sources, edited, prompts, requirements):
        n = len(edited)
        valid = torch.arange(n) % 2 == 0
        scores = torch.where(valid, torch.tensor(0.5), torch.tensor(float("nan")))
        return RewardBatch(scores, valid, failures={i: "judge said nothing" for i in range(1, n, 2)})


class NoReward(Reward):
    """Scores nothing."""

    name = "none"

    def score(self, sources, edited, prompts, requirements):
        n = len(edited)
        return RewardBatch(torch.full((n,), float("nan")), torch.zeros(n, dtype=torch.bool),
                           failures={i: "judge unreachable" for i in range(n)})


def heldout(*argv):
    parser = argparse.ArgumentParser()
    add_heldout_arguments(parser)
    return run_heldout(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def reward_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "reward.yaml"
    path.write_text("name: shapes_verifier\n")
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    """Input errors must come before any model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr("editr1.cli.edit.load_model", refuse)


def test_one_model_writes_summary_and_per_sample_scores(shapes_data, reward_yaml, tmp_path):
    out = tmp_path / "eval"
    result = heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward_yaml,
                     "--resolution", 32, *FAST, "--out", out)
    summary = json.loads((out / "heldout.json").read_text())
    assert summary["n"] == 8 and summary["n_unscored"] == 0
    assert 0 <= summary["mean"] <= 1 and summary["mean"] == result["mean"]
    assert summary["reward"]["name"] == "shapes_verifier"
    assert summary["model"]["model"] == str(SHIPPED_BASE) and summary["model"]["lora"] is None
    assert "gain" not in summary and not (out / "before_after.png").exists()
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 9))
    assert all(r["failure"] is None and 0 <= r["score"] <= 1 for r in rows)
    assert sum(r["score"] for r in rows) / 8 == pytest.approx(summary["mean"])


def test_same_model_against_itself_gains_exactly_zero(shapes_data, reward_yaml, tmp_path):
    out = tmp_path / "eval"
    result = heldout("--model", SHIPPED_BASE, "--against-model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl",
                     "--reward", reward_yaml, "--resolution", 32, *FAST, "--batch-size", 4, "--out", out)
    assert result["gain"] == 0.0 and result["gain_stderr"] == 0.0 and result["n_paired"] == 8
    assert result["baseline"]["mean"] == result["mean"]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["baseline_score"] for r in rows)
    assert (out / "before_after.png").is_file()


@pytest.fixture(scope="module")
def nft_run(shapes_data, tmp_path_factory):
    """A finished one-iteration NFT run (a LoRA on the shipped base), without held-out evaluations."""
    from editr1.trainer.rl_trainer import run_rl

    out = tmp_path_factory.mktemp("nft") / "run"
    run_rl(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, out, iterations=1) + ["eval.every=0"]))
    return out


def test_finished_run_against_its_base(nft_run, shapes_data, reward_yaml, tmp_path):
    out = tmp_path / "eval"
    result = heldout("--run", nft_run, "--against-model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl",
                     "--reward", reward_yaml, *FAST, "--out", out)
    assert result["resolution"] == 32  # the run's training resolution
    assert result["model"]["lora"] == str(nft_run / "final") and result["model"]["run"].startswith(f"run {nft_run}")
    assert result["baseline"]["model"]["lora"] is None
    assert result["n_paired"] == 8 and result["gain_stderr"] is not None
    assert result["gain"] == pytest.approx(result["mean"] - result["baseline"]["mean"], abs=1e-6)
    assert (out / "before_after.png").is_file()


def test_unscored_samples_are_left_out_and_counted(shapes_data, tmp_path):
    reward = tmp_path / "half.yaml"
    reward.write_text("name: test_eval_heldout_cli:HalfReward\n")
    out = tmp_path / "eval"
    result = heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward,
                     "--resolution", 32, *FAST, "--out", out)
    assert result["n"] == 4 and result["n_unscored"] == 4 and result["mean"] == 0.5
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [0.5, None] * 4
    assert [r["failure"] for r in rows] == [None, "judge said nothing"] * 4

    reward.write_text("name: test_eval_heldout_cli:NoReward\n")
    with pytest.raises(EditR1Error, match="could not score any of the 8 samples.*judge unreachable"):
        heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward,
                "--resolution", 32, *FAST, "--out", tmp_path / "none")
    assert not (tmp_path / "none" / "heldout.json").exists()

    # Several rewards as one (a list): HalfReward's unscored samples stay unscored in the weighted mean.
    reward.write_text("- {name: test_eval_heldout_cli:HalfReward, weight: 3}\n- {name: toy_plugin:Brightness}\n")
    result = heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward,
                     "--resolution", 32, *FAST, "--out", tmp_path / "terms")
    assert result["n"] == 4 and result["n_unscored"] == 4 and 0.375 < result["mean"] < 0.5 + 0.25
    assert [t["weight"] for t in result["reward"]["terms"]] == [3.0, 1.0]


def test_secret_reward_options_are_not_recorded():
    from editr1.cli.heldout import public_options

    assert public_options({"api_key": "sk-123", "url": "http://x", "nested": {"token": "t"}, "password": None}) == \
        {"api_key": "(hidden)", "url": "http://x", "nested": {"token": "(hidden)"}, "password": None}


def test_missing_data_file(reward_yaml, tmp_path, no_model_loading):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(EditR1Error, match="file not found") as error:
        heldout("--model", SHIPPED_BASE, "--data", missing, "--reward", reward_yaml, "--resolution", 32,
                "--out", tmp_path / "eval")
    assert str(missing) in str(error.value)


def test_bad_reward_name_is_one_line_naming_the_field(shapes_data, tmp_path, no_model_loading):
    reward = tmp_path / "reward.yaml"
    reward.write_text("name: no_such_reward\n")
    with pytest.raises(EditR1Error) as error:
        heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward,
                "--resolution", 32, "--out", tmp_path / "eval")
    message = str(error.value)
    assert "\n" not in message and "reward.name" in message and "no_such_reward" in message
    reward.write_text("name: shapes_verifier\noptions: {bogus: 1}\n")
    with pytest.raises(EditR1Error, match="reward.options for 'shapes_verifier'"):
        heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward,
                "--resolution", 32, "--out", tmp_path / "eval")
    with pytest.raises(EditR1Error, match="--set nme=x: nme: unknown field"):
        heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward, "--set", "nme=x",
                "--resolution", 32, "--out", tmp_path / "eval")


def test_existing_summary_is_not_overwritten(shapes_data, reward_yaml, tmp_path, no_model_loading):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "heldout.json").write_text("{}")
    with pytest.raises(EditR1Error, match="already holds an evaluation"):
        heldout("--model", SHIPPED_BASE, "--data", shapes_data / "test.jsonl", "--reward", reward_yaml,
                "--resolution", 32, "--out", out)
    assert (out / "heldout.json").read_text() == "{}"


def test_lora_with_run_and_other_bad_weights(shapes_data, reward_yaml, tmp_path, no_model_loading):
    common = ["--data", shapes_data / "test.jsonl", "--reward", reward_yaml, "--out", tmp_path / "eval"]
    with pytest.raises(EditR1Error, match="^--lora: --run brings its own weights"):
        heldout("--run", tmp_path, "--lora", tmp_path, *common)
    with pytest.raises(EditR1Error, match="^--against-lora: --against-run brings its own weights"):
        heldout("--model", SHIPPED_BASE, "--resolution", 32, "--against-run", tmp_path, "--against-lora", tmp_path, *common)
    with pytest.raises(EditR1Error, match="^--against-run .*no model.json"):
        heldout("--model", SHIPPED_BASE, "--resolution", 32, "--against-run", tmp_path, *common)
    with pytest.raises(EditR1Error, match="LoRA not found"):
        heldout("--model", SHIPPED_BASE, "--lora", tmp_path / "missing", "--resolution", 32, *common)
    with pytest.raises(EditR1Error, match="^--resolution: required with --model"):
        heldout("--model", SHIPPED_BASE, *common)
    with pytest.raises(EditR1Error, match="^--guidance: the model's qwen-image-edit transformer has no guidance input"):
        heldout("--model", SHIPPED_BASE, "--resolution", 32, "--guidance", 3.5, *common)
    with pytest.raises(EditR1Error, match="^--samples 99: .* has only 16 samples"):
        heldout("--model", SHIPPED_BASE, "--resolution", 32, "--samples", 99, *common)
    assert not (tmp_path / "eval").exists()
