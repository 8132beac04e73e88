"""The run folder: guard, resume from any moment, locked settings, nothing written before validation,
the held-out reward's default, visible unscored samples, config paths, and plain progress lines."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import tiny_nft_overrides

from editr1.config import ConfigError, TrainConfig, SFTConfig, load_config, package_path
from editr1.errors import DataError, EditR1Error
from editr1.eval.heldout import HeldoutSet, evaluate
from editr1.rewards.base import Reward, RewardBatch
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import RLTrainer, run_rl
from editr1.trainer.sft import run_sft


class UnscorableOdd(Reward):
    """Scores even samples by brightness and cannot score odd ones, saying why."""

    name = "test_unscorable_odd"

    def score(self, sources, edited, prompts, requirements):
        scores = torch.stack([e.mean() for e in edited]).float()
        odd = torch.arange(len(edited)) % 2 == 1
        scores[odd] = float("nan")
        return RewardBatch(scores, ~odd, failures={int(i): "odd samples are out of scope" for i in torch.nonzero(odd)})


class NeverScores(Reward):
    name = "test_never_scores"

    def score(self, sources, edited, prompts, requirements):
        n = len(edited)
        return RewardBatch(torch.full((n,), float("nan")), torch.zeros(n, dtype=torch.bool),
                           failures=dict.fromkeys(range(n), "the instruction is outside the grammar"))


def _config(data, out, *extra, iterations=2):
    return load_config(TrainConfig, None, tiny_nft_overrides(data, out, iterations) + list(extra))


def test_a_run_that_stopped_before_its_first_checkpoint_resumes_from_the_beginning(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    # A crash inside the first iteration leaves logs and no checkpoint.
    with pytest.raises(EditR1Error, match="iteration 1: 8 of 8 samples could not be scored"):
        run_rl(_config(shapes_data, out, "reward.name=test_run_folder:NeverScores",
                        "eval.reward.name=shapes_verifier"))
    assert (out / "metrics.jsonl").exists() and not list(out.glob("checkpoints/step_*"))
    with pytest.raises(EditR1Error, match="already holds a run; pass --resume"):
        run_rl(_config(shapes_data, out))
    summary = run_rl(_config(shapes_data, out), resume=True)
    assert "stopped before its first checkpoint; starting it again from the beginning" in capsys.readouterr().out
    fresh = run_rl(_config(shapes_data, tmp_path / "fresh"))
    summary.pop("train_seconds"), fresh.pop("train_seconds")
    assert summary == fresh
    assert [r["step"] for r in read_metrics(out) if "reward_mean" in r] == [1, 2]


def test_resume_refuses_changes_to_what_is_learned_and_records_the_rest(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    run_rl(_config(shapes_data, out))
    with pytest.raises(EditR1Error) as error:
        RLTrainer(_config(shapes_data, out, "optim.lr=5e-4", "model.resolution=64", iterations=4), resume=True)
    message = str(error.value)
    assert "optim.lr: 0.001 -> 0.0005" in message and "model.resolution: 32 -> 64" in message
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3

    with pytest.raises(EditR1Error, match="reward.options.colour: None -> 'red'"):
        RLTrainer(_config(shapes_data, out, "reward.options={colour: red}", iterations=4), resume=True)

    # Out of memory: smaller batches change how much is computed at once, not what.
    run_rl(_config(shapes_data, out, "eval.every=1", "optim.micro_batch=2", iterations=3), resume=True)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["iterations"] == 3 and saved["eval"]["every"] == 1
    record = json.loads((out / "config_changes.jsonl").read_text().splitlines()[-1])
    assert record["resumed_at_step"] == 2
    assert record["changes"] == {"iterations": {"old": 2, "new": 3}, "eval.every": {"old": 2, "new": 1},
                                 "optim.micro_batch": {"old": 4, "new": 2}}
    assert "--resume: changed" in capsys.readouterr().out


def test_resume_refuses_folders_it_cannot_continue(shapes_data, tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "eval").mkdir(parents=True)
    (foreign / "eval" / "mine.txt").write_text("a user's file")
    with pytest.raises(EditR1Error, match="holds files but no config.yaml of this command that loads .*config file not found"):
        RLTrainer(_config(shapes_data, foreign), resume=True)
    assert (foreign / "eval" / "mine.txt").exists()

    finished = tmp_path / "finished"
    run_rl(_config(shapes_data, finished, "eval.every=0", "data.heldout=null", iterations=1))
    shutil.rmtree(finished / "checkpoints")  # to save space
    with pytest.raises(EditR1Error, match="the run finished .* but it has no checkpoint left"):
        RLTrainer(_config(shapes_data, finished, "eval.every=0", "data.heldout=null", iterations=2), resume=True)
    assert (finished / "final").is_dir()

    sft_overrides = [f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null", "steps=2", "batch_size=2",
                     "logging.progress=false", "logging.trackers=[]"]
    sft_finished = tmp_path / "sft_finished"
    run_sft(load_config(SFTConfig, None, [*sft_overrides, f"output_dir={sft_finished}"]))
    shutil.rmtree(sft_finished / "checkpoints")
    with pytest.raises(EditR1Error, match=r"the run finished \(model, heldout_curve.png exist\)"):
        run_sft(load_config(SFTConfig, None, [*sft_overrides, f"output_dir={sft_finished}"]), resume=True)
    assert (sft_finished / "model").is_dir()

    nft_started = tmp_path / "nft_started"
    nft_started.mkdir()
    (nft_started / "config.yaml").write_text(yaml.safe_dump({"rollout": {"group_size": 4}}))
    (nft_started / "metrics.jsonl").write_text("")
    with pytest.raises(EditR1Error, match="no config.yaml of this command that loads"):
        run_sft(load_config(SFTConfig, None, [*sft_overrides, f"output_dir={nft_started}"]), resume=True)
    assert (nft_started / "metrics.jsonl").exists()

    without_eval = tmp_path / "without_eval"
    run_rl(_config(shapes_data, without_eval, "eval.every=0", iterations=2))
    with pytest.raises(EditR1Error, match="eval.every: .* no step-0 baseline"):
        RLTrainer(_config(shapes_data, without_eval, "eval.every=1", iterations=3), resume=True)


def test_resume_of_an_empty_folder_starts_the_run(shapes_data, tmp_path):
    out = tmp_path / "new"
    assert run_rl(_config(shapes_data, out, iterations=1), resume=True)["iterations"] == 1


def test_rejected_input_writes_nothing(shapes_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "missing.png", "prompt": "x", "target": "missing.png"}\n')
    sft = ["steps=1", "logging.progress=false", "logging.trackers=[]", "eval.reward.name=shapes_verifier",
           f"data.heldout={shapes_data / 'test.jsonl'}"]
    out = tmp_path / "sft"
    with pytest.raises(DataError, match="missing.png"):
        run_sft(load_config(SFTConfig, None, [f"data.train={bad}", f"output_dir={out}", *sft]))
    assert not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text("an earlier run's config\n")
    with pytest.raises(EditR1Error, match="already holds a run"):
        run_sft(load_config(SFTConfig, None, [f"data.train={shapes_data / 'train.jsonl'}", f"output_dir={out}", *sft]))
    with pytest.raises(DataError):
        RLTrainer(_config(shapes_data, tmp_path / "nft", f"data.train={bad}"))
    assert not (tmp_path / "nft").exists()
    from editr1.tasks.shapes.config import JudgeDistillConfig
    from editr1.tasks.shapes.judge_distill import run_judge_distill

    with pytest.raises(EditR1Error, match="reuse_examples: .*missing.npz not found"):
        run_judge_distill(load_config(JudgeDistillConfig, None, [
            f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null", f"output_dir={tmp_path / 'judge'}",
            f"reuse_examples={tmp_path / 'missing.npz'}", f"policy.path={package_path('tasks/shapes/assets/shapes_base')}"]))
    assert not (tmp_path / "judge").exists()
    assert (out / "config.yaml").read_text() == "an earlier run's config\n"


def test_sft_needs_a_held_out_reward(shapes_data, tmp_path):
    config = load_config(SFTConfig, None, [f"data.train={shapes_data / 'train.jsonl'}", f"output_dir={tmp_path / 's'}"])
    with pytest.raises(ConfigError, match="eval.reward: sft has no training reward"):
        run_sft(config)
    assert not (tmp_path / "s").exists()


def test_held_out_reward_defaults_to_the_training_reward(shapes_data, tmp_path):
    trainer = RLTrainer(_config(shapes_data, tmp_path / "run", "reward.name=test_run_folder:UnscorableOdd"))
    assert trainer.eval_reward is trainer.reward


def test_unscored_samples_are_reported_once_and_an_unscorable_evaluation_is_an_error(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    summary = run_rl(_config(shapes_data, out, "eval.reward.name=test_run_folder:UnscorableOdd", "eval.every=1",
                              "rl.max_unscored_fraction=0.6", "reward.name=test_run_folder:UnscorableOdd"))
    printed = capsys.readouterr().out
    assert printed.count("could not score 4 of 8 samples in the held-out evaluation") == 1
    assert printed.count("samples in rollouts") == 1 and "odd samples are out of scope" in printed
    assert summary["heldout_n"] == 4
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert all(r["unscored"] == 4 for r in rows)

    trainer = RLTrainer(_config(shapes_data, tmp_path / "other"))
    heldout = HeldoutSet(trainer.heldout.samples[:2], 32, trainer.heldout.noise[:2])
    with pytest.raises(EditR1Error, match="could not score any of the 2 samples; first reason: sample .* outside the grammar"):
        evaluate(trainer.adapter, heldout, NeverScores(), 2, "euler")


def test_without_a_terminal_each_iteration_prints_one_line(shapes_data, tmp_path, capsys):
    run_rl(_config(shapes_data, tmp_path / "run"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iteration ")]
    assert [line.split(":")[0] for line in lines] == ["iteration 1/2", "iteration 2/2"]
    assert all("reward" in line and "filtered" in line and "train" in line for line in lines)


def test_an_over_long_instruction_is_refused_with_its_line(shapes_data, tmp_path):
    rows = [json.loads(line) for line in (shapes_data / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["image"] = str(shapes_data / row["image"])
        row.pop("target", None)
    rows[2]["prompt"] = "make it blue " * 100000
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=rf"{data}:3: field 'prompt': \d+ tokens; the limit is 1024"):
        RLTrainer(_config(shapes_data, tmp_path / "run", f"data.train={data}", "model.path=tiny:qwen-image-edit"))
    assert not (tmp_path / "run").exists()


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "judge").mkdir()
    (folder / "run.yaml").write_text(
        "data: {train: ../data/train.jsonl, heldout: null}\n"
        "model: {path: editr1:tasks/shapes/assets/shapes_base}\n"
        "reward: {name: mllm, options: {model: judge, dtype: float32}}\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(TrainConfig, "project/configs/run.yaml", ["data.heldout=held.jsonl"])
    assert config.data.train == str(folder / "../data/train.jsonl")
    assert config.data.heldout == str(tmp_path / "held.jsonl")  # a --set path: relative to the working directory
    assert Path(config.model.path) == package_path("tasks/shapes/assets/shapes_base") and Path(config.model.path).is_dir()
    assert config.reward.options == {"model": str(folder / "judge"), "dtype": "float32"}
    assert load_config(TrainConfig, None, ["model.path=Qwen/Qwen-Image-Edit"]).model.path == "Qwen/Qwen-Image-Edit"


def test_edit_with_a_run_trained_on_a_tiny_preset(shapes_data, tmp_path):
    from editr1.cli.main import main

    out = tmp_path / "run"
    run_rl(_config(shapes_data, out, "model.path=tiny:qwen-image-edit", iterations=1))
    record = json.loads((out / "model.json").read_text())
    assert record["base"] == "base_model" and record["family"] == "qwen-image-edit" and record["final"] == "final"
    source = next(shapes_data.glob("test_images/*.png"), None) or next(shapes_data.rglob("*.png"))
    edited = tmp_path / "edited.png"
    code = main(["edit", "--run", str(out), "--image", str(source), "--prompt", "Remove the red circle",
                 "--out", str(edited), "--steps", "2", "--size", "32x32"])
    assert code == 0 and edited.is_file()


def test_a_judge_that_does_not_come_up_stops_the_run_at_start_up(shapes_data, tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a free port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = f"reward.options={{url: 'http://127.0.0.1:{port}/v1', model: judge, wait_ready_s: 0.5}}"
    with pytest.raises(EditR1Error, match=rf"judge server at http://127.0.0.1:{port}/health was not ready within 0.5s"):
        RLTrainer(_config(shapes_data, tmp_path / "run", "reward.name=mllm_remote", remote))
    assert f"waiting up to 0.5s (reward.options.wait_ready_s) for the judge server at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_secrets_are_not_printed_or_recorded_when_they_change():
    from editr1.trainer.run_folder import _recorded, _shown

    assert _shown("reward.options.api_key", "sk-123") == "(hidden)" and _recorded("eval.reward.options.api_key", "x") == "(hidden)"
    assert _shown("reward.options.url", "http://a/v1") == "'http://a/v1'"


def test_metrics_keep_the_usual_mode_after_a_resume_truncates_them(tmp_path):
    import stat

    from editr1.fileio import default_file_mode
    from editr1.trainer.metrics_log import MetricsLogger

    with MetricsLogger(tmp_path) as log:
        log.log(1, {"a": 1.0})
        log.log(2, {"a": 2.0})
        log.truncate_after(1)
    assert stat.S_IMODE((tmp_path / "metrics.jsonl").stat().st_mode) == default_file_mode()
    assert [row["step"] for row in read_metrics(tmp_path)] == [1]
