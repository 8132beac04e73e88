"""The real-scale presets hold the published Edit-R1 defaults and run: one NFT iteration each on the
tiny model of their family, with only sizes, data and the reward overridden."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from editr1.config import NFTConfig, load_config
from editr1.models.lora_io import read_lora
from editr1.rewards.base import Reward, RewardBatch
from editr1.rewards.registry import build_reward
from editr1.trainer import nft
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.nft import run_nft

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = {
    "qwen_image_edit_2509_nft.yaml": ("Qwen/Qwen-Image-Edit-2509", "qwen-image-edit-plus"),
    "qwen_image_edit_2511_nft.yaml": ("Qwen/Qwen-Image-Edit-2511", "qwen-image-edit-2511"),
    "qwen_image_edit_nft.yaml": ("Qwen/Qwen-Image-Edit", "qwen-image-edit"),
    "flux_kontext_nft.yaml": ("black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext"),
    # The one-GPU recipe names no family: it follows from model.path, and its LoRA targets from the adapter.
    "flux2_klein_4b_nft.yaml": ("black-forest-labs/FLUX.2-klein-base-4B", "flux2-klein"),
    # Guidance-distilled like Kontext (guidance 4.0 in rollouts and evaluation), launched with FSDP; no family line.
    "flux2_dev_nft.yaml": ("black-forest-labs/FLUX.2-dev", "flux2-dev"),
}
#: The presets without a family line, their LoRA targets the adapter's, the text encoder offloaded.
ADAPTER_TARGETS = ("flux2_klein_4b_nft.yaml", "flux2_dev_nft.yaml")
#: Distilled guidance of the guidance-distilled presets: (rollouts, evaluation).
GUIDANCE = {"flux-kontext": (2.5, 3.5), "flux2-dev": (4.0, 4.0)}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class Brightness(Reward):
    """Mean brightness of the edit: varies across a tiny random model's edits, so advantages are not zero."""

    name = "test_preset_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_holds_the_published_defaults(preset, monkeypatch):
    config = load_config(NFTConfig, CONFIGS / preset)
    hub_id, family = PRESETS[preset]
    flux = family in GUIDANCE
    model = config.model
    follows_path = preset in ADAPTER_TARGETS
    written_family = None if follows_path else family
    assert (model.path, model.family, model.resolution, model.dtype, model.train_mode) == (hub_id, written_family, 512, "bfloat16", "lora")
    assert model.gradient_checkpointing and model.offload_text_encoder is follows_path
    assert (model.lora.rank, model.lora.alpha, model.lora.target_modules) == (32, 64.0, None if follows_path else TARGETS)
    rollout, rl, optim = config.rollout, config.rl, config.optim
    assert (rollout.groups_per_iteration, rollout.group_size, rollout.steps, rollout.sampler) == (24, 12, 6, "dpmpp_2m")
    assert rollout.cfg_scale == 1.0 and rollout.guidance == (GUIDANCE[family][0] if flux else None)
    assert (rl.beta, rl.kl_coef, rl.adv_clip, rl.old_policy_schedule) == (1.0, 1e-4, 5.0, "linear")
    assert (optim.lr, optim.betas, optim.weight_decay, optim.grad_clip) == (3e-4, (0.9, 0.999), 1e-4, 1.0)
    assert (config.eval.cfg_scale, config.eval.guidance) == ((1.0, GUIDANCE[family][1]) if flux else (4.0, None))
    assert config.eval.sampler == "euler" and 15 <= config.eval.steps <= 28
    for reward in (config.reward, config.eval.reward):
        assert reward.name == "mllm_remote"
        assert reward.options["model"] == "Qwen/Qwen2.5-VL-32B-Instruct"
    # The judge's options are valid (constructing the client contacts no server).
    monkeypatch.setenv(config.reward.options["api_key_env"], "test-key")
    build_reward(config.reward.name, config.reward.options)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_one_nft_iteration_of_each_preset_on_its_tiny_model(preset, shapes_data, tmp_path, monkeypatch):
    _, family = PRESETS[preset]
    calls, real_generate = [], nft.generate_heldout

    def recording_generate(adapter, heldout, steps, sampler, cfg_scale=1.0, transformer=None, batch_size=64,
                           guidance=None, **kwargs):
        calls.append((cfg_scale, guidance))
        return real_generate(adapter, heldout, steps, sampler, cfg_scale, transformer, batch_size, guidance, **kwargs)

    monkeypatch.setattr(nft, "generate_heldout", recording_generate)
    out = tmp_path / "run"
    overrides = [
        f"model.path=tiny:{family}", "model.resolution=32",
        f"data.train={shapes_data / 'train.jsonl'}", f"data.heldout={shapes_data / 'test.jsonl'}", f"output_dir={out}",
        "iterations=1", "rollout.groups_per_iteration=2", "rollout.group_size=3", "rollout.steps=2",
        "reward.name=test_presets:Brightness", "reward.options={}",
        "eval.reward.name=test_presets:Brightness", "eval.reward.options={}", "eval.samples=2", "eval.steps=2",
        "eval.every=1", "logging.progress=false", "logging.tensorboard=false", "logging.grid_every=0",
    ]
    config = load_config(NFTConfig, CONFIGS / preset, overrides)
    # Everything else is the preset's: bf16 base, gradient checkpointing, rank 32 / alpha 64, KL on, eval CFG/guidance.
    assert config.model.dtype == "bfloat16" and config.model.gradient_checkpointing and config.rl.kl_coef > 0
    summary = run_nft(config)
    assert summary["iterations"] == 1
    rows = read_metrics(out)
    trained = [r for r in rows if "reward_mean" in r]
    assert len(trained) == 1 and trained[0]["grad_norm"] > 0
    assert sum("heldout_reward" in r for r in rows) == 2  # before and after the iteration
    # Evaluation runs at the preset's inference settings: FLUX guidance 3.5 (rollouts 2.5), Qwen true CFG 4.0.
    assert calls == ([(1.0, GUIDANCE[family][1])] * 2 if family in GUIDANCE else [(4.0, None)] * 2)
    # The exported LoRA carries its scale: a diffusers pipeline loads it at alpha 64 / rank 32.
    lora = read_lora(out / "final")
    with safe_open(str(lora.path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert (metadata["transformer.r"], metadata["transformer.lora_alpha"]) == (32, 64.0)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora.state_dict)
