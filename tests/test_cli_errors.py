"""Bad input to the CLI is a one-line error naming the file and line or the field, not a traceback or noise."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from editr1.cli.main import main, silence_known_warnings
from editr1.config import ModelConfig, TrainConfig, RewardConfig, SFTConfig, load_config
from editr1.errors import EditR1Error
from editr1.serve.config import ServeConfig
from editr1.tasks.shapes import SHIPPED_BASE
from editr1.tasks.shapes.config import JudgeDistillConfig
from editr1.trainer.model_loading import build_model

REPO = Path(__file__).resolve().parents[1]


def _dataset_with(tmp_path, shapes_data, bad_line: str):
    folder = tmp_path / "data"
    shutil.copytree(shapes_data, folder)
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines[2] = bad_line
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _train(capsys, folder, tmp_path):
    code = main(["train", "--set", f"data.train={folder / 'train.jsonl'}", "--set", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "case, bad_row, expected",
    [
        ("missing image", {"id": "x", "image": "images/nope.png", "prompt": "Remove the red circle"}, "field 'image'"),
        ("corrupt png", {"id": "x", "image": "corrupt.png", "prompt": "Remove the red circle"}, "field 'image'"),
        ("empty prompt", {"id": "x", "image": "images/train-00000.png", "prompt": ""}, "field 'prompt'"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, shapes_data, capsys, case, bad_row, expected):
    folder = _dataset_with(tmp_path, shapes_data, json.dumps(bad_row))
    (folder / "corrupt.png").write_bytes((folder / "images" / "train-00000.png").read_bytes()[:60])
    code, err = _train(capsys, folder, tmp_path)
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert f"{folder / 'train.jsonl'}:3" in err and expected in err


def test_invalid_json_line(tmp_path, shapes_data, capsys):
    folder = _dataset_with(tmp_path, shapes_data, '{"id": "x", "image": ')
    code, err = _train(capsys, folder, tmp_path)
    assert code != 0 and len(err.splitlines()) == 1
    assert f"{folder / 'train.jsonl'}:3" in err and "JSON" in err


def test_config_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("rollout:\n  group_sise: 4\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.yaml: rollout.group_sise: unknown field" in err and "group_size" in err
    assert main(["train", "--set", "rollout.group_size=eight"]) == 2
    assert "rollout.group_size: expected int" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err


def test_missing_jsonl_and_model(tmp_path, capsys):
    assert main(["train", "--set", f"data.train={tmp_path / 'none.jsonl'}"]) == 2
    assert "none.jsonl" in capsys.readouterr().err


# ---- config errors come alone, before the heavy imports and their warnings ------------------------


def _cli(cwd, *args):
    """`editr1 ARGS` in a fresh process: library warnings and import-time output are what the user sees."""
    return subprocess.run([sys.executable, "-m", "editr1.cli.main", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_config_error_is_the_only_line_on_stderr(tmp_path):
    result = _cli(tmp_path, "train", REPO / "configs" / "qwen_image_edit_nft.yaml", "--set", "rollout.group_sise=3")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "rollout.group_sise: unknown field" in result.stderr


def test_known_harmless_library_warnings_are_silenced(tmp_path, shapes_data):
    # Past the heavy imports and the model build (torchvision fallback, diffusers' float32 notice), then an error.
    result = _cli(tmp_path, "train", "--set", f"data.train={shapes_data / 'train.jsonl'}", "--set", "data.heldout=null",
                  "--set", "reward.name=nope", "--set", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and "reward.name: unknown reward 'nope'" in result.stderr


def test_only_the_known_harmless_messages_are_filtered():
    silence_known_warnings()
    for name, kept, dropped in [
        ("transformers.utils.import_utils", "`CLIPImageProcessor` requires a newer tokenizers",
         "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"),
        ("diffusers.models.modeling_utils", "There are modules in X that should be kept in float32: ['norm']",
         "There are modules in X that should be kept in float32: []. Casting directly with `to()`"),
    ]:
        logger = logging.getLogger(name)
        assert logger.filter(logger.makeRecord(name, logging.WARNING, __file__, 0, kept, (), None))
        assert not logger.filter(logger.makeRecord(name, logging.WARNING, __file__, 0, dropped, (), None))


# ---- --help: every `--set` example is a field of that command's config ------------------------------

HELP_CONFIGS = {
    ("sft",): SFTConfig,
    ("train",): TrainConfig,
    ("judge", "distill"): JudgeDistillConfig,
    ("serve-reward",): ServeConfig,
    ("eval", "reward-alignment"): RewardConfig,
}


@pytest.mark.parametrize("command", list(HELP_CONFIGS), ids=" ".join)
def test_help_examples_are_fields_of_the_commands_config(command, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    examples = re.findall(r"e\.g\.\s+--set\s+(\S+=[^\s)]+)", capsys.readouterr().out)
    assert examples, f"no --set example in `editr1 {' '.join(command)} --help`"
    config = tmp_path / "config.yaml"  # the judge server has a required field
    config.write_text("model: some/judge\n" if HELP_CONFIGS[command] is ServeConfig else "{}\n")
    for example in examples:
        load_config(HELP_CONFIGS[command], config, [example])  # raises on an unknown field or bad value


# ---- model.family is checked, not ignored ----------------------------------------------------------


@pytest.mark.parametrize(
    "path, family, expected",
    [
        ("tiny:qwen-image-edit", "nope", ["model.family: unknown model family 'nope'; known: ['flux-kontext', "]),
        ("tiny:qwen-image-edit", "flux-kontext",
         ["model.family: 'flux-kontext' contradicts model.path tiny:qwen-image-edit (a qwen-image-edit model)"]),
        (str(SHIPPED_BASE), "flux-kontext",
         ["model.family: 'flux-kontext' contradicts ", "model_index.json (a qwen-image-edit model)"]),
    ],
)
def test_a_wrong_model_family_is_an_error(path, family, expected):
    with pytest.raises(EditR1Error) as error:
        build_model(ModelConfig(path=path, family=family))
    assert all(fragment in str(error.value) for fragment in expected), error.value


def test_model_family_names_a_folder_whose_pipeline_class_is_unknown(tmp_path):
    # A folder saved under another pipeline class name (a fork, `DiffusionPipeline`): the family says how to load it.
    folder = tmp_path / "base"
    shutil.copytree(SHIPPED_BASE, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "MyEditPipeline"}))
    with pytest.raises(EditR1Error, match="unknown model family 'MyEditPipeline'"):
        build_model(ModelConfig(path=str(folder)))
    assert build_model(ModelConfig(path=str(folder), family="qwen-image-edit")).family == "qwen-image-edit"
    assert build_model(ModelConfig(path="tiny:flux-kontext", family="flux-kontext")).family == "flux-kontext"


# ---- a --set typo is blamed on the --set, not on the YAML file ----------------------------------------


def test_a_set_typo_is_blamed_on_the_set_not_the_file(tmp_path, capsys):
    config = tmp_path / "qie.yaml"
    config.write_text("rollout:\n  group_size: 4\n")
    assert main(["train", str(config), "--set", "rollout.group_sise=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("editr1: error: --set rollout.group_sise=3: rollout.group_sise: unknown field"), err
    assert "qie.yaml" not in err
    # A bad value given by --set, and a whole section replaced by --set, are blamed on it too.
    assert main(["train", str(config), "--set", "rollout.group_size=eight"]) == 2
    assert "--set rollout.group_size=eight: rollout.group_size: expected int" in capsys.readouterr().err
    assert main(["train", str(config), "--set", "rollout={group_sise: 3}"]) == 2
    assert "--set rollout={group_sise: 3}: rollout.group_sise: unknown field" in capsys.readouterr().err
    # The file's own mistakes are still the file's.
    config.write_text("rollout:\n  group_sise: 4\n")
    assert main(["train", str(config), "--set", "rollout.steps=3"]) == 2
    assert f"{config}: rollout.group_sise: unknown field" in capsys.readouterr().err


def test_a_set_may_supply_what_the_file_lacks():
    # `editr1 serve-reward --set model=...` with no config file: the defaults alone are not a valid config.
    assert load_config(ServeConfig, None, ["model=some/judge"]).model == "some/judge"
