"""A model family and a reward from a module outside editr1 (tests/toy_plugin.py), used from a config by
their dotted paths: trained for one iteration and edited with, touching no editr1 file."""

import json

import pytest
from tiny_runs import tiny_nft_overrides
from toy_plugin import Brightness, ToyEditAdapter

from editr1.cli.main import main
from editr1.config import ModelConfig, TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.models.registry import load_adapter
from editr1.rewards.registry import build_reward
from editr1.trainer.model_loading import build_model
from editr1.trainer.rl_trainer import run_rl

FAMILY, REWARD = "toy_plugin:ToyEditAdapter", "toy_plugin:Brightness"


def test_an_out_of_tree_family_and_reward_train_and_edit(shapes_data, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + [
        f"model.path=tiny:{FAMILY}", f"model.family={FAMILY}", f"reward.name={REWARD}",
        "reward.options={target: 0.4}",
    ]
    assert run_rl(load_config(TrainConfig, None, overrides))["iterations"] == 1
    # The run records the family by its dotted path; the saved base names the plugin's pipeline class.
    assert json.loads((out / "model.json").read_text())["family"] == FAMILY
    assert json.loads((out / "base_model" / "model_index.json").read_text())["_class_name"] == "ToyEditPipeline"
    assert isinstance(load_adapter(out / "base_model", family=FAMILY), ToyEditAdapter)

    source = next(shapes_data.rglob("*.png"))
    edited = tmp_path / "edited.png"
    code = main(["edit", "--run", str(out), "--image", str(source), "--prompt", "Remove the red circle",
                 "--out", str(edited), "--steps", "2", "--size", "32x32"])
    assert code == 0 and edited.is_file()


def test_an_out_of_tree_loss_is_used_by_its_dotted_path(shapes_data, tmp_path):
    from editr1.trainer.metrics_log import read_metrics

    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + ["rl.loss=toy_plugin:nft_with_velocity_penalty"]
    run_rl(load_config(TrainConfig, None, overrides))
    row = next(row for row in read_metrics(out) if "loss" in row)
    assert row["velocity_magnitude"] > 0 and "policy_loss" in row


def test_an_unknown_loss_is_a_one_line_error(shapes_data, tmp_path):
    overrides = tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=1) + ["rl.loss=nfd"]
    with pytest.raises(EditR1Error, match=r"rl.loss: unknown loss 'nfd'; known: \['flow_matching', 'nft'\]"):
        run_rl(load_config(TrainConfig, None, overrides))
    assert not (tmp_path / "run").exists()


def test_a_plugin_reward_takes_its_options():
    reward = build_reward(REWARD, {"target": 0.25})
    assert isinstance(reward, Brightness) and reward.target == 0.25


@pytest.mark.parametrize(
    "path, family, expected",
    [
        ("tiny:qwen-image-edit", "no_such_module:Adapter",
         "model.family: 'no_such_module:Adapter': cannot import no_such_module (No module named 'no_such_module')"),
        ("tiny:qwen-image-edit", "toy_plugin:Missing",
         "model.family: 'toy_plugin:Missing': module toy_plugin has no 'Missing'"),
        ("tiny:qwen-image-edit", REWARD,
         f"model.family: {REWARD!r} is not a subclass of editr1.models.base.EditModelAdapter"),
        (f"tiny:{FAMILY}", "qwen-image-edit",
         f"model.family: 'qwen-image-edit' contradicts model.path tiny:{FAMILY} (a {FAMILY} model)"),
        ("tiny:editr1.models.base:EditModelAdapter", None,
         "model.path: tiny:editr1.models.base:EditModelAdapter: the EditModelAdapter adapter has no tiny preset"),
    ],
)
def test_a_family_that_does_not_resolve_is_a_one_line_error(path, family, expected):
    with pytest.raises(EditR1Error) as error:
        build_model(ModelConfig(path=path, family=family))
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_a_saved_plugin_model_needs_its_family(tmp_path):
    ToyEditAdapter.build_tiny(["Remove the red circle"]).save_pretrained(tmp_path / "model")
    with pytest.raises(EditR1Error, match="unknown model family 'ToyEditPipeline'"):
        load_adapter(tmp_path / "model")
    assert isinstance(build_model(ModelConfig(path=str(tmp_path / "model"), family=FAMILY)), ToyEditAdapter)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("no_such_module:Reward", None,
         "reward.name: 'no_such_module:Reward': cannot import no_such_module (No module named 'no_such_module')"),
        ("toy_plugin:FAMILY", None, "reward.name: 'toy_plugin:FAMILY': module toy_plugin has no 'FAMILY'"),
        (REWARD, {"temperature": 2}, f"reward.options for {REWARD!r}: "),
    ],
)
def test_a_reward_that_does_not_resolve_is_a_one_line_error(name, options, expected):
    with pytest.raises(EditR1Error) as error:
        build_reward(name, options)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
