"""`editr1 edit` on each tiny preset saved to disk: sizes, determinism, LoRA, progress, and one-line errors."""

import json
import re

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from tiny_runs import tiny_presets

from editr1.cli.main import main
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import build_tiny, load_adapter
from editr1.sampling.generate import generate

PRESETS = tiny_presets()
PROMPT = "Change the red circle to blue"


def _save_image(path, seed=0, size=(32, 32)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per preset: the saved model folder and a LoRA exported for it."""
    root = tmp_path_factory.mktemp("edit-models")
    saved = {}
    for preset in PRESETS:
        folder = root / preset.split(":")[1]
        build_tiny(preset, [PROMPT, "Remove the square"], seed=0).save_pretrained(folder)
        adapter = load_adapter(folder)
        spec = LoraSpec(4, 8.0, tuple(adapter.lora_target_modules))
        adapter.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8.0, target_modules=list(spec.target_modules)))
        with torch.no_grad():
            for name, p in adapter.transformer.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
        adapter.save_lora(get_peft_model_state_dict(adapter.transformer), root / f"{folder.name}-lora", spec)
        saved[preset] = (folder, root / f"{folder.name}-lora")
    return saved


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _save_image(tmp_path_factory.mktemp("edit-images") / "in.png")


def _edit(model, images, out, *extra):
    # At the output size: the pipeline's sizing (the default, tested in test_cli_sizing) is slower.
    args = ["edit", "--model", str(model), "--prompt", PROMPT, "--out", str(out), "--steps", "2", "--no-pipeline-sizing"]
    for image in images:
        args += ["--image", str(image)]
    return main(args + [str(e) for e in extra])


@pytest.mark.parametrize("preset", PRESETS)
def test_edit_writes_the_requested_size_deterministically_and_the_lora_changes_it(models, source, tmp_path, preset, capsys):
    model, lora = models[preset]
    assert _edit(model, [source], tmp_path / "a.png", "--size", "40x24", "--seed", "3") == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(tmp_path / "a.png") as image:
        assert image.size == (40, 24) and image.mode == "RGB" and image.format == "PNG"
    assert _edit(model, [source], tmp_path / "b.png", "--size", "40x24", "--seed", "3") == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert _edit(model, [source], tmp_path / "lora.png", "--size", "40x24", "--seed", "3", "--lora", lora) == 0
    plain = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float32)
    tuned = np.asarray(Image.open(tmp_path / "lora.png"), dtype=np.float32)
    assert np.abs(plain - tuned).mean() > 1.0  # on a 0..255 scale
    # Another seed, another edit: the bytes compared above are not constant.
    assert _edit(model, [source], tmp_path / "c.png", "--size", "40x24", "--seed", "4") == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_default_size_follows_the_image_and_height_alone_keeps_its_aspect(models, tmp_path):
    model, _ = models["tiny:flux-kontext"]
    wide = _save_image(tmp_path / "wide.png", size=(48, 32))
    assert _edit(model, [wide], tmp_path / "default.png") == 0
    assert Image.open(tmp_path / "default.png").size == (48, 32)
    assert _edit(model, [wide], tmp_path / "tall.png", "--height", "16") == 0
    assert Image.open(tmp_path / "tall.png").size == (24, 16)


def test_plus_takes_several_references(models, source, tmp_path):
    model, _ = models["tiny:qwen-image-edit-plus"]
    second = _save_image(tmp_path / "ref2.png", seed=1)
    assert _edit(model, [source, second], tmp_path / "two.png", "--size", "32x32") == 0
    assert _edit(model, [source], tmp_path / "one.png", "--size", "32x32") == 0
    assert (tmp_path / "two.png").read_bytes() != (tmp_path / "one.png").read_bytes()


def _bad_cases(models, source, tmp_path):
    qwen, _ = models["tiny:qwen-image-edit"]
    plus, _ = models["tiny:qwen-image-edit-plus"]
    _, flux_lora = models["tiny:flux-kontext"]
    other = tmp_path / "sd"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(source.read_bytes()[:60])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = tmp_path / "out.png"
    return {
        "unknown family": ((other, [source], out), "unknown model family 'StableDiffusionPipeline'"),
        "missing image": ((qwen, [tmp_path / "nope.png"], out), f"file not found: {tmp_path / 'nope.png'}"),
        "corrupt image": ((qwen, [corrupt], out), f"{corrupt}"),
        "mismatched lora": ((qwen, [source], out, "--lora", flux_lora), "does not match this qwen-image-edit model"),
        "too many references": ((qwen, [source, source], out), "qwen-image-edit takes one source image"),
        "too many references (plus)": ((plus, [source] * 4, out), "takes 1 to 3 reference images"),
        "output in a file": ((qwen, [source], blocker / "out.png"), f"--out {blocker / 'out.png'}: {blocker} is not a folder"),
        "not a png": ((qwen, [source], tmp_path / "out.jpg"), "give a path ending in .png"),
        "tiny preset": (("tiny:qwen-image-edit", [source], out), "tiny presets are built in memory"),
        "bad size": ((qwen, [source], out, "--size", "big"), "expected WIDTHxHEIGHT"),
        "size not a multiple": ((qwen, [source], out, "--size", "30x30"), "must be multiples of 4"),
    }


CASES = ["unknown family", "missing image", "corrupt image", "mismatched lora", "too many references",
         "too many references (plus)", "output in a file", "not a png", "tiny preset", "bad size", "size not a multiple"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_one_line_error_with_exit_code_2(models, source, tmp_path, capsys, case):
    (model, images, out, *extra), expected = _bad_cases(models, source, tmp_path)[case]
    code = _edit(model, images, out, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    # The error is the last line (loading a model may draw a progress bar above it), on one line.
    last = err.splitlines()[-1]
    assert last.startswith("editr1: error:") and expected in last, err
    assert not out.exists()


# ---- what will run, and progress ----------------------------------------------------------------


@pytest.mark.parametrize("sampler, cfg_scale", [("euler", 1.0), ("dpmpp_2m", 4.0)])
def test_generate_reports_each_step(models, sampler, cfg_scale):
    adapter = load_adapter(models["tiny:qwen-image-edit"][0])
    image = Image.new("RGB", (32, 32))
    conditions = adapter.encode_conditions([[image]], [PROMPT], 32, 32)
    negative = adapter.encode_conditions([[image]], [" "], 32, 32)
    noise = torch.randn(1, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0))
    sigmas = adapter.sigmas(3, 32, 32)
    steps = []
    latents = generate(adapter, conditions, noise, sigmas, sampler, cfg_scale, negative,
                       on_step=lambda step, total: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(latents, generate(adapter, conditions, noise, sigmas, sampler, cfg_scale, negative))


def test_edit_says_what_will_run_and_reports_each_step_without_a_terminal(models, source, tmp_path, capsys):
    model, lora = models["tiny:qwen-image-edit"]
    assert _edit(model, [source], tmp_path / "a.png", "--steps", "3", "--lora", lora) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"editr1 edit: {model} (qwen-image-edit) + LoRA {lora}, ~32x32, 3 euler steps, "
                        "true CFG 4.0 (2 model passes a step), on cpu (float32)")
    assert [line.split(",")[0] for line in lines[1:3]] == ["sampling 32x32: step 1/3", "sampling 32x32: step 2/3"]
    assert all(re.fullmatch(r".*, \d+s elapsed, ~\d+s left", line) for line in lines[1:3]), lines
    assert lines[3].startswith("sampling 32x32: 3/3 in ") and lines[4].startswith("wrote ")
