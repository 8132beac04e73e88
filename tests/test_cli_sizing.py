"""Sizing and progress of `editr1 edit` and `editr1 eval imgedit/gedit`: one sizing default for both
(the pipeline's), an output-area cap that eval records and marks as not comparable, the tiny presets'
pixel codec conditioning on the released models' token grid, and inputs checked before any model or
judge is loaded. (A progress line per sampler step: test_edit_cli.)"""

import functools
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmark_fixtures import write_imgedit_fixture
from scripted_judge_server import ScriptedJudgeServer, imgedit_reply, marker_script
from tiny_runs import tiny_presets

from editr1.cli import edit
from editr1.cli.main import build_parser, main
from editr1.eval.benchmarks import judges
from editr1.models.registry import build_tiny

CORPUS = ["add remove change make replace the a"]
PROMPT = "make the turtle green"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sizing-model") / "qwen-image-edit"
    build_tiny("tiny:qwen-image-edit", CORPUS, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def imgedit(tmp_path_factory):
    return write_imgedit_fixture(tmp_path_factory.mktemp("sizing-data"))


def _source(path, size=(48, 32)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _edit(model, source, out, *extra):
    return main(["edit", "--model", str(model), "--image", str(source), "--prompt", PROMPT, "--out", str(out),
                 "--steps", "2", *map(str, extra)])


# ---- one sizing default -------------------------------------------------------------------------


def test_edit_and_eval_size_alike_by_default():
    parser = build_parser()
    commands = {
        "edit": ["edit", "--model", "m", "--image", "i.png", "--prompt", "p", "--out", "o.png"],
        "eval imgedit": ["eval", "imgedit", "--model", "m", "--data", "d", "--judge", "j.yaml", "--out", "o"],
        "eval gedit": ["eval", "gedit", "--model", "m", "--data", "d", "--judge", "j.yaml", "--out", "o"],
    }
    for name, argv in commands.items():
        args = parser.parse_args(argv)
        assert (args.pipeline_sizing, args.max_area) == (True, None), name
        assert parser.parse_args([*argv, "--no-pipeline-sizing"]).pipeline_sizing is False, name
        assert parser.parse_args([*argv, "--max-area", "512x384"]).max_area == "512x384", name


def test_edit_conditions_as_the_pipeline_unless_told_not_to(model, tmp_path, monkeypatch):
    areas = []
    loading = edit.load_model

    def spying(*args, **kwargs):
        adapter = loading(*args, **kwargs)
        areas.append(adapter.condition_area)
        return adapter

    monkeypatch.setattr(edit, "load_model", spying)
    source = _source(tmp_path / "in.png")
    assert _edit(model, source, tmp_path / "a.png") == 0
    assert _edit(model, source, tmp_path / "b.png", "--no-pipeline-sizing") == 0
    # The pipeline's 1024^2 pixels of 16-pixel tokens are 256^2 pixels of the tiny preset's 4-pixel tokens.
    assert areas == [256 * 256, None]


@pytest.mark.parametrize("preset", tiny_presets())
def test_a_photo_conditions_on_about_as_many_tokens_as_with_the_released_model(preset):
    """The pixel codec's tokens are 4 pixels wide, the released VAEs' 16: at the pipeline's pixel area a
    tiny preset's source would be 16 times the tokens (minutes a step on a CPU). The tiny FLUX.1 Kontext's
    VAE keeps its pipeline's sizing (the parity tests hold it to the pipeline): 8-pixel tokens."""
    adapter = build_tiny(preset, CORPUS, seed=0).use_pipeline_sizing()
    photo = Image.new("RGB", (1024, 768), (90, 120, 30))
    conditions = adapter.encode_conditions([[photo]], [PROMPT], 32, 32)
    tokens = conditions.tensors["image_tokens"].shape[1]
    released_tokens = 1024 * 1024 // 16**2
    expected = released_tokens * (4 if preset == "tiny:flux-kontext" else 1)
    assert abs(tokens - expected) < 0.1 * expected, tokens


@pytest.mark.parametrize("given, expected", [("262144", 262144), ("512x384", 512 * 384), (" 64 X 64 ", 4096)])
def test_max_area_reads_a_pixel_count_or_a_size(given, expected):
    assert edit.parse_max_area(given) == expected


@pytest.mark.parametrize("given", ["big", "0", "-5", "0x64", "1.5"])
def test_a_bad_max_area_is_a_one_line_error(model, tmp_path, capsys, given):
    assert _edit(model, _source(tmp_path / "in.png"), tmp_path / "o.png", "--max-area", given) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"editr1: error: --max-area {given}")


def test_edit_caps_the_default_output_area(model, tmp_path):
    source = _source(tmp_path / "in.png", (64, 40))
    assert _edit(model, source, tmp_path / "a.png", "--max-area", "32x20", "--no-pipeline-sizing") == 0
    assert Image.open(tmp_path / "a.png").size == (32, 20)


# ---- eval: the cap is recorded, and makes the numbers not comparable ------------------------------


def _eval(model, data, judge, out, *extra):
    return main(["eval", "imgedit", "--model", str(model), "--data", str(data), "--judge", str(judge), "--out", str(out),
                 "--official-prompts", str(data), "--steps", "2", "--limit", "2", *extra])


def _judge_yaml(tmp_path, base_url, model="gpt-4.1"):
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump({"kind": "openai", "base_url": base_url, "model": model, "timeout_s": 5.0}))
    return path


def test_eval_records_its_output_cap_and_then_says_the_numbers_are_not_comparable(model, imgedit, tmp_path):
    with ScriptedJudgeServer(marker_script(imgedit_reply), model="gpt-4.1") as server:
        judge = _judge_yaml(tmp_path, server.base_url)
        published = tmp_path / "published"
        assert _eval(model, imgedit, judge, published) == 0
        capped = tmp_path / "capped"
        assert _eval(model, imgedit, judge, capped, "--max-area", "16x16") == 0
        unsized = tmp_path / "unsized"
        assert _eval(model, imgedit, judge, unsized, "--no-pipeline-sizing") == 0
        # A folder keeps one size: another cap is refused before anything is loaded.
        assert _eval(model, imgedit, judge, capped, "--max-area", "32x32") == 2

    def results(out):
        return json.loads((out / "results.json").read_text())

    # The default cap: the released models' 1024^2 pixels, 256^2 of the tiny preset's 4-pixel tokens.
    assert json.loads((published / "generation.json").read_text())["size"] == "the source's, at most 256^2 pixels"
    assert results(published)["comparable"] and results(published)["note"] == ""
    assert json.loads((capped / "generation.json").read_text())["size"] == "the source's, at most 16^2 pixels"
    assert all(np.prod(Image.open(p).size) <= 256 for p in (capped / "edits").glob("*.png"))
    assert not results(capped)["comparable"] and "--max-area" in results(capped)["note"]
    assert "--max-area" in (capped / "samples.csv").read_text().splitlines()[0]
    assert not results(unsized)["comparable"] and "--no-pipeline-sizing" in results(unsized)["note"]


# ---- inputs before loading ----------------------------------------------------------------------


def _refuse_loading(monkeypatch):
    def loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(edit, "load_model", loading)


def test_edit_refuses_an_output_in_a_missing_folder_before_loading(model, tmp_path, capsys, monkeypatch):
    _refuse_loading(monkeypatch)
    out = tmp_path / "typo" / "deeper" / "o.png"
    assert _edit(model, _source(tmp_path / "in.png"), out) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"editr1: error: --out {out}: no such folder {out.parent}"
    assert not (tmp_path / "typo").exists()


def test_eval_reads_its_data_before_it_builds_the_judge(model, tmp_path, capsys, monkeypatch):
    built = []
    building = judges.OpenAIJudge.__init__

    @functools.wraps(building)  # the same options: build_text_judge reads them from the signature
    def flagging(self, *args, **kwargs):
        built.append(True)
        print("loading the judge's weights")
        building(self, *args, **kwargs)

    monkeypatch.setattr(judges.OpenAIJudge, "__init__", flagging)
    judge = _judge_yaml(tmp_path, "http://127.0.0.1:9/v1")
    assert _eval(model, tmp_path / "missing", judge, tmp_path / "o") == 2
    captured = capsys.readouterr()
    assert "missing" in captured.err and not built and "weights" not in captured.out


def test_train_reads_its_data_before_it_builds_the_reward(tmp_path, capsys, monkeypatch):
    from editr1.trainer import rl_trainer

    def building(*args, **kwargs):
        raise AssertionError("the reward (an in-process judge loads its weights) was built")

    monkeypatch.setattr(rl_trainer, "build_combined", building)
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "x", "image": \n')
    assert main(["train", "--set", f"data.train={data}", "--set", f"output_dir={tmp_path / 'out'}"]) == 2
    assert f"{data}:1" in capsys.readouterr().err
