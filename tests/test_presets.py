"""The real-scale presets hold the published Edit-R1 defaults and run: one NFT iteration each on the
tiny model of another family, with only the model path, sizes, data and the reward overridden."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from editr1.config import FAMILY, TrainConfig, load_config
from editr1.models.lora_io import read_lora
from editr1.models.registry import adapter_class, build_tiny
from editr1.rewards.base import Reward, RewardBatch
from editr1.rewards.registry import build_reward
from editr1.trainer import rl_trainer
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PRESETS = {
    "qwen_image_edit_2509_nft.yaml": ("Qwen/Qwen-Image-Edit-2509", "qwen-image-edit-plus"),
    "qwen_image_edit_2511_nft.yaml": ("Qwen/Qwen-Image-Edit-2511", "qwen-image-edit-2511"),
    "qwen_image_edit_nft.yaml": ("Qwen/Qwen-Image-Edit", "qwen-image-edit"),
    "flux_kontext_nft.yaml": ("black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext"),
    # The one-GPU recipe: the text encoder offloaded.
    "flux2_klein_4b_nft.yaml": ("black-forest-labs/FLUX.2-klein-base-4B", "flux2-klein"),
    # Launched with FSDP; its 24B text encoder offloaded.
    "flux2_dev_nft.yaml": ("black-forest-labs/FLUX.2-dev", "flux2-dev"),
}
#: The presets that keep the text encoder off the GPU.
OFFLOADED = ("flux2_klein_4b_nft.yaml", "flux2_dev_nft.yaml")


class Brightness(Reward):
    """Mean brightness of the edit: varies across a tiny random model's edits, so advantages are not zero."""

    name = "test_preset_brightness"

    def score(self, sources, edited, prompts, requirements):
        return RewardBatch(torch.stack([e.mean() for e in edited]).float(), torch.ones(len(edited), dtype=torch.bool))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_holds_the_published_defaults(preset, monkeypatch):
    config = load_config(TrainConfig, CONFIGS / preset)
    hub_id = PRESETS[preset][0]
    model = config.model
    # Nothing the model decides is written: the family, its LoRA targets, its guidance and evaluation settings.
    assert (model.path, model.family, model.resolution, model.dtype, model.train_mode) == (hub_id, None, 512, "bfloat16", "lora")
    assert model.gradient_checkpointing and model.offload_text_encoder is (preset in OFFLOADED)
    assert (model.lora.rank, model.lora.alpha, model.lora.target_modules) == (32, 64.0, None)
    rollout, rl, optim = config.rollout, config.rl, config.optim
    assert (rollout.groups_per_iteration, rollout.group_size, rollout.steps, rollout.sampler) == (24, 12, 6, "dpmpp_2m")
    assert rollout.cfg_scale == 1.0 and rollout.guidance is None
    assert (rl.beta, rl.kl_coef, rl.adv_clip, rl.old_policy_schedule) == (1.0, 1e-4, 5.0, "linear")
    assert (optim.lr, optim.betas, optim.weight_decay, optim.grad_clip) == (3e-4, (0.9, 0.999), 1e-4, 1.0)
    assert (config.eval.steps, config.eval.cfg_scale, config.eval.guidance) == (FAMILY, FAMILY, FAMILY)
    assert config.eval.sampler == "euler"
    for reward in (config.reward, config.eval.reward):
        assert reward.name == "mllm_remote"
        assert reward.options["model"] == "Qwen/Qwen2.5-VL-32B-Instruct"
    # The judge's options are valid (constructing the client contacts no server).
    monkeypatch.setenv(config.reward.options["api_key_env"], "test-key")
    build_reward(config.reward.name, config.reward.options)


#: Each family runs from another family's preset with one line changed, model.path: every preset and every
#: family once.
SWITCHED = [(preset, PRESETS[other][1]) for preset, other in zip(PRESETS, [*list(PRESETS)[1:], list(PRESETS)[0]])]


@pytest.mark.parametrize("preset, family", SWITCHED)
def test_a_preset_trains_any_family_with_only_model_path_changed(preset, family, shapes_data, tmp_path, monkeypatch):
    calls, real_generate = [], rl_trainer.generate_heldout

    def recording_generate(adapter, heldout, steps, sampler, cfg_scale=1.0, transformer=None, batch_size=64,
                           guidance=None, **kwargs):
        calls.append((steps, cfg_scale, guidance))
        return real_generate(adapter, heldout, steps, sampler, cfg_scale, transformer, batch_size, guidance, **kwargs)

    monkeypatch.setattr(rl_trainer, "generate_heldout", recording_generate)
    out = tmp_path / "run"
    overrides = [
        f"model.path=tiny:{family}", "model.resolution=32",
        f"data.train={shapes_data / 'train.jsonl'}", f"data.heldout={shapes_data / 'test.jsonl'}", f"output_dir={out}",
        "iterations=1", "rollout.groups_per_iteration=2", "rollout.group_size=3", "rollout.steps=2",
        "reward.name=test_presets:Brightness", "reward.options={}",
        "eval.reward.name=test_presets:Brightness", "eval.reward.options={}", "eval.samples=2",
        "eval.every=1", "logging.progress=false", "logging.trackers=[]", "logging.grid_every=0",
    ]
    config = load_config(TrainConfig, CONFIGS / preset, overrides)
    # Everything else is the preset's: bf16 base, gradient checkpointing, rank 32 / alpha 64, KL on; and the
    # evaluation settings are the family's (sizes and the reward aside, only model.path names the model).
    assert config.model.dtype == "bfloat16" and config.model.gradient_checkpointing and config.rl.kl_coef > 0
    summary = run_rl(config)
    assert summary["iterations"] == 1
    rows = read_metrics(out)
    trained = [r for r in rows if "reward_mean" in r]
    assert len(trained) == 1 and trained[0]["grad_norm"] > 0
    assert sum("heldout_reward" in r for r in rows) == 2  # before and after the iteration
    # Evaluation runs at the family's published inference settings (e.g. Qwen true CFG 4.0, Kontext guidance 3.5).
    published = adapter_class(family).inference
    assert calls == [(published.steps, published.cfg_scale, published.guidance)] * 2
    # The exported LoRA carries its scale: a diffusers pipeline loads it at alpha 64 / rank 32.
    lora = read_lora(out / "final")
    with safe_open(str(lora.path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert (metadata["transformer.r"], metadata["transformer.lora_alpha"]) == (32, 64.0)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora.state_dict)
    # ... on the family's LoRA targets (peft matches a target by the end of a module's name).
    targets = build_tiny(f"tiny:{family}", ["edit"]).lora_target_modules  # some adapters' depend on the blocks
    modules = {key.split(".lora_")[0] for key in lora.state_dict}
    assert [m for m in modules if not any(("." + m).endswith("." + target) for target in targets)] == []
