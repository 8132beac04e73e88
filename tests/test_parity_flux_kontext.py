"""The adapter's sampler reproduces diffusers' FluxKontextPipeline on tiny random weights."""

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux import pipeline_flux_kontext
from PIL import Image

from editr1.models.flux_kontext import FluxKontextAdapter
from editr1.models.tiny_flux_kontext import build_tiny_flux_kontext
from editr1.sampling.generate import generate

SIZE = 32
PROMPTS = ["Change the red circle to blue", "Remove the square"]


@pytest.fixture(scope="module")
def adapter():
    return build_tiny_flux_kontext(PROMPTS, seed=0)


def _images(n: int, width: int = SIZE, height: int = SIZE) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(n)]


def _pipeline(adapter) -> FluxKontextPipeline:
    pipe = FluxKontextPipeline(
        scheduler=adapter.scheduler,
        vae=adapter.codec.vae,
        text_encoder=adapter.text_encoder,
        tokenizer=adapter.tokenizer,
        text_encoder_2=adapter.text_encoder_2,
        tokenizer_2=adapter.tokenizer_2,
        transformer=adapter.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, images, noise, steps, guidance, output_type, **kwargs):
    # `max_area` pins the target to SIZE x SIZE (the pipeline rescales it to 1024^2 by default).
    return pipe(
        image=images, prompt=PROMPTS, height=SIZE, width=SIZE, max_area=SIZE * SIZE, num_inference_steps=steps,
        guidance_scale=guidance, latents=noise.clone(), output_type=output_type,
        max_sequence_length=FluxKontextAdapter.max_sequence_length, **kwargs,
    ).images


def test_adapter_sampler_matches_pipeline_at_batch_2(adapter):
    pipe = _pipeline(adapter)
    images = _images(2)
    steps, guidance = 4, 2.5
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    noise = torch.randn(2, seq, channels, generator=torch.Generator().manual_seed(7))

    expected_latents = _run(pipe, images, noise, steps, guidance, "latent", _auto_resize=False)
    expected = _run(pipe, images, noise, steps, guidance, "np", _auto_resize=False)

    conditions = adapter.encode_conditions([[im] for im in images], PROMPTS, SIZE, SIZE)
    sigmas = adapter.sigmas(steps, SIZE, SIZE)
    assert torch.allclose(sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    latents = generate(adapter, conditions, noise, sigmas, "euler", guidance=guidance)
    pixels = adapter.decode_latents(latents, SIZE, SIZE).permute(0, 2, 3, 1).numpy()

    assert torch.allclose(latents, expected_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pixels, expected, atol=1e-4)
    # The test can fail: the samples differ from each other, and the guidance value matters.
    assert (latents[0] - latents[1]).abs().mean() > 1e-2
    assert np.abs(pixels[0] - pixels[1]).mean() > 1e-3
    other = generate(adapter, conditions, noise, sigmas, "euler", guidance=4.0)
    assert (other - latents).abs().mean() > 1e-4
    # No guidance given: the family default, 2.5.
    assert torch.equal(generate(adapter, conditions, noise, sigmas, "euler"), latents)


def test_true_cfg_matches_the_pipeline_without_renormalisation(adapter):
    # FluxKontextPipeline's `true_cfg_scale` is plain CFG: `generate`'s Qwen-style norm rescaling
    # (cfg_renorm, on by default) must be off to match it.
    pipe = _pipeline(adapter)
    images = _images(2)
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    noise = torch.randn(2, seq, channels, generator=torch.Generator().manual_seed(5))
    expected = _run(pipe, images, noise, 3, 2.5, "latent", _auto_resize=False, negative_prompt=[" "] * 2,
                    true_cfg_scale=3.0)
    conditions = adapter.encode_conditions([[im] for im in images], PROMPTS, SIZE, SIZE)
    negative = adapter.encode_conditions([[im] for im in images], [" "] * 2, SIZE, SIZE)
    sigmas = adapter.sigmas(3, SIZE, SIZE)
    latents = generate(adapter, conditions, noise, sigmas, "euler", 3.0, negative, cfg_renorm=False, guidance=2.5)
    assert torch.allclose(latents, expected, atol=1e-4, rtol=1e-4)
    renormed = generate(adapter, conditions, noise, sigmas, "euler", 3.0, negative, guidance=2.5)
    assert (renormed - expected).abs().max() > 1e-3


def test_condition_area_matches_the_pipelines_auto_resize(adapter, monkeypatch):
    # The preferred Kontext resolutions, shrunk to a toy scale so the reference stays small; at
    # condition_area = 1024^2 the adapter must pick what the pipeline's `_auto_resize` picks.
    monkeypatch.setattr(pipeline_flux_kontext, "PREFERRED_KONTEXT_RESOLUTIONS", [(24, 40), (32, 32), (40, 24)])
    monkeypatch.setattr(adapter, "condition_area", 1024 * 1024)
    pipe = _pipeline(adapter)
    images = _images(2, width=48, height=32)  # 3:2, nearest preferred: 40x24
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    noise = torch.randn(2, seq, channels, generator=torch.Generator().manual_seed(3))
    expected = _run(pipe, images, noise, 2, 2.5, "latent")

    conditions = adapter.encode_conditions([[im] for im in images], PROMPTS, SIZE, SIZE)
    assert conditions.shared["token_grids"] == ((4, 4), (3, 5))  # 24x40 pixels, /4 VAE, /2 patches
    latents = generate(adapter, conditions, noise, adapter.sigmas(2, SIZE, SIZE), "euler", guidance=2.5)
    assert torch.allclose(latents, expected, atol=1e-4, rtol=1e-4)


def test_batched_conditions_match_single_encoding(adapter):
    images = _images(2)
    both = adapter.encode_conditions([[im] for im in images], PROMPTS, SIZE, SIZE)
    one = adapter.encode_conditions([[images[1]]], PROMPTS[1:], SIZE, SIZE)
    for key in ("prompt_embeds", "pooled_prompt_embeds", "image_tokens"):
        assert torch.allclose(both.tensors[key][1], one.tensors[key][0], atol=1e-5), key
    assert not torch.allclose(both.tensors["pooled_prompt_embeds"][0], both.tensors["pooled_prompt_embeds"][1])
    assert both.shared == one.shared
