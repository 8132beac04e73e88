"""The FLUX.2 [dev] adapter reproduces diffusers' Flux2Pipeline on tiny random weights, sample by sample, with one
or two references per sample and distilled guidance (the family's 4.0 and another value); a LoRA it saves loads
into the pipeline as it is; its saved folder is the pipeline's and is detected as "flux2-dev"."""

import inspect
import json

import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline
from test_parity_flux2_klein import (
    PROMPTS,
    REFERENCES,
    SIZE,
    _image,
    _noise,
    _run_pipeline,
    _velocity,
    assert_lora_round_trip,
)

from editr1.errors import EditR1Error
from editr1.models import flux2_dev
from editr1.models.base import constructing
from editr1.models.flux2_dev import INFERENCE, Flux2DevAdapter
from editr1.models.registry import detect_family, load_adapter
from editr1.models.tiny_flux2_dev import build_tiny_flux2_dev
from editr1.models.tiny_flux2_klein import build_tiny_flux2_klein
from editr1.sampling.generate import generate


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_flux2_dev(PROMPTS, codec="vae", seed=0)


def _adapter(tiny) -> Flux2DevAdapter:
    """A fresh adapter (default sizing) over the module's tiny components."""
    return Flux2DevAdapter(tiny.transformer, tiny.codec, tiny.text_encoder, tiny.tokenizer, tiny.scheduler)


def _pipeline(adapter) -> Flux2Pipeline:
    pipe = Flux2Pipeline(scheduler=adapter.scheduler, vae=adapter.codec.vae, text_encoder=adapter.text_encoder,
                         tokenizer=adapter.tokenizer, transformer=adapter.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CASES = {
    "1 ref, guidance 4.0 (default)": (1, None),
    "2 refs, guidance 4.0 (default)": (2, None),
    "2 refs, guidance 2.5": (2, 2.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_sampler_matches_pipeline_at_batch_2(tiny, case):
    num_refs, guidance = CASES[case]
    adapter = _adapter(tiny).use_pipeline_sizing()
    pipe = _pipeline(adapter)
    steps = 3  # the default 50 cut (the pipeline is given the same count)
    references = [refs[:num_refs] for refs in REFERENCES]
    noise = _noise(adapter, 2, 7)
    scale = INFERENCE.guidance if guidance is None else guidance
    expected = [_run_pipeline(pipe, references[i], PROMPTS[i], noise[i : i + 1], steps, scale) for i in range(2)]
    expected_latents = torch.cat([latents for latents, _ in expected])
    expected_pixels = np.concatenate([image for _, image in expected])

    conditions = adapter.encode_conditions(references, PROMPTS, SIZE, SIZE)
    grids = conditions.tensors["reference_grids"]
    assert (grids[:, :, 0] > 0).sum(1).tolist() == [num_refs] * 2
    sigmas = adapter.sigmas(steps, SIZE, SIZE)
    assert torch.allclose(sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    # No true CFG: one branch; the guidance given (None: the family's default) goes to the transformer.
    latents = generate(adapter, conditions, noise, sigmas, "euler", INFERENCE.cfg_scale, guidance=guidance)
    pixels = adapter.decode_latents(latents, SIZE, SIZE).permute(0, 2, 3, 1).numpy()

    assert torch.allclose(latents, expected_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pixels, expected_pixels, atol=1e-4)
    # The test can fail: the samples differ, the latents moved, and the guidance value matters.
    assert np.abs(pixels[0] - pixels[1]).mean() > 1e-3
    assert (latents - noise).abs().mean() > 1e-2
    other = generate(adapter, conditions, noise, sigmas, "euler", guidance=scale + 3.0)
    assert (other - expected_latents).abs().max() > 1e-3


def test_reference_limit_is_a_one_line_error(tiny):
    adapter = _adapter(tiny)
    conditions = adapter.encode_conditions([[_image(1, 32, 32)] * 6], PROMPTS[:1], SIZE, SIZE)
    assert conditions.tensors["reference_grids"].shape[1] == 6
    with pytest.raises(EditR1Error, match=r"^sample 0 of the batch has 7 reference images; FLUX.2 \[dev\] takes 1 to 6$"):
        adapter.encode_conditions([[_image(1, 32, 32)] * 7], PROMPTS[:1], SIZE, SIZE)


def test_the_adapters_settings_are_the_pipelines_defaults():
    defaults = {name: p.default for name, p in inspect.signature(Flux2Pipeline.__call__).parameters.items()}
    assert (INFERENCE.steps, INFERENCE.guidance) == (defaults["num_inference_steps"], defaults["guidance_scale"])
    assert INFERENCE.cfg_scale == 1.0 and INFERENCE.max_references == flux2_dev.MAX_REFERENCES
    assert Flux2DevAdapter.inference is INFERENCE
    assert defaults["max_sequence_length"] == Flux2DevAdapter.max_sequence_length == 512
    assert defaults["text_encoder_out_layers"] == Flux2DevAdapter.text_encoder_out_layers
    encode = inspect.signature(Flux2Pipeline._get_mistral_3_small_prompt_embeds).parameters
    assert encode["system_message"].default == Flux2DevAdapter.system_message


def test_instruction_limit_is_the_pipelines_512_tokens_less_the_chat(tiny):
    adapter = _adapter(tiny)
    tokens = adapter.prompt_tokenizer
    prompt = "Make the sky red, then move the green square to the left; keep everything else."

    def length(text):
        return len(tokens(text, add_special_tokens=False).input_ids)

    assert length(adapter.chat_text(prompt)) - length(adapter.chat_text("")) == adapter.count_prompt_tokens(prompt)
    # The chat is what the pipeline tokenizes: the system turn, then the instruction.
    assert adapter.chat_text("x").startswith("<s>[SYSTEM_PROMPT]" + Flux2DevAdapter.system_message)
    assert adapter.max_prompt_tokens == 512 - length(adapter.chat_text(""))
    # An instruction at the limit fills the pipeline's 512 tokens exactly: nothing of it is cut.
    at_limit = adapter.truncate_prompt("make it blue " * 300, adapter.max_prompt_tokens)
    assert length(adapter.chat_text(at_limit)) == Flux2DevAdapter.max_sequence_length


def test_guidance_reaches_the_transformer(tiny):
    adapter = _adapter(tiny)
    conditions = adapter.encode_conditions([[_image(2, 32, 32)]], PROMPTS[:1], SIZE, SIZE)
    tokens, sigma = _noise(adapter, 1, 1), torch.tensor([0.6])
    with torch.no_grad():
        default = adapter.velocity(tokens, sigma, conditions)
        four = adapter.velocity(tokens, sigma, conditions, guidance=4.0)
        one = adapter.velocity(tokens, sigma, conditions, guidance=1.0)
    assert torch.equal(default, four) and (one - four).abs().max() > 1e-3


@pytest.mark.parametrize("codec", ["vae", "pixel"])
def test_save_and_load_round_trip(tmp_path, codec):
    adapter = build_tiny_flux2_dev(PROMPTS, codec=codec)
    folder = tmp_path / "model"
    adapter.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2Pipeline" and "is_distilled" not in index
    assert detect_family(folder) == "flux2-dev"
    loaded = load_adapter(folder)  # family from model_index.json
    assert type(loaded) is Flux2DevAdapter and type(loaded.codec) is type(adapter.codec)
    assert loaded.inference == INFERENCE and Flux2DevAdapter.saved_inference(folder) == INFERENCE
    assert loaded.prompt_tokenizer(PROMPTS).input_ids == adapter.prompt_tokenizer(PROMPTS).input_ids
    assert loaded.chat_text("x") == adapter.chat_text("x") and loaded.max_prompt_tokens == adapter.max_prompt_tokens
    assert torch.allclose(_velocity(adapter), _velocity(loaded), atol=1e-6)
    assert torch.equal(loaded.sigmas(6, SIZE, SIZE), adapter.sigmas(6, SIZE, SIZE))
    cache_only = load_adapter(folder, text_encoders=False, transformer_weights=False)
    assert not cache_only.text_encoders_loaded and next(cache_only.transformer.parameters()).is_meta
    if codec == "vae":  # diffusers' own loader reads the folder too
        pipe = Flux2Pipeline.from_pretrained(folder)
        for name in ("transformer", "vae", "text_encoder"):
            theirs = getattr(pipe, name).state_dict()
            ours = (loaded.codec.vae if name == "vae" else getattr(loaded, name)).state_dict()
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours), name
        assert pipe.tokenizer(PROMPTS).input_ids == adapter.prompt_tokenizer(PROMPTS).input_ids
    # The two FLUX.2 families do not take each other's folders.
    klein = tmp_path / "klein"
    build_tiny_flux2_klein(PROMPTS).save_pretrained(klein)
    assert detect_family(klein) == "flux2-klein"
    with pytest.raises(EditR1Error, match="contradicts"):
        detect_family(folder, "flux2-klein")


def test_lora_saved_by_the_adapter_loads_into_the_pipeline_and_edits_alike(tmp_path):
    assert_lora_round_trip(build_tiny_flux2_dev(PROMPTS, codec="vae", seed=1), tmp_path, _pipeline, INFERENCE.guidance)


def test_released_sizes_count_the_models_parameters():
    """The released architecture builds and counts as the models are named: a 32B transformer over a 24B
    Mistral Small 3.x (language model and vision tower), whose 3 stacked layers are the text stream's width."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    def billions(model):
        return sum(p.numel() for p in model.parameters()) / 1e9

    with constructing("meta", torch.bfloat16):
        transformer = Flux2Transformer2DModel(**flux2_dev.RELEASED_TRANSFORMER)
        text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(**flux2_dev.RELEASED_TEXT_ENCODER_CONFIG))
        vae = AutoencoderKLFlux2(**flux2_dev.RELEASED_VAE)
    assert billions(transformer) == pytest.approx(32.2, abs=0.1)
    assert billions(text_encoder) == pytest.approx(24.0, abs=0.1)
    assert transformer.config.joint_attention_dim == 3 * text_encoder.config.text_config.hidden_size
    assert transformer.config.in_channels == 4 * vae.config.latent_channels
