"""Bad input to `editr1 train` is a one-line error naming the file and line, not a traceback."""

import json
import shutil

import pytest

from editr1.cli.main import main


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
