"""The FLUX.2 [klein] adapter reproduces diffusers' Flux2KleinPipeline on tiny random weights, sample by sample,
with one or two references per sample, for Base (true CFG) and the distilled variant (no CFG); a LoRA it
saves loads into the pipeline as it is; its saved folder is the pipeline's; one NFT iteration runs on it."""

import inspect
import json
import math

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from tiny_runs import tiny_nft_overrides

from editr1.config import TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.models import flux2_klein
from editr1.models.base import constructing
from editr1.models.flux2_klein import BASE_INFERENCE, DISTILLED_INFERENCE, Flux2KleinAdapter
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import detect_family, load_adapter
from editr1.models.tiny_flux2_klein import build_tiny_flux2_klein
from editr1.rewards.base import Reward, RewardBatch
from editr1.sampling.generate import generate
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

SIZE = 32
PROMPTS = ["Change the red circle to blue", "Remove the square and add a star"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_flux2_klein(PROMPTS, codec="vae", seed=0)


def _adapter(tiny, is_distilled=False) -> Flux2KleinAdapter:
    """A fresh adapter (default sizing) over the module's tiny components."""
    return Flux2KleinAdapter(tiny.transformer, tiny.codec, tiny.text_encoder, tiny.tokenizer, tiny.scheduler,
                             is_distilled=is_distilled)


def _image(seed: int, width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pipeline(adapter, is_distilled: bool) -> Flux2KleinPipeline:
    pipe = Flux2KleinPipeline(scheduler=adapter.scheduler, vae=adapter.codec.vae, text_encoder=adapter.text_encoder,
                              tokenizer=adapter.tokenizer, transformer=adapter.transformer, is_distilled=is_distilled)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, references, prompt, noise, steps, guidance_scale):
    """One sample (the pipeline gives one list of references to every prompt): its final packed latents and image."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    grid = SIZE // (2 * pipe.vae_scale_factor)
    image = pipe(
        image=references, prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=steps,
        guidance_scale=guidance_scale, latents=noise.transpose(1, 2).reshape(1, -1, grid, grid),  # unpacked, as it takes them
        output_type="np", callback_on_step_end=keep_latents,
    ).images
    return final["latents"], image


def _noise(adapter, rows, seed):
    seq, channels = adapter.latent_token_shape(SIZE, SIZE)
    return torch.randn(rows, seq, channels, generator=torch.Generator().manual_seed(seed))


# Per sample its own references, sized as the pipeline sizes them (kept under 1024^2 pixels, cut to multiples
# of 8: 76x68 -> 72x64); the samples' layouts differ, so the adapter's batch runs in two groups. The pipeline
# refuses references under 64 pixels a side.
REFERENCES = [[_image(1, 76, 68), _image(2)], [_image(3, 64, 88), _image(4, 72, 64)]]
CASES = {
    "1 ref, Base, true CFG": (1, False),
    "2 refs, Base, true CFG": (2, False),
    "1 ref, distilled": (1, True),
    "2 refs, distilled": (2, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_sampler_matches_pipeline_at_batch_2(tiny, case):
    num_refs, is_distilled = CASES[case]
    adapter = _adapter(tiny, is_distilled).use_pipeline_sizing()
    pipe = _pipeline(adapter, is_distilled)
    defaults = adapter.inference
    assert defaults == (DISTILLED_INFERENCE if is_distilled else BASE_INFERENCE)
    # The distilled default (4); Base's 50 cut to 3 (the pipeline is given the same count).
    steps = defaults.steps if is_distilled else 3
    references = [refs[:num_refs] for refs in REFERENCES]
    noise = _noise(adapter, 2, 7)
    # The pipeline's default guidance_scale (4.0): CFG for Base, ignored by the distilled pipeline.
    expected = [_run_pipeline(pipe, references[i], PROMPTS[i], noise[i : i + 1], steps, 4.0) for i in range(2)]
    expected_latents = torch.cat([latents for latents, _ in expected])
    expected_pixels = np.concatenate([image for _, image in expected])

    conditions = adapter.encode_conditions(references, PROMPTS, SIZE, SIZE)
    grids = conditions.tensors["reference_grids"]
    assert (grids[:, :, 0] > 0).sum(1).tolist() == [num_refs] * 2
    assert grids[0, 0].tolist() == [8, 9]  # 72x64 pixels, /4 VAE, /2 patches
    negative = None
    if defaults.cfg_scale > 1:
        negative = adapter.encode_conditions(references, [defaults.negative_prompt] * 2, SIZE, SIZE)
    sigmas = adapter.sigmas(steps, SIZE, SIZE)
    assert torch.allclose(sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    latents = generate(adapter, conditions, noise, sigmas, "euler", defaults.cfg_scale, negative,
                       cfg_renorm=defaults.cfg_renorm)
    pixels = adapter.decode_latents(latents, SIZE, SIZE).permute(0, 2, 3, 1).numpy()

    assert torch.allclose(latents, expected_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(pixels, expected_pixels, atol=1e-4)
    # The test can fail: the samples differ, the latents moved, and for Base the CFG matters.
    assert np.abs(pixels[0] - pixels[1]).mean() > 1e-3
    assert (latents - noise).abs().mean() > 1e-2
    if not is_distilled:
        unguided = generate(adapter, conditions, noise, sigmas, "euler")
        assert (unguided - expected_latents).abs().max() > 1e-2


def test_mixed_reference_counts_in_one_batch_match_each_sample_alone(tiny):
    """Row by row, a batch mixing a 1-reference and a 2-reference sample (selected, repeated and reordered as
    the trainer's micro-batches are) gives the velocity of that sample encoded and run alone."""
    adapter = _adapter(tiny)
    samples = [([_image(5, 32, 32)], PROMPTS[0]), ([_image(6, 32, 32), _image(7, 32, 32)], PROMPTS[1])]
    both = adapter.encode_conditions([s for s, _ in samples], [p for _, p in samples], SIZE, SIZE)
    alone = [adapter.encode_conditions([s], [p], SIZE, SIZE) for s, p in samples]
    rows = [1, 0, 1, 0]
    tokens = _noise(adapter, len(rows), 3)
    sigma = torch.tensor([0.9, 0.6, 0.3, 0.75])
    with torch.no_grad():
        batched = adapter.velocity(tokens, sigma, both.select(rows))
        for i, row in enumerate(rows):
            single = adapter.velocity(tokens[i : i + 1], sigma[i : i + 1], alone[row])
            assert torch.allclose(batched[i], single[0], atol=1e-5, rtol=0), (i, (batched[i] - single[0]).abs().max())
        # The check can fail: another sample's references give another velocity.
        shared = adapter.encode_conditions([samples[0][0]] * 2, [p for _, p in samples], SIZE, SIZE)
        wrong = adapter.velocity(tokens[:1], sigma[:1], shared.select([1]))
    assert (wrong[0] - batched[0]).abs().mean() > 1e-4  # 10x the tolerance above
    # split / join undo and redo the batch's reference padding.
    joined = adapter.join_conditions(adapter.split_conditions(both))
    assert all(torch.equal(joined.tensors[k], t) for k, t in both.tensors.items())


def test_too_many_references_and_tiny_ones_are_one_line_errors(tiny):
    adapter = _adapter(tiny)
    with pytest.raises(EditR1Error, match=r"^sample 0 of the batch has 5 reference images; FLUX.2 \[klein\] takes 1 to 4$"):
        adapter.encode_conditions([[_image(1, 32, 32)] * 5], PROMPTS[:1], SIZE, SIZE)
    adapter.use_pipeline_sizing()
    with pytest.raises(EditR1Error, match=r"^reference image 6x40: both sides must be at least 8 pixels$"):
        adapter.encode_conditions([[_image(1, 6, 40)]], PROMPTS[:1], SIZE, SIZE)


def test_the_adapters_settings_are_the_pipelines_defaults():
    defaults = {name: p.default for name, p in inspect.signature(Flux2KleinPipeline.__call__).parameters.items()}
    assert (BASE_INFERENCE.steps, BASE_INFERENCE.cfg_scale) == (defaults["num_inference_steps"], defaults["guidance_scale"])
    assert Flux2KleinAdapter.inference is BASE_INFERENCE  # what the CLIs read before loading a model
    assert defaults["max_sequence_length"] == Flux2KleinAdapter.max_sequence_length == 512
    assert defaults["text_encoder_out_layers"] == Flux2KleinAdapter.text_encoder_out_layers


def test_instruction_limit_is_the_pipelines_512_tokens_less_the_chat_template(tiny):
    adapter = _adapter(tiny)
    tokens = adapter.tokenizer
    prompt = "Make the sky red, then move the green square to the left; keep everything else."
    assert len(tokens(adapter.chat_text(prompt)).input_ids) - len(tokens(adapter.chat_text("")).input_ids) \
        == adapter.count_prompt_tokens(prompt)
    # The tiny vocabulary tokenizes the template as the released one does: 12 tokens.
    assert adapter.max_prompt_tokens == 512 - 12
    # An instruction at the limit fills the pipeline's 512 tokens exactly: nothing of it is cut.
    at_limit = adapter.truncate_prompt("make it blue " * 300, adapter.max_prompt_tokens)
    assert len(tokens(adapter.chat_text(at_limit)).input_ids) == Flux2KleinAdapter.max_sequence_length


def _velocity(adapter):
    images = [Image.new("RGB", (SIZE, SIZE), (255, 0, 0)), Image.new("RGB", (SIZE, SIZE), (0, 0, 255))]
    conditions = adapter.encode_conditions([[im] for im in images], PROMPTS, SIZE, SIZE)
    tokens = _noise(adapter, 2, 0)
    with torch.no_grad():
        return adapter.velocity(tokens, torch.tensor([0.3, 0.8]), conditions)


@pytest.mark.parametrize("codec, is_distilled", [("vae", True), ("pixel", False)])
def test_save_and_load_round_trip(tmp_path, codec, is_distilled):
    adapter = build_tiny_flux2_klein(PROMPTS, codec=codec, is_distilled=is_distilled)
    folder = tmp_path / "model"
    adapter.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline" and index["is_distilled"] is is_distilled
    assert detect_family(folder) == "flux2-klein"
    loaded = load_adapter(folder)  # family from model_index.json
    assert type(loaded) is Flux2KleinAdapter and type(loaded.codec) is type(adapter.codec)
    assert loaded.inference == (DISTILLED_INFERENCE if is_distilled else BASE_INFERENCE)
    assert loaded.tokenizer(PROMPTS).input_ids == adapter.tokenizer(PROMPTS).input_ids
    assert loaded.chat_text("x") == adapter.chat_text("x") and loaded.max_prompt_tokens == adapter.max_prompt_tokens
    assert torch.allclose(_velocity(adapter), _velocity(loaded), atol=1e-6)
    assert torch.equal(loaded.sigmas(6, SIZE, SIZE), adapter.sigmas(6, SIZE, SIZE))
    cache_only = load_adapter(folder, text_encoders=False, transformer_weights=False)
    assert not cache_only.text_encoders_loaded and next(cache_only.transformer.parameters()).is_meta
    if codec == "vae":  # diffusers' own loader reads the folder too
        pipe = Flux2KleinPipeline.from_pretrained(folder)
        assert pipe.config.is_distilled is is_distilled
        for name in ("transformer", "vae", "text_encoder"):
            theirs = getattr(pipe, name).state_dict()
            ours = (loaded.codec.vae if name == "vae" else getattr(loaded, name)).state_dict()
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours), name
        assert pipe.tokenizer(PROMPTS).input_ids == adapter.tokenizer(PROMPTS).input_ids


def test_pixel_codec_is_exact():
    adapter = build_tiny_flux2_klein(codec="pixel")
    pixels = torch.randint(0, 256, (2, 3, SIZE, SIZE)).float() / 255
    tokens = adapter.encode_images(pixels)
    assert tokens.shape == (2, *adapter.latent_token_shape(SIZE, SIZE)) == (2, 64, 48)
    assert torch.allclose(adapter.decode_latents(tokens, SIZE, SIZE), pixels, atol=1e-6)


def assert_lora_round_trip(adapter, tmp_path, make_pipeline, guidance):
    """A LoRA the adapter saves loads into the diffusers pipeline (`make_pipeline(adapter)`) as it is, and
    the pipeline edits as the adapter does (FLUX.2 [klein] and [dev] alike)."""
    names = [n for n, _ in adapter.transformer.named_modules()]
    for target in adapter.lora_target_modules:
        assert any(n == target or n.endswith("." + target) for n in names), target
    adapter.save_pretrained(tmp_path / "base")
    base = _velocity(adapter)

    # rank != alpha: the exported LoRA must carry its scale.
    adapter.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=list(adapter.lora_target_modules)))
    with torch.no_grad():
        for name, p in adapter.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    tuned = _velocity(adapter)
    assert not torch.allclose(tuned, base, atol=1e-3)
    spec = LoraSpec.from_peft(adapter.transformer.peft_config["default"])
    file = adapter.save_lora(get_peft_model_state_dict(adapter.transformer), tmp_path / "lora", spec)
    keys = load_file(file).keys()
    for module in ("transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.attn.to_add_out",
                   "single_transformer_blocks.0.attn.to_qkv_mlp_proj", "single_transformer_blocks.1.attn.to_out"):
        assert f"transformer.{module}.lora_A.weight" in keys, module

    pipe = make_pipeline(load_adapter(tmp_path / "base"))
    pipe.load_lora_weights(tmp_path / "lora")  # as it is: no conversion
    references, noise = [_image(8)], _noise(adapter, 1, 5)
    expected, _ = _run_pipeline(pipe, references, PROMPTS[0], noise, 2, guidance)
    adapter.use_pipeline_sizing()
    conditions = adapter.encode_conditions([references], PROMPTS[:1], SIZE, SIZE)
    latents = generate(adapter, conditions, noise, adapter.sigmas(2, SIZE, SIZE), "euler")
    assert torch.allclose(latents, expected, atol=1e-4, rtol=1e-4)
    loaded = load_adapter(tmp_path / "base")
    loaded.transformer = pipe.transformer
    assert torch.allclose(_velocity(loaded), tuned, atol=1e-5)


def test_lora_saved_by_the_adapter_loads_into_the_pipeline_and_edits_alike(tmp_path):
    assert_lora_round_trip(build_tiny_flux2_klein(PROMPTS, codec="vae", seed=1), tmp_path,
                           lambda loaded: _pipeline(loaded, is_distilled=False), 1.0)


def test_released_sizes_count_the_models_parameters():
    """The from-memory architecture is at least self-consistent: it builds, and counts as the models are named
    (klein 4B and 9B; Qwen3-4B and -8B)."""
    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def billions(model):
        return sum(p.numel() for p in model.parameters()) / 1e9

    for name, size in (("", (3.88, 4.02)), ("_9B", (9.08, 8.19))):
        with constructing("meta", torch.bfloat16):
            transformer = Flux2Transformer2DModel(**getattr(flux2_klein, f"RELEASED_TRANSFORMER{name}"))
            text_encoder = Qwen3ForCausalLM(Qwen3Config(**getattr(flux2_klein, f"RELEASED_TEXT_ENCODER{name}")))
        assert (billions(transformer), billions(text_encoder)) == pytest.approx(size, abs=0.01), name
        assert transformer.config.joint_attention_dim == 3 * text_encoder.config.hidden_size


class Brightness(Reward):
    """Mean brightness: it varies across a random tiny model's edits, so the advantages are not zero."""

    name = "test_flux2_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


def test_one_nft_iteration_on_the_tiny_preset(shapes_data, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + [
        "model.path=tiny:flux2-klein", "eval.every=0", "data.heldout=null",
        "reward.name=test_parity_flux2_klein:Brightness",
    ]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    assert summary["iterations"] == 1
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1] and rows[0]["reward_std"] > 0
    for key in ("loss", "policy_loss", "old_deviation", "grad_norm"):
        assert math.isfinite(rows[0][key]), key
    assert rows[0]["grad_norm"] > 0
    lora = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert any("single_transformer_blocks" in k and k.endswith("attn.to_out.lora_B.weight") for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k), "training changed nothing"


def test_the_commands_take_a_distilled_model_s_own_defaults(tmp_path, capsys):
    """`edit` (as `eval`) sizes its work by the saved model's defaults before loading it: 4 steps, no CFG."""
    from editr1.cli.main import main

    folder = tmp_path / "distilled"
    build_tiny_flux2_klein(PROMPTS, is_distilled=True).save_pretrained(folder)
    assert Flux2KleinAdapter.saved_inference(folder) == DISTILLED_INFERENCE
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["edit", "--model", str(folder), "--image", str(tmp_path / "in.png"), "--prompt", PROMPTS[0],
                 "--out", str(tmp_path / "out.png"), "--size", f"{SIZE}x{SIZE}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "4 euler steps" in first and "CFG" not in first, first
