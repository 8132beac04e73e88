"""The adapter's sampler reproduces diffusers' QwenImageEditPipeline on tiny random weights."""

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit
from PIL import Image

from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit
from editr1.sampling.generate import generate

SIZE = 32


@pytest.fixture(scope="module")
def tiny_vae_adapter():
    return build_tiny_qwen_image_edit(["Change the red circle to blue", "Remove the square"], codec="vae", seed=0)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(n)]


def _pipeline(adapter, monkeypatch) -> QwenImageEditPipeline:
    # The pipeline sizes the reference image to a 1024^2 area; pin it to the training size instead.
    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
    pipe = QwenImageEditPipeline(
        scheduler=adapter.scheduler,
        vae=adapter.codec.vae,
        text_encoder=adapter.text_encoder,
        tokenizer=adapter.processor.tokenizer,
        processor=adapter.processor,
        transformer=adapter.transformer,
    )
    pipe.prompt_template_encode_start_idx = adapter.prompt_drop_index
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_adapter_sampler_matches_pipeline_at_batch_3(tiny_vae_adapter, monkeypatch, cfg_scale):
    adapter = tiny_vae_adapter
    pipe = _pipeline(adapter, monkeypatch)
    images = _images(3)
    prompts = ["Change the red circle to blue", "Remove the square", "Change the square to red please"]
    steps = 4
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    noise = torch.randn(3, seq, channels, generator=torch.Generator().manual_seed(7))

    negative = [" "] * 3 if cfg_scale > 1 else None
    expected = pipe(
        image=images, prompt=prompts, negative_prompt=negative, true_cfg_scale=cfg_scale, height=SIZE, width=SIZE,
        num_inference_steps=steps, latents=noise.clone(), output_type="np",
    ).images
    expected_latents = pipe(
        image=images, prompt=prompts, negative_prompt=negative, true_cfg_scale=cfg_scale, height=SIZE, width=SIZE,
        num_inference_steps=steps, latents=noise.clone(), output_type="latent",
    ).images

    conditions = adapter.encode_conditions([[im] for im in images], prompts, SIZE, SIZE)
    negative_conditions = adapter.encode_conditions([[im] for im in images], [" "] * 3, SIZE, SIZE) if negative else None
    sigmas = adapter.sigmas(steps, SIZE, SIZE)
    assert torch.allclose(sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    latents = generate(adapter, conditions, noise, sigmas, "euler", cfg_scale, negative_conditions)
    pixels = adapter.decode_latents(latents, SIZE, SIZE).permute(0, 2, 3, 1).numpy()

    assert torch.allclose(latents, expected_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pixels, expected, atol=1e-4)
    # The samples differ from each other: the test is not comparing constants.
    assert np.abs(pixels[0] - pixels[1]).mean() > 1e-3


def test_batched_conditions_match_single_encoding(tiny_vae_adapter):
    adapter = tiny_vae_adapter
    images = _images(2)
    prompts = ["Remove the square", "Change the red circle to blue"]
    both = adapter.encode_conditions([[im] for im in images], prompts, SIZE, SIZE)
    one = adapter.encode_conditions([[images[1]]], prompts[1:], SIZE, SIZE)
    n = int(one.tensors["prompt_mask"].sum())
    assert torch.allclose(both.tensors["prompt_embeds"][1, :n], one.tensors["prompt_embeds"][0, :n], atol=1e-5)
    assert torch.allclose(both.tensors["image_tokens"][1], one.tensors["image_tokens"][0], atol=1e-5)
