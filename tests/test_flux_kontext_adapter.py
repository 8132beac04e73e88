"""The FLUX.1 Kontext adapter: saving and loading, LoRA export, and one NFT iteration on the tiny preset."""

import json
import math

import pytest
import torch
from diffusers import FluxKontextPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file
from tiny_runs import tiny_nft_overrides
from torch import nn

from editr1.config import TrainConfig, load_config
from editr1.models.flux_kontext import FluxKontextAdapter
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import load_adapter
from editr1.models.tiny_flux_kontext import build_tiny_flux_kontext
from editr1.rewards.base import Reward, RewardBatch
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

PROMPTS = ["Remove the red circle", "Add a blue square"]


def _inputs(adapter):
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))]
    conditions = adapter.encode_conditions([[im] for im in images], PROMPTS, 32, 32)
    tokens = torch.randn(2, *adapter.latent_token_shape(32, 32), generator=torch.Generator().manual_seed(0))
    return tokens, torch.tensor([0.3, 0.8]), conditions


def _velocity(adapter, **kwargs):
    with torch.no_grad():
        return adapter.velocity(*_inputs(adapter), **kwargs)


@pytest.mark.parametrize("codec", ["vae", "pixel"])
def test_save_and_load_round_trip(tmp_path, codec):
    adapter = build_tiny_flux_kontext(PROMPTS, codec=codec)
    adapter.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["_class_name"] == "FluxKontextPipeline"
    loaded = load_adapter(tmp_path / "model")  # family from model_index.json
    assert type(loaded) is FluxKontextAdapter and type(loaded.codec) is type(adapter.codec)
    assert loaded.tokenizer(PROMPTS).input_ids == adapter.tokenizer(PROMPTS).input_ids
    assert loaded.tokenizer_2(PROMPTS).input_ids == adapter.tokenizer_2(PROMPTS).input_ids
    assert torch.allclose(_velocity(adapter), _velocity(loaded), atol=1e-6)
    assert torch.equal(loaded.sigmas(6, 32, 32), adapter.sigmas(6, 32, 32))
    if codec == "vae":  # diffusers' own loader reads the folder too
        pipe = FluxKontextPipeline.from_pretrained(tmp_path / "model")
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            theirs, ours = getattr(pipe, name).state_dict(), getattr(loaded, name if name != "vae" else "codec")
            ours = (ours.vae if name == "vae" else ours).state_dict()
            assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours), name
        assert pipe.tokenizer_2(PROMPTS).input_ids == adapter.tokenizer_2(PROMPTS).input_ids


def test_pixel_codec_is_exact():
    adapter = build_tiny_flux_kontext(codec="pixel")
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    tokens = adapter.encode_images(pixels)
    assert tokens.shape == (2, *adapter.latent_token_shape(32, 32)) == (2, 64, 48)
    assert torch.allclose(adapter.decode_latents(tokens, 32, 32), pixels, atol=1e-6)


def test_guidance_defaults_and_wrapped_transformer():
    adapter = build_tiny_flux_kontext(PROMPTS)
    assert torch.equal(_velocity(adapter), _velocity(adapter, guidance=2.5))
    assert not torch.allclose(_velocity(adapter), _velocity(adapter, guidance=4.0))

    class Wrapper(nn.Module):  # like DDP: no `.config` or `.dtype` of its own
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    assert torch.equal(_velocity(adapter, transformer=Wrapper(adapter.transformer)), _velocity(adapter))


def test_bfloat16_weights_keep_float32_velocity():
    adapter = build_tiny_flux_kontext(PROMPTS)
    adapter.transformer.to(torch.bfloat16)
    tokens, sigma, conditions = _inputs(adapter)
    tokens.requires_grad_(True)
    v = adapter.velocity(tokens, sigma, conditions)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.sum().backward()
    assert tokens.grad is not None


def test_lora_targets_exist_and_load_into_the_pipeline(tmp_path):
    adapter = build_tiny_flux_kontext(PROMPTS)
    names = [n for n, _ in adapter.transformer.named_modules()]
    for target in adapter.lora_target_modules:
        assert any(n.endswith("attn." + target) for n in names), target
    assert any(n.startswith("single_transformer_blocks.0.attn.to_q") for n in names)
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
    adapter.save_lora(get_peft_model_state_dict(adapter.transformer), tmp_path / "lora", spec)

    pipe = FluxKontextPipeline.from_pretrained(tmp_path / "base")
    pipe.load_lora_weights(tmp_path / "lora")
    loaded = load_adapter(tmp_path / "base")
    loaded.transformer = pipe.transformer
    assert torch.allclose(_velocity(loaded), tuned, atol=1e-5)


class Brightness(Reward):
    """Mean brightness: random tiny models score 0 on the shapes verifier; this varies, so the
    advantages, and the gradient through the FLUX LoRA, are not zero."""

    name = "test_flux_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


def test_one_nft_iteration_on_the_tiny_preset(shapes_data, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + [
        "model.path=tiny:flux-kontext", "rollout.guidance=2.5", "eval.every=0", "data.heldout=null",
        "reward.name=test_flux_kontext_adapter:Brightness",
    ]
    summary = run_rl(load_config(TrainConfig, None, overrides))
    assert summary["iterations"] == 1
    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1] and rows[0]["reward_std"] > 0
    for key in ("loss", "policy_loss", "old_deviation", "grad_norm"):
        assert math.isfinite(rows[0][key]), key
    assert rows[0]["grad_norm"] > 0
    lora = load_file(out / "final" / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("transformer.") for k in lora)
    assert any("single_transformer_blocks" in k for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k), "training changed nothing"
