"""The real loading code, exercised on tiny models saved to disk in diffusers format."""

import json

import pytest
import torch
from PIL import Image

from editr1.errors import EditR1Error
from editr1.models.registry import load_adapter
from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit
from editr1.tasks.shapes import SHIPPED_BASE


def _velocity(adapter):
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    conditions = adapter.encode_conditions([[image], [image]], ["Remove the red circle", "Add a blue square"], 32, 32)
    tokens = torch.randn(2, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return adapter.velocity(tokens, torch.tensor([0.3, 0.8]), conditions)


@pytest.mark.parametrize("codec", ["pixel", "vae"])
def test_save_and_load_round_trip(tmp_path, codec):
    adapter = build_tiny_qwen_image_edit(["Remove the red circle", "Add a blue square"], codec=codec)
    adapter.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["_class_name"] == "QwenImageEditPipeline"
    loaded = load_adapter(tmp_path / "model")
    assert type(loaded) is type(adapter)
    assert loaded.prompt_drop_index == adapter.prompt_drop_index
    assert torch.allclose(_velocity(adapter), _velocity(loaded), atol=1e-6)
    assert torch.equal(loaded.sigmas(6, 32, 32), adapter.sigmas(6, 32, 32))


def test_pixel_codec_is_exact():
    adapter = build_tiny_qwen_image_edit(codec="pixel")
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    tokens = adapter.encode_images(pixels)
    assert tokens.shape == (2, *adapter.latent_token_shape(32, 32))
    assert torch.allclose(adapter.decode_latents(tokens, 32, 32), pixels, atol=1e-6)


def test_loading_errors(tmp_path):
    with pytest.raises(EditR1Error, match="no such model folder"):
        load_adapter(tmp_path / "nothing" / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EditR1Error, match="model_index.json"):
        load_adapter(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(EditR1Error, match="unknown model family 'StableDiffusionPipeline'"):
        load_adapter(tmp_path / "other")


def test_a_model_shipped_in_the_package_is_named_as_configs_name_it():
    from editr1.hub import resolve_model_path

    assert resolve_model_path("editr1:tasks/shapes/assets/shapes_base") == SHIPPED_BASE.resolve()
    with pytest.raises(EditR1Error, match="editr1:nothing: no such model folder in the editr1 package"):
        resolve_model_path("editr1:nothing")


def test_hub_id_unavailable_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EditR1Error, match="could not be fetched"):
        load_adapter("editr1-test/definitely-not-cached")


def test_image_size_must_fit_the_patch_grid():
    adapter = build_tiny_qwen_image_edit(codec="pixel")
    with pytest.raises(EditR1Error, match="multiple of 4"):
        adapter.latent_token_shape(30, 32)


def test_condition_area_resizes_the_source_like_the_pipeline():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import (
        calculate_dimensions,
    )

    adapter = build_tiny_qwen_image_edit(["Remove the red circle"], codec="pixel")
    wide = Image.new("RGB", (96, 32), (255, 0, 0))
    adapter.condition_area = 64 * 64
    conditions = adapter.encode_conditions([[wide]], ["Remove the red circle"], 32, 32)
    width, height, _ = calculate_dimensions(64 * 64, 96 / 32)
    grid = (1, height // 4, width // 4)  # pixel codec /2, then 2x2 patches
    assert conditions.shared["img_shapes"] == [(1, 8, 8), grid]
    assert conditions.tensors["image_tokens"].shape[1] == grid[1] * grid[2]
    with torch.no_grad():
        v = adapter.velocity(torch.randn(1, 64, 48), torch.tensor([0.5]), conditions)
    assert v.shape == (1, 64, 48)
    with pytest.raises(EditR1Error, match="different condition sizes"):
        adapter.encode_conditions([[wide], [Image.new("RGB", (32, 96))]], ["a", "b"], 32, 32)


def test_bfloat16_weights_keep_the_callers_dtype():
    adapter = build_tiny_qwen_image_edit(["Remove the red circle"], codec="pixel")
    adapter.transformer.to(torch.bfloat16)
    image = Image.new("RGB", (32, 32))
    conditions = adapter.encode_conditions([[image]], ["Remove the red circle"], 32, 32)
    tokens = torch.randn(1, 64, 48, requires_grad=True)
    v = adapter.velocity(tokens, torch.tensor([0.5]), conditions)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.sum().backward()
    assert tokens.grad is not None


def test_lora_adapters_stay_float32_over_a_bfloat16_base():
    from editr1.models.lora_io import LoraSpec
    from editr1.trainer.policies import PolicySet

    adapter = build_tiny_qwen_image_edit(["Remove the red circle"], codec="pixel")
    adapter.transformer.to(torch.bfloat16)
    policies = PolicySet(adapter.transformer, LoraSpec(4, 8, tuple(adapter.lora_target_modules)), need_reference=True)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in policies.trainable_parameters())
    conditions = adapter.encode_conditions([[Image.new("RGB", (32, 32))]], ["Remove the red circle"], 32, 32)
    with policies.use("trained") as trained:
        v = adapter.velocity(torch.randn(1, 64, 48), torch.tensor([0.5]), conditions, transformer=trained)
        v.square().mean().backward()
    grads = [p.grad for p in policies.trainable_parameters() if p.grad is not None]
    # All but the last block's text-stream output projection (its output is discarded) get gradients.
    assert len(grads) >= len(policies.trainable_parameters()) - 2
    assert all(g.dtype == torch.float32 for g in grads)


def test_2509_and_2511_share_a_pipeline_and_are_told_apart_by_zero_cond_t(tmp_path):
    """Both save `QwenImageEditPlusPipeline`; the transformer's `zero_cond_t` decides the family, and a given
    family that contradicts it is refused."""
    from editr1.models.registry import build_tiny, detect_family

    for family in ("qwen-image-edit-plus", "qwen-image-edit-2511"):
        build_tiny(f"tiny:{family}", ["edit"], seed=0).save_pretrained(tmp_path / family)
        assert json.loads((tmp_path / family / "model_index.json").read_text())["_class_name"] == "QwenImageEditPlusPipeline"
        assert detect_family(tmp_path / family) == family
    with pytest.raises(EditR1Error, match=r"'qwen-image-edit-plus' contradicts .* \(a qwen-image-edit-2511 model\)"):
        detect_family(tmp_path / "qwen-image-edit-2511", "qwen-image-edit-plus")
