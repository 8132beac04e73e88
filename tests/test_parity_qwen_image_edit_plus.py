"""The Qwen-Image-Edit-2509 and -2511 adapters reproduce diffusers' QwenImageEditPlusPipeline on tiny random
weights, sample by sample, when they run several samples (each with its own references) in one batch. 2511
is the same pipeline over a transformer with `zero_cond_t` on (reference tokens modulated at t = 0)."""

import math

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from PIL import Image

from editr1.models.registry import adapter_class
from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus
from editr1.sampling.generate import generate

SIZE = 32
PROMPTS = ["Change the red circle to blue", "Remove the square and add a star"]


FAMILIES = ["qwen-image-edit-plus", "qwen-image-edit-2511"]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request):
    cls = adapter_class(request.param)
    return build_tiny_qwen_image_edit_plus(PROMPTS, codec="vae", seed=0, adapter=cls, zero_cond_t=cls.zero_cond_t)


def test_zero_cond_t_changes_the_velocity():
    """2511's option is not a no-op on these weights, so its parity test above says something of it."""
    on, off = (build_tiny_qwen_image_edit_plus(PROMPTS, codec="vae", seed=0, zero_cond_t=z) for z in (True, False))
    assert all(torch.equal(a, b) for a, b in zip(on.transformer.state_dict().values(), off.transformer.state_dict().values()))
    conditions = on.encode_conditions([[_image(1)]], PROMPTS[:1], SIZE, SIZE)
    seq, channels = on.latent_token_shape(SIZE, SIZE)
    tokens = torch.randn(1, seq, channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = on.velocity(tokens, torch.tensor([0.7]), conditions) - off.velocity(tokens, torch.tensor([0.7]), conditions)
    assert difference.abs().mean() > 1e-3


def _image(seed: int, width: int = SIZE, height: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _at_target_size(area, ratio):
    return SIZE, SIZE


def _scaled_pipeline_sizes(area, ratio):
    """The pipeline's sizing (aspect kept, two areas), scaled from 1024^2 / 384^2 to 32^2 / 16^2, multiples of 8."""
    side = SIZE if area == pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE else SIZE // 2
    return round(side * math.sqrt(ratio) / 8) * 8, round(side / math.sqrt(ratio) / 8) * 8


def _pipeline(adapter, monkeypatch, sizes) -> QwenImageEditPlusPipeline:
    # The pipeline sizes references to ~1024^2 (VAE) and ~384^2 (VL encoder) areas: scale them down.
    monkeypatch.setattr(pipeline_qwenimage_edit_plus, "calculate_dimensions", sizes)
    pipe = QwenImageEditPlusPipeline(
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


def _run_pipeline(pipe, references, prompt, noise, steps, cfg_scale):
    """One sample (the pipeline takes one prompt at a time): its latents and decoded image."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    image = pipe(
        image=references, prompt=prompt, negative_prompt=" " if cfg_scale > 1 else None, true_cfg_scale=cfg_scale,
        height=SIZE, width=SIZE, num_inference_steps=steps, latents=noise.clone(), output_type="np",
        callback_on_step_end=keep_latents,
    ).images
    return final["latents"], image


# Per sample, its own references; with the pipeline's sizing the two samples' layouts differ (a
# landscape and a square first reference), so the adapter's batch runs in two groups.
CASES = {
    "1 ref, at target size": (1, 1.0, _at_target_size),
    "2 refs, at target size": (2, 1.0, _at_target_size),
    "1 ref, pipeline sizing, true CFG": (1, 3.0, _scaled_pipeline_sizes),
    "2 refs, pipeline sizing, true CFG": (2, 3.0, _scaled_pipeline_sizes),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_sampler_matches_pipeline_at_batch_2(adapter, monkeypatch, case):
    num_refs, cfg_scale, sizes = CASES[case]
    pipe = _pipeline(adapter, monkeypatch, sizes)
    if sizes is _scaled_pipeline_sizes:
        adapter.use_pipeline_sizing()
    else:
        adapter.condition_area = adapter.text_condition_area = None
    references = [[_image(1, 48, 32), _image(2)][:num_refs], [_image(3), _image(4, 32, 48)][:num_refs]]
    steps = 4
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    noise = torch.randn(2, seq, channels, generator=torch.Generator().manual_seed(7))

    expected = [_run_pipeline(pipe, references[i], PROMPTS[i], noise[i : i + 1], steps, cfg_scale) for i in range(2)]
    expected_latents = torch.cat([latents for latents, _ in expected])
    expected_pixels = np.concatenate([image for _, image in expected])

    conditions = adapter.encode_conditions(references, PROMPTS, SIZE, SIZE)
    negative = adapter.encode_conditions(references, [" "] * 2, SIZE, SIZE) if cfg_scale > 1 else None
    grids = conditions.tensors["reference_grids"]
    assert (grids[:, :, 0] > 0).sum(1).tolist() == [num_refs] * 2
    if sizes is _scaled_pipeline_sizes:
        assert not torch.equal(grids[0], grids[1])  # landscape (40x24 pixels: 5x3 tokens) vs square: two layouts
    sigmas = adapter.sigmas(steps, SIZE, SIZE)
    assert torch.allclose(sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    latents = generate(adapter, conditions, noise, sigmas, "euler", cfg_scale, negative)
    pixels = adapter.decode_latents(latents, SIZE, SIZE).permute(0, 2, 3, 1).numpy()

    assert torch.allclose(latents, expected_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pixels, expected_pixels, atol=1e-4)
    # The samples differ from each other: the test is not comparing constants.
    assert np.abs(pixels[0] - pixels[1]).mean() > 1e-3
    assert (latents - noise).abs().mean() > 1e-2


def test_mixed_reference_counts_in_one_batch_match_each_sample_alone(adapter):
    """Row by row, a batch mixing a 1-reference and a 2-reference sample (selected, repeated and
    reordered as the trainer's micro-batches are) gives the velocity of that sample encoded and run alone."""
    adapter.condition_area = adapter.text_condition_area = None
    samples = [([_image(5)], PROMPTS[0]), ([_image(6), _image(7)], PROMPTS[1])]
    both = adapter.encode_conditions([s for s, _ in samples], [p for _, p in samples], SIZE, SIZE)
    alone = [adapter.encode_conditions([s], [p], SIZE, SIZE) for s, p in samples]
    rows = [1, 0, 1, 0]
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    tokens = torch.randn(len(rows), seq, channels, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.9, 0.6, 0.3, 0.75])
    with torch.no_grad():
        batched = adapter.velocity(tokens, sigma, both.select(rows))
        for i, row in enumerate(rows):
            single = adapter.velocity(tokens[i : i + 1], sigma[i : i + 1], alone[row])
            assert torch.allclose(batched[i], single[0], atol=1e-5, rtol=0), (i, (batched[i] - single[0]).abs().max())
        # The check can fail: the public Edit-R1 code gave every row the first sample's references.
        shared = adapter.encode_conditions([samples[0][0]] * 2, [p for _, p in samples], SIZE, SIZE)
        wrong = adapter.velocity(tokens[:1], sigma[:1], shared.select([1]))
    assert (wrong[0] - batched[0]).abs().mean() > 1e-3  # 100x the tolerance above
