"""Supervised flow-matching fine-tuning on (source, instruction, target): `editr1 sft`.

Users SFT before RL; the CPU demo's base model is trained with this, until the held-out reward has
levelled off (cosine learning-rate decay plus an EMA of the weights, which is what gets saved).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from editr1.config import ConfigError, SFTConfig
from editr1.data.batching import source_images, target_tensor
from editr1.data.jsonl import EditSample, read_edit_jsonl
from editr1.data.order import take_indices
from editr1.data.prompt_length import fit_prompt_lengths
from editr1.dotted import resolve
from editr1.errors import EditR1Error
from editr1.eval.heldout import HeldoutSet, evaluate, save_eval
from editr1.eval.visuals import reward_curve
from editr1.fileio import fix_modes
from editr1.models.base import Conditions
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import is_tiny_preset, tiny_preset_note
from editr1.rewards.combined import build_combined
from editr1.rl.losses import LOSSES
from editr1.rl.old_policy import soft_update_
from editr1.trainer import job
from editr1.trainer.checkpoint import save_checkpoint
from editr1.trainer.conditions_cache import open_for_run
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.model_loading import build_model, lora_spec, with_model_family_settings
from editr1.trainer.progress import console
from editr1.trainer.run_folder import RunFolder, resume_safe_reward_fields
from editr1.trainer.run_loop import StepResult, TrainingLoop
from editr1.trainer.seeding import generator_for
from editr1.trainer.trackers import TRACKER_OUTPUTS, Trackers, check_installed

#: Without a terminal, a plain progress line every this many steps (steps take well under a second).
PLAIN_LINE_EVERY = 10
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def learning_rate_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


def flow_matching_batch(adapter, samples, size: int, generator: torch.Generator):
    """Noisy latents, sigmas and velocity targets for one supervised batch."""
    x0 = adapter.encode_images(torch.stack([target_tensor(s, size) for s in samples]).to(adapter.device))
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    # Logit-normal sigmas, as SD3 / FLUX training uses.
    sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=generator)).to(x0)
    x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    return x_t, sigma, noise - x0


#: What `editr1 sft` writes in its run folder.
OUTPUTS = ("metrics.jsonl", *TRACKER_OUTPUTS, "eval", "checkpoints", "model", "heldout_curve.png")
#: Settings a resumed run may not change (`steps` shapes the learning-rate schedule); the time budget,
#: evaluation cadence, logging and the saved dtype may.
LOCKED = ("seed", "model", "data", "steps", "batch_size", "lr", "lr_schedule", "warmup_steps", "weight_decay",
          "grad_clip", "ema_decay", "eval.samples", "eval.steps", "eval.sampler", "eval.cfg_scale", "eval.guidance",
          "eval.seed", "eval.reward")
RESUME_SAFE = ("model.gradient_checkpointing", "model.compile", "eval.batch_size", "model.offload_text_encoder",
               "data.conditions_cache")
#: What only a finished run has.
FINISHED = ("model", "heldout_curve.png")


def run_sft(config: SFTConfig, resume: bool = False) -> dict:
    job.refuse_launcher("editr1 sft")
    check_installed(config.logging.trackers)
    run_dir = Path(config.output_dir)
    run_folder = RunFolder(run_dir, OUTPUTS, FINISHED, LOCKED,
                           unlocked=(*RESUME_SAFE, *resume_safe_reward_fields("eval.reward", config.eval.reward)),
                           command="editr1 sft")
    checkpoint = run_folder.prepare(config, resume)
    # Every input is read and checked before anything is written.
    size = config.model.resolution
    train = read_edit_jsonl(config.data.train, require_target=True, max_pixels=config.data.max_pixels)
    heldout, eval_reward = None, None
    if config.eval.rewards:
        raise ConfigError("eval.rewards: evaluation-only rewards watch an RL run's training reward (editr1 train); "
                          "sft has none: give its held-out reward as eval.reward")
    if config.data.heldout:
        if config.eval.reward is None:
            raise ConfigError("eval.reward: sft has no training reward; name the reward of the held-out evaluation "
                              "(eval.reward.name and eval.reward.options), or set data.heldout: null")
        held = read_edit_jsonl(config.data.heldout, max_pixels=config.data.max_pixels)
        # Every answer is checked against the reward contract; a crash's traceback goes to the run folder.
        eval_reward = build_combined(config.eval.reward, "eval.reward", run_folder.reward_errors)
    torch.manual_seed(config.seed)
    data = config.data
    corpus = [s.prompt for s in train]
    # Read from a cache, conditions need no text encoder; full fine-tuning saves a whole model folder, which
    # still writes one.
    adapter = build_model(config.model, corpus, seed=config.seed,
                          text_encoders=not (data.conditions_cache and config.model.train_mode == "lora"))
    if is_tiny_preset(config.model.path):
        console.print(f"note: {tiny_preset_note(config.model.path)}", soft_wrap=True)
    # The run folder keeps the config as given (`family` stays `family`, which resume compares).
    given, config = config, with_model_family_settings(config, adapter)
    train = fit_prompt_lengths(train, data.train, adapter, data.max_prompt_tokens, data.prompt_overflow)
    if config.data.heldout:
        held = fit_prompt_lengths(held, data.heldout, adapter, data.max_prompt_tokens, data.prompt_overflow)
        heldout = HeldoutSet.build(held, config.eval.samples, size, adapter.latent_token_shape(size, size), config.eval.seed, config.data.heldout)
    # Conditions: read from the cache (checked to hold every sample, unchanged), or each sample encoded alone.
    cache = None
    if data.conditions_cache:
        cache = open_for_run(config, adapter, corpus, train, heldout.samples if heldout is not None else None)
        if heldout is not None:
            heldout.source = lambda samples, negative: cache.conditions(adapter, "heldout", samples, negative)
    run_folder.start(given)
    if checkpoint is None:
        run_folder.record_base_model(adapter, config.model, final="model/lora" if config.model.train_mode == "lora" else "model")
    transformer = adapter.transformer
    lora = lora_spec(config.model, adapter) if config.model.train_mode == "lora" else None
    if lora is not None:
        transformer.requires_grad_(False)
        transformer.add_adapter(lora.peft_config())
    named = {name: p for name, p in transformer.named_parameters() if p.requires_grad}
    trainable = list(named.values())
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    ema = [p.detach().clone() for p in trainable] if config.ema_decay > 0 else None
    loss_fn = resolve("flow_matching", LOSSES, "loss", "loss")
    trackers = Trackers(run_dir, config.logging, config, final_images=("heldout_curve.png",))
    loop = TrainingLoop(run_dir, "sft", "steps", config.steps, time_budget_s=config.time_budget_s,
                        eval_every=config.eval.every, checkpoint_every=config.logging.checkpoint_every,
                        progress=config.logging.progress, trackers=trackers)
    position = 0
    if checkpoint is not None:
        checkpoint.restore(optimizer)
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(checkpoint.trained[name])
            for e, name in zip(ema or [], named):
                e.copy_(checkpoint.old[name])
        loop.resume_at(checkpoint.step, checkpoint.state["train_seconds"])
        position = checkpoint.state["position"]
        console.print(f"resumed from {checkpoint.folder} at step {checkpoint.step}")

    def save_checkpoint_now() -> None:
        # The EMA rides in the checkpoint's "old" slot: the weights kept beside the trained ones.
        trained = {name: p.detach() for name, p in named.items()}
        averaged = dict(zip(named, ema)) if ema is not None else {}
        save_checkpoint(run_folder.checkpoints, loop.step, trained, averaged, optimizer,
                        {"position": position, "train_seconds": loop.seconds}, keep=config.logging.keep_checkpoints)

    def evaluate_ema(step: int) -> dict[str, float]:
        """Evaluate the EMA weights (what gets saved); the last result is kept per sample."""
        live = [p.detach().clone() for p in trainable]
        if ema is not None:
            soft_update_(trainable, ema, 0.0)
        result = evaluate(adapter, heldout, eval_reward, config.eval.steps, config.eval.sampler, config.eval.cfg_scale,
                          batch_size=config.eval.batch_size, guidance=config.eval.guidance)
        save_eval(result, run_dir / "eval" / "final.safetensors")
        if ema is not None:
            soft_update_(trainable, live, 0.0)
        console.print(f"sft step {step}: held-out reward {result.mean:.4f}")
        return {"heldout_reward": result.mean}

    def batch_conditions(batch: list[EditSample]) -> Conditions:
        """From the cache, or each sample encoded alone: what the cache holds, bit for bit."""
        if cache is not None:
            return cache.conditions(adapter, "train", batch)
        return adapter.encode_each([source_images(s, size) for s in batch], [s.prompt for s in batch], size, size)

    def take_step(step: int) -> StepResult:
        nonlocal position
        tick = time.monotonic()
        indices, position = take_indices(len(train), config.seed, position, config.batch_size)
        batch = [train[i] for i in indices]
        lr = config.lr * learning_rate_factor(step, config.steps, config.warmup_steps, config.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_t, sigma, target = flow_matching_batch(adapter, batch, size, generator_for(config.seed, step, "sft-noise"))
        loss, metrics = loss_fn(v_pred=adapter.velocity(x_t, sigma, batch_conditions(batch)), target=target)
        if not torch.isfinite(loss):
            raise EditR1Error(f"sft step {step + 1}: the loss is {loss.item()}; training diverged, lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        if ema is not None:
            soft_update_(ema, trainable, min(config.ema_decay, (1 + step) / (10 + step)))
        seconds = time.monotonic() - tick
        return StepResult({**{k: float(v) for k, v in metrics.items()}, "grad_norm": float(grad_norm), "lr": lr,
                           "seconds": seconds}, seconds)

    with trackers:
        step = loop.run(take_step, evaluate=evaluate_ema if heldout is not None else None,
                        save_checkpoint=save_checkpoint_now, line=step_line, plain_every=PLAIN_LINE_EVERY)
        if ema is not None:
            soft_update_(trainable, ema, 0.0)
        save_model(adapter, run_dir / "model", config, lora)
        rows = read_metrics(run_dir)
        reward_curve(rows, run_dir / "heldout_curve.png", keys=(), eval_keys=("heldout_reward",),
                     title="SFT held-out reward")
    final = [r["heldout_reward"] for r in rows if r.get("heldout_reward") is not None]
    run_folder.release()
    return {"steps": step, "final_heldout_reward": final[-1] if final else None, "model": str(run_dir / "model")}


def step_line(step: int, total: int, metrics: dict[str, float]) -> str:
    return f"sft step {step}/{total}: loss {metrics['loss']:.4g}, lr {metrics['lr']:.3g}, {metrics['seconds']:.2f}s"


def save_model(adapter, folder: Path, config: SFTConfig, lora: LoraSpec | None) -> None:
    """Full fine-tuning saves the whole model; LoRA saves diffusers-format LoRA weights only (`lora/`)."""
    transformer = adapter.transformer
    if lora is not None:
        from peft.utils import get_peft_model_state_dict

        adapter.save_lora(get_peft_model_state_dict(transformer), folder / "lora", lora)
        return
    saved = copy.copy(adapter)
    saved.transformer = copy.deepcopy(transformer).to(SAVE_DTYPES[config.save_dtype])
    saved.save_pretrained(folder)
    fix_modes(folder)
