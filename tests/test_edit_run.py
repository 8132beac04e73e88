"""`editr1 edit --run RUN_DIR`: the run's own base model and final weights, on faked LoRA and full-FT runs."""

import json
import shutil

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from editr1.cli.edit import edit_image
from editr1.cli.main import main
from editr1.data.images import load_image
from editr1.models.lora_io import LoraSpec, load_lora
from editr1.models.registry import build_tiny, load_adapter

PROMPT = "make it red"
#: Conditioning at 64x64 for a 32x32 output: an edit that ignored the recorded area would differ.
CONDITION_AREA = 64 * 64


def _record(run, **fields):
    record = {"base": "base_model", "family": "qwen-image-edit", "dtype": "float32", "condition_area": None,
              "train_mode": "lora", "final": "final"} | fields
    (run / "model.json").write_text(json.dumps(record))


def _randomize(parameters, pattern, std):
    with torch.no_grad():
        for name, p in parameters:
            if pattern in name:
                p.normal_(0, std, generator=torch.Generator().manual_seed(len(name)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished LoRA run (recorded condition area) and a finished full fine-tuning run, both on a tiny base."""
    root = tmp_path_factory.mktemp("runs")
    lora_run, full_run = root / "lora-run", root / "full-run"
    base = build_tiny("tiny:qwen-image-edit", [PROMPT], 0)
    for run in (lora_run, full_run):
        base.save_pretrained(run / "base_model")
    _record(lora_run, condition_area=CONDITION_AREA)
    _record(full_run, train_mode="full")

    tuned = load_adapter(lora_run / "base_model")
    tuned.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8.0, target_modules=list(tuned.lora_target_modules)))
    _randomize(tuned.transformer.named_parameters(), "lora_B", 0.3)
    spec = LoraSpec(4, 8.0, tuple(tuned.lora_target_modules))
    tuned.save_lora(get_peft_model_state_dict(tuned.transformer), lora_run / "final", spec)

    full = load_adapter(full_run / "base_model")
    _randomize(full.transformer.named_parameters(), "to_out", 0.05)
    full.save_pretrained(full_run / "final")
    return lora_run, full_run


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("run-images") / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _edit(source, out, *where):
    # Without the pipeline's sizing (the default), a run conditions at its recorded area.
    return main(["edit", *map(str, where), "--image", str(source), "--prompt", PROMPT, "--out", str(out),
                 "--steps", "2", "--seed", "3", "--no-pipeline-sizing"])


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_lora_run_edits_as_its_base_plus_lora_with_the_recorded_condition_area(runs, source, tmp_path):
    lora_run, _ = runs
    assert _edit(source, tmp_path / "run.png", "--run", lora_run) == 0

    direct = load_adapter(lora_run / "base_model")
    load_lora(direct, lora_run / "final")
    direct.condition_area = CONDITION_AREA
    expected = edit_image(direct, [load_image(source)], PROMPT, 32, 32, steps=2, cfg_scale=4.0, seed=3)
    assert np.array_equal(_pixels(tmp_path / "run.png"), np.asarray(expected, dtype=np.int16))

    # The recorded area mattered, and so did the LoRA.
    assert _edit(source, tmp_path / "no-area.png", "--model", lora_run / "base_model", "--lora", lora_run / "final") == 0
    assert _edit(source, tmp_path / "base.png", "--model", lora_run / "base_model") == 0
    run = _pixels(tmp_path / "run.png")
    assert not np.array_equal(run, _pixels(tmp_path / "no-area.png"))
    assert np.abs(_pixels(tmp_path / "no-area.png") - _pixels(tmp_path / "base.png")).mean() > 1.0


def test_full_finetuning_run_edits_with_its_final_model(runs, source, tmp_path):
    _, full_run = runs
    assert _edit(source, tmp_path / "run.png", "--run", full_run) == 0
    assert _edit(source, tmp_path / "final.png", "--model", full_run / "final") == 0
    assert _edit(source, tmp_path / "base.png", "--model", full_run / "base_model") == 0
    assert (tmp_path / "run.png").read_bytes() == (tmp_path / "final.png").read_bytes()
    assert np.abs(_pixels(tmp_path / "run.png") - _pixels(tmp_path / "base.png")).mean() > 1.0


def _copy_run(run, folder, final=True):
    shutil.copytree(run, folder, ignore=None if final else shutil.ignore_patterns("final"))
    return folder


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no model.json", "not a run folder (written by editr1 train)"),
        ("no folder", "no such folder"),
        ("not finished", "has not finished: no final/ yet"),
        ("with --lora", "--run brings its own weights"),
        ("family mismatch", "model.json: family: 'flux-kontext' contradicts"),
        ("unknown family", "model.json: family: unknown model family 'nope'"),
        ("bad train_mode", "model.json: train_mode: expected 'lora' or 'full', got 'qlora'"),
        ("missing field", "model.json: missing field(s) base"),
        ("missing base", "model.json: base: elsewhere: no such model folder"),
        ("not json", "model.json: not valid JSON"),
    ],
)
def test_bad_run_folders_are_one_line_errors(runs, source, tmp_path, capsys, case, expected):
    lora_run, _ = runs
    run = tmp_path / "run"
    extra = []
    if case == "no model.json":
        (run / "final").mkdir(parents=True)
    elif case == "no folder":
        pass
    elif case == "not finished":
        _copy_run(lora_run, run, final=False)
    else:
        _copy_run(lora_run, run)
        record = json.loads((run / "model.json").read_text())
        if case == "with --lora":
            extra = ["--lora", lora_run / "final"]
        elif case == "family mismatch":
            _record(run, **{**record, "family": "flux-kontext"})
        elif case == "unknown family":
            _record(run, **{**record, "family": "nope"})
        elif case == "bad train_mode":
            _record(run, **{**record, "train_mode": "qlora"})
        elif case == "missing field":
            del record["base"]
            (run / "model.json").write_text(json.dumps(record))
        elif case == "missing base":
            _record(run, **{**record, "base": "elsewhere"})
        elif case == "not json":
            (run / "model.json").write_text("{")
    out = tmp_path / "out.png"
    assert _edit(source, out, "--run", run, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("editr1: error:") and expected in err, err
    assert not out.exists()


def test_run_and_model_are_mutually_exclusive(runs, source, tmp_path, capsys):
    lora_run, _ = runs
    with pytest.raises(SystemExit) as exit_info:
        _edit(source, tmp_path / "out.png", "--run", lora_run, "--model", lora_run / "base_model")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
