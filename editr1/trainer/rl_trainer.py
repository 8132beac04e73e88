"""The one online RL training loop, for any algorithm (editr1.trainer.algorithms: DiffusionNFT, Flow-GRPO),
any reward and any model adapter.

Per iteration: sample groups -> roll out K edits per group with the old policy (the algorithm's sampler)
-> score -> group advantages and low-variance filtering -> the algorithm's update over rollout steps (one
optimizer step) -> update the old policy -> log, evaluate, checkpoint.
Every random draw comes from a generator seeded by (seed, iteration, purpose), so a run resumed at
iteration n is the same run.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import DistributedType
from accelerate.utils.fsdp_utils import fsdp2_prepare_model

from editr1.config import RewardConfig, TrainConfig
from editr1.data.batching import source_images, source_tensors
from editr1.data.jsonl import EditSample, read_edit_jsonl
from editr1.data.order import take_indices
from editr1.data.prompt_length import fit_prompt_lengths
from editr1.errors import EditR1Error
from editr1.eval.heldout import (
    EvalResult,
    HeldoutSet,
    generate_heldout,
    load_eval,
    paired_gain,
    rank_share,
    save_eval,
    score_heldout,
)
from editr1.fileio import fix_modes
from editr1.eval.report import ReportSection, write_report
from editr1.eval.visuals import before_after_grid, group_grid, reward_curve
from editr1.models.base import Conditions
from editr1.models.registry import is_tiny_preset, tiny_preset_note
from editr1.rewards.base import RewardBatch
from editr1.rewards.combined import build_combined
from editr1.rl.advantages import decoupled_advantages, group_advantages
from editr1.rl.group_filter import groups_to_ban, low_variance_keep_mask
from editr1.rl.group_layout import GroupLayout
from editr1.sampling.generate import edit_batch
from editr1.trainer.algorithms import build_algorithm
from editr1.trainer.async_scoring import RolloutScorer
from editr1.trainer import job
from editr1.trainer.checkpoint import Checkpoint, save_checkpoint
from editr1.trainer.conditions_cache import open_for_run
from editr1.trainer.hacking_watch import HACKING_GRID, HackingWatch
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.model_loading import build_model, lora_spec, with_model_family_settings
from editr1.trainer.policies import PolicySet
from editr1.trainer.progress import console
from editr1.trainer.run_folder import RunFolder, resume_safe_reward_fields
from editr1.trainer.run_loop import StepResult, TrainingLoop
from editr1.trainer.seeding import generator_for
from editr1.trainer.sharding import full_optimizer_state, load_from_main, unsharded_transformer, whole_tensors
from editr1.trainer.trackers import TRACKER_OUTPUTS, Trackers, check_installed

GRID_SAMPLES = 8
COLLECTIVE_TIMEOUT = timedelta(hours=2)
#: Held-out evaluations, one file per step; every gain is paired with the step-0 baseline.
EVAL_FOLDER, BASELINE_EVAL = "eval", "step_000000.safetensors"


@dataclass
class Rollout:
    """One rank's groups of an iteration and their K edits each (rows as `GroupLayout` lays them out)."""

    dataset_indices: list[int]
    conditions: Conditions
    #: Every source image of each group's sample (several for multi-reference models).
    sources: list[list[torch.Tensor]]
    latents: torch.Tensor
    #: What the algorithm's sampler kept for the update (rows on dim 1), e.g. GRPO's every step.
    kept: dict[str, torch.Tensor]
    images: torch.Tensor
    scored: RewardBatch
    #: Seconds the reward spent computing (overlapped with sampling when `reward.overlap`).
    reward_compute_seconds: float


#: What the RL trainer writes in its run folder (discarded when a run starts again from the beginning).
OUTPUTS = ("metrics.jsonl", *TRACKER_OUTPUTS, "grids", EVAL_FOLDER, "checkpoints", "final", "summary.json", "report.md",
           "reward_curve.png", "before_after.png", HACKING_GRID)
#: What only a finished run has.
FINISHED = ("final", "summary.json")
#: Settings a resumed run may not change: they change what is learned, or what the held-out gain is
#: measured against (the step-0 evaluation). Iterations, time budget, eval cadence and logging may.
LOCKED = ("seed", "model", "data", "rollout", "rl", "optim", "reward", "eval.samples", "eval.steps",
          "eval.sampler", "eval.cfg_scale", "eval.guidance", "eval.seed", "eval.reward", "eval.rewards")
#: ...except these, which change how much is computed at once, never what: a run that ran out of memory
#: resumes with smaller batches.
RESUME_SAFE = ("optim.micro_batch", "rollout.batch_size", "eval.batch_size", "model.gradient_checkpointing",
               "model.compile", "reward.overlap", "model.offload_text_encoder", "data.conditions_cache")


def resume_safe_fields(config: TrainConfig) -> tuple[str, ...]:
    return (*RESUME_SAFE, *resume_safe_reward_fields("reward", config.reward),
            *resume_safe_reward_fields("eval.reward", config.eval.reward),
            *(field for i, spec in enumerate(config.eval.rewards)
              for field in resume_safe_reward_fields(f"eval.rewards.{i}", RewardConfig(spec.name, spec.options),
                                                     f"eval.rewards[{i}]")))


def check_sharding(config: TrainConfig, plugin, mixed_precision: str, dynamo_backend: str) -> None:
    """What a sharded (FSDP) run refuses before it writes anything: settings of the accelerate config
    (`plugin`: its FSDP plugin) and of editr1's config that the sharded path does not handle."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    if plugin.fsdp_version != 2:
        raise EditR1Error(f"accelerate config: fsdp_version {plugin.fsdp_version} is not supported; editr1 shards with "
                          "FSDP2 (fsdp_version: 2, as in configs/accelerate/fsdp_1node.yaml)")
    unsupported = {
        # The weights' dtype is model.dtype; accelerate's autocast would also upcast the LoRA's optimizer state.
        "mixed_precision": mixed_precision != "no",
        "dynamo_backend": dynamo_backend.upper() != "NO",
        "fsdp_activation_checkpointing": plugin.activation_checkpointing,
        "fsdp_offload_params": isinstance(plugin.cpu_offload, CPUOffloadPolicy),
        # editr1 reads the weights on the main process only anyway; accelerate's way would also make transformers
        # load the text encoders without weights on the other processes, which encode their own samples.
        "fsdp_cpu_ram_efficient_loading": plugin.cpu_ram_efficient_loading,
        # The frozen copies never run a backward: without resharding they would stay whole on every GPU.
        "fsdp_reshard_after_forward": plugin.reshard_after_forward is not True,
    }
    refused = [name for name, bad in unsupported.items() if bad]
    if refused:
        raise EditR1Error(f"accelerate config: {', '.join(refused)}: not supported with editr1's FSDP path; use the "
                          "values of configs/accelerate/fsdp_1node.yaml (model.gradient_checkpointing for activation "
                          "checkpointing; editr1 always reads the weights on the main process only; model.compile is "
                          "not supported under FSDP yet)")
    if config.rollout.merge_old_adapter:
        raise EditR1Error("rollout.merge_old_adapter: not with a sharded model (a LoRA merge needs whole weights); "
                          "set it to false under FSDP")
    if config.model.compile:
        raise EditR1Error("model.compile: not supported with a sharded model yet (untested); set it to false under FSDP")


def check_sharded_data(adapter, datasets: dict[str, list[EditSample]]) -> None:
    """A sharded transformer's every call gathers its slices from every process, so every process must make
    the same number of calls: refuse data for which the family's `velocity` could make more on one."""
    for field_name, samples in datasets.items():
        problem = adapter.uneven_transformer_calls([len(s.images) for s in samples])
        if problem:
            raise EditR1Error(f"{field_name}: cannot train sharded (FSDP) on this data: {problem}, and every process "
                              "must make the same transformer calls. Give every sample the same number of reference "
                              "images (and leave model.condition_area unset), or train with DDP")


def check_launch(processes: int) -> None:
    """A launcher started this process as one of several, but accelerate set it up alone (on a CPU, the GPU
    launch configs do that unless told otherwise): the processes would run independent copies of the run
    in one folder. Refused at once, before anything is read or written."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and processes == 1:
        raise EditR1Error(f"this process is one of {launched} that a launcher started (WORLD_SIZE={launched}), but "
                          "accelerate set it up as a single process (no GPU for its config), so each would train on "
                          "its own; on a CPU, launch with ACCELERATE_USE_CPU=1 set (`ACCELERATE_USE_CPU=1 accelerate launch "
                          "...`; `accelerate launch --cpu` starts a single process)")


class RLTrainer:
    def __init__(self, config: TrainConfig, resume: bool = False):
        check_installed(config.logging.trackers)  # before anything is written
        self.config = config
        self.run_dir = Path(config.output_dir)
        # Scale-out is accelerate's: `accelerate launch -m editr1.cli.main train ...` runs one process per
        # device; each rolls out its share of one global draw of groups, statistics are gathered.
        # The last block's text-stream output is discarded, so its LoRA gets no gradient: DDP must allow it.
        # The main process alone scores held-out edits and writes checkpoints while the others wait in a
        # collective: a slow judge can take longer than torch's default 10-minute collective timeout.
        self.accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                                        InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        check_launch(self.world)
        self.is_main = self.accelerator.is_main_process
        # One voice (only the main process prints) and one fate (a failure on any process ends them all).
        job.start(self.rank, self.world, self.is_main)
        self.algorithm = build_algorithm(config)
        # An accelerate config with `distributed_type: FSDP` shards the transformer over the processes.
        self.sharded = self.accelerator.distributed_type == DistributedType.FSDP
        if self.sharded:
            state = self.accelerator.state
            check_sharding(config, state.fsdp_plugin, str(state.mixed_precision), str(state.dynamo_plugin.backend.value))
            # The velocity is sliced out of the transformer's output and never changed in place (what this
            # warning, raised at every forward, is about).
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        elif os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and self.is_main:
            console.print("warning: the accelerate config asks for FSDP, but accelerate shards only on GPUs: this run "
                          "is not sharded (every process holds the whole model, as with DDP)", soft_wrap=True)
        # The config's batch is global: the same config trains the same way on 1 or N processes.
        try:
            self.layout = GroupLayout.split(config.rollout.groups_per_iteration, config.rollout.group_size, self.world)
        except ValueError:
            raise EditR1Error(f"rollout.groups_per_iteration: {config.rollout.groups_per_iteration} groups (the global "
                              f"count per optimizer step) do not divide over {self.world} processes; use a multiple "
                              f"of {self.world}") from None
        self.run_folder = RunFolder(self.run_dir, OUTPUTS, FINISHED, LOCKED, main=self.is_main,
                                    unlocked=resume_safe_fields(config), command="editr1 train")
        if self.is_main:  # before any process reads the folder: a second job is refused with that, not another error
            self.run_folder.lock()
        self.accelerator.wait_for_everyone()
        checkpoint = self.run_folder.prepare(config, resume)
        # Every rank has read the folder before the main process changes it.
        self.accelerator.wait_for_everyone()
        evaluating = bool(config.data.heldout and config.eval.every > 0)
        if checkpoint is not None and evaluating and not (self.run_dir / EVAL_FOLDER / BASELINE_EVAL).is_file():
            raise EditR1Error(f"eval.every: {self.run_dir} was started without held-out evaluation, so it has no step-0 "
                              "baseline to measure a gain against; resume it with eval.every: 0, or start a new run")

        # Every input is read and checked before anything is written: the data first (a one-line data error
        # comes before an in-process judge loads its weights), then the judge, which may be a server still starting.
        self.train_samples = read_edit_jsonl(config.data.train, max_pixels=config.data.max_pixels)
        heldout_samples = read_edit_jsonl(config.data.heldout, max_pixels=config.data.max_pixels) if evaluating else None
        # Every answer is checked against the reward contract; a crash's traceback goes to the run folder.
        if config.eval.rewards and not evaluating:
            raise EditR1Error("eval.rewards: evaluation-only rewards score the held-out evaluations, and this run has "
                              "none (data.heldout is null or eval.every is 0)")
        self.reward = build_combined(config.reward, "reward", self.run_folder.reward_errors)
        self.eval_reward = self.reward
        # An eval.reward that is the training reward is that reward, scored once.
        if (evaluating and self.is_main and config.eval.reward is not None
                and config.eval.reward.term_list() != config.reward.term_list()):
            self.eval_reward = build_combined(config.eval.reward, "eval.reward", self.run_folder.reward_errors)
        self.watch = HackingWatch(config.eval.rewards if evaluating and self.is_main else [], config.eval.hacking_patience,
                                  self.run_folder.reward_errors, training_is_heldout=self.eval_reward is self.reward)
        self.size = config.model.resolution
        torch.manual_seed(config.seed)
        corpus = [s.prompt for s in self.train_samples]
        # Read from a cache, conditions need no text encoder; the final export of full fine-tuning (a whole
        # model folder, written by the main process) still writes one. Sharded, only the main process reads the
        # transformer's weights: the others receive their slices from it (`load_from_main` below).
        self.adapter = build_model(config.model, corpus, seed=config.seed,
                                   text_encoders=not config.data.conditions_cache or (config.model.train_mode == "full"
                                                                                      and self.is_main),
                                   transformer_weights=self.is_main or not self.sharded)
        if self.is_main and is_tiny_preset(config.model.path):
            console.print(f"note: {tiny_preset_note(config.model.path)}", soft_wrap=True)
        # The run folder keeps the config as given (`family` stays `family`, which resume compares).
        given = config
        self.config = config = with_model_family_settings(config, self.adapter, announce=self.is_main)
        # Sampler schedules are checked before anything is written (a step count a schedule cannot take).
        self.sigmas = self.adapter.sigmas(config.rollout.steps, self.size, self.size)
        if evaluating:
            self.adapter.sigmas(config.eval.steps, self.size, self.size)
        self.train_samples = fit_prompt_lengths(self.train_samples, config.data.train, self.adapter,
                                                config.data.max_prompt_tokens, config.data.prompt_overflow)
        self.heldout = None
        # Every process edits its share of the held-out samples, and the main process scores them.
        if evaluating:
            held = fit_prompt_lengths(heldout_samples, config.data.heldout, self.adapter, config.data.max_prompt_tokens,
                                      config.data.prompt_overflow)
            token_shape = self.adapter.latent_token_shape(self.size, self.size)
            self.heldout = HeldoutSet.build(held, config.eval.samples, self.size, token_shape, config.eval.seed, config.data.heldout)
        if self.sharded:
            datasets = {"data.train": self.train_samples}
            if self.heldout is not None:
                datasets["data.heldout"] = self.heldout.samples
            check_sharded_data(self.adapter, datasets)
        # Conditions: read from the cache (checked to hold every sample, unchanged), or each sample encoded alone.
        self.cache = None
        if config.data.conditions_cache:
            self.cache = open_for_run(config, self.adapter, corpus, self.train_samples,
                                      self.heldout.samples if self.heldout is not None else None)
            self.adapter.offload_text_encoder = True  # never run: without weights, or kept on the CPU
            if self.heldout is not None:
                self.heldout.source = lambda samples, negative: self.cache.conditions(self.adapter, "heldout", samples, negative)
        if self.is_main:
            self.run_folder.start(given)
            if checkpoint is None:
                self.run_folder.record_base_model(self.adapter, config.model, final="final")
        self.accelerator.wait_for_everyone()

        self.scorer = RolloutScorer(self.reward, config.data.train, config.reward.overlap)
        self.lora = lora_spec(config.model, self.adapter) if config.model.train_mode == "lora" else None
        optim = config.optim
        if not self.sharded:  # sharded: from the CPU copy, so no process ever holds the whole transformer on its device
            self.adapter.to(self.accelerator.device)
        self.policies = PolicySet(self.adapter.transformer, self.lora, need_reference=config.rl.kl_coef > 0,
                                  sharded=self.sharded)
        self.optimizer = torch.optim.AdamW(
            self.policies.trainable_parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        if self.sharded:
            # accelerate shards the transformer in place and points the optimizer at the new parameters; then the
            # main process sends every process its slices of the weights it alone read. The text encoders are not
            # sharded: they stay on the CPU between encodes.
            whole = whole_tensors(self.adapter.transformer) if self.is_main else None
            self.trained_module, prepared = self.accelerator.prepare(self.adapter.transformer, self.optimizer)
            self.optimizer = prepared.optimizer
            load_from_main(self.trained_module, whole, self.accelerator.device)
            self.policies.shard(lambda module: fsdp2_prepare_model(self.accelerator, module))
            self.adapter.offload_text_encoder = True
            self.adapter.to(self.accelerator.device)
        else:
            # DDP-wrapped when several processes run: gradients of the trained policy are averaged across ranks.
            self.trained_module = self.accelerator.prepare_model(self.adapter.transformer)
        self.position, self.banned = 0, set()
        self.saved_step = None
        # The end of the run's figures go to the trackers at its last step (the group grids as they are drawn).
        self.trackers = Trackers(self.run_dir, config.logging, config, main=self.is_main,
                                 final_images=("reward_curve.png", "before_after.png", HACKING_GRID))
        self.loop = TrainingLoop(self.run_dir, self.algorithm.title, "iterations", config.iterations,
                                 time_budget_s=config.time_budget_s, eval_every=config.eval.every,
                                 checkpoint_every=config.logging.checkpoint_every, progress=config.logging.progress,
                                 trackers=self.trackers, is_main=self.is_main)
        self.reported_unscored: set[str] = set()
        if checkpoint is not None:
            self._restore(checkpoint)

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            # Tracker runs end here, failed or not: a launched process ends with `job.leave()`, which skips atexit.
            with self.trackers:
                summary = self._run()
        finally:
            self.scorer.close()
            for reward in {id(r): r for r in (self.reward, self.eval_reward)}.values():
                reward.close()
        self.run_folder.release()
        # Every process stops watching the job before any exits (one whose store goes with it must not take
        # that for a failure).
        self.accelerator.wait_for_everyone()
        job.end()
        self.accelerator.wait_for_everyone()
        # The process group stays up: a launched process ends with `job.leave()`, never through its teardown.
        return summary

    def _run(self) -> dict:
        self.phases = None
        self.loop.run(
            self._iteration,
            evaluate=self._evaluate if self.heldout is not None else None,
            evaluate_at_start=True,
            save_checkpoint=self._save_checkpoint,
            line=iteration_line,
        )
        # The final weights, whole (sharded: every rank takes part in gathering them).
        final_weights = {}
        if self.sharded or (self.is_main and self.lora is not None):  # unsharded full weights save themselves
            final_weights = self.policies.trained_state(self.is_main)
        summary = self._finish(final_weights) if self.is_main else {}
        self.accelerator.wait_for_everyone()
        return summary

    def _iteration(self, step: int) -> StepResult:
        config, rl = self.config, self.config.rl
        if self.phases is None:
            self.phases = {name: self.loop.progress.task(f"  {name}", 1, quiet=True) for name in ("rollout", "train")}
        timings = {}
        tick = time.monotonic()
        layout = self.layout
        indices, self.position = take_indices(
            len(self.train_samples), config.seed, self.position, layout.total_groups, self.banned
        )
        own_groups = indices[layout.rank_groups(self.rank)]
        own_rows = layout.rank_rows(self.rank)
        rollout = self._rollout(step, [self.train_samples[i] for i in own_groups], own_groups, own_rows)
        # Scoring overlapped the rollout; what is left is the wait for the last batch's scores.
        timings["seconds_rollout_and_reward"] = time.monotonic() - tick
        timings["seconds_reward_compute"] = rollout.reward_compute_seconds
        scored = rollout.scored

        tick = time.monotonic()
        # Group statistics (the global std above all) are over every rank's rewards.
        rewards, valid = self._gather_scores(scored)
        first = next(iter(scored.failures.values()), "no reason given")
        if (~valid).float().mean() > rl.max_unscored_fraction:
            raise EditR1Error(
                f"iteration {step + 1}: {int((~valid).sum())} of {valid.numel()} samples could not be scored "
                f"(more than rl.max_unscored_fraction={rl.max_unscored_fraction}); first failure: {first}"
            )
        if not valid.all():
            self._report_unscored("rollouts", int((~valid).sum()), valid.numel(), first)
        group_ids = layout.group_of_row()
        # Each reward's own scores, when several are combined (invalid where it could not score).
        components = {label: self._gather_scores(batch) for label, batch in scored.components.items()}
        if rl.reward_normalization == "per_reward":
            each = components or {"reward": (rewards, valid)}
            advantages = decoupled_advantages(torch.stack([scores for scores, _ in each.values()]),
                                              [term.weight for term in self.reward.terms], group_ids, valid)
        else:
            advantages = group_advantages(rewards, group_ids, valid, rl.std_mode)
        keep = low_variance_keep_mask(rewards, group_ids, rl.filter_rule, rl.filter_mean_threshold, rl.filter_std_threshold, valid)
        if rl.ban_saturated:
            saturated = groups_to_ban(rewards, group_ids, rl.filter_mean_threshold, rl.filter_std_threshold, valid)
            self.banned.update(indices[g] for g in saturated)
        timings["seconds_statistics"] = time.monotonic() - tick

        tick = time.monotonic()
        losses = self._train(step, rollout, advantages[own_rows], keep[own_rows])
        decay = self.algorithm.old_policy_decay(step)
        self.policies.update_old(decay)
        timings["seconds_train"] = time.monotonic() - tick
        # Every rank must take the same decisions (time budget): use the slowest rank's clock.
        wall = sum(v for k, v in timings.items() if k != "seconds_reward_compute")
        elapsed = torch.tensor([wall], device=self.accelerator.device)
        slowest = float(self.accelerator.gather(elapsed).max())

        if self.is_main and config.logging.grid_every and step % config.logging.grid_every == 0:
            self._save_grid(step + 1, rollout, rewards[own_rows])
        good = rewards[valid]
        groups_total = len(indices)
        kept_groups = len(torch.unique(group_ids[keep]))
        return StepResult({
            "reward_mean": float(good.mean()),
            "reward_std": float(good.std(unbiased=False)),
            "reward_min": float(good.min()),
            "reward_max": float(good.max()),
            "unscored": float((~valid).sum()),
            **{f"{key}_mean": float(values[scored.valid].mean()) for key, values in scored.extras.items() if scored.valid.any()},
            **{f"reward_{label}_{name}": value for label, (scores, scored_by) in components.items()
               for name, value in spread(scores, scored_by).items()},
            "fraction_filtered": 1 - kept_groups / groups_total,
            "fraction_banned": len(self.banned) / len(self.train_samples),
            "old_policy_decay": decay,
            **losses,
            **timings,
            "seconds_total": wall,
        }, slowest)

    def _gather_scores(self, scored: RewardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's scores and validity, in rank order, on the CPU."""
        scores = self.accelerator.gather(scored.scores.float().to(self.accelerator.device)).cpu()
        valid = self.accelerator.gather(scored.valid.to(self.accelerator.device, torch.uint8)).cpu().bool()
        return scores, valid

    @torch.no_grad()
    def _rollout(self, step: int, samples: list[EditSample], indices: list[int], rows: slice) -> Rollout:
        rollout_config = self.config.rollout
        k, size = self.layout.group_size, self.size
        shape = self.adapter.latent_token_shape(size, size)
        # One global noise draw, sliced per rank: the edits do not depend on how many processes run.
        noise = torch.randn(self.layout.total_rows, *shape, generator=generator_for(self.config.seed, step, "rollout-noise"))[rows]
        self.phases["rollout"].restart(math.ceil(noise.shape[0] / rollout_config.batch_size))
        sources = [source_tensors(s, size) for s in samples]
        with self.adapter.text_encoders_on_device():  # offloaded text encoders move once
            conditions = self._conditions(samples)
            negative = self._conditions(samples, negative=True) if rollout_config.cfg_scale != 1.0 else None

        sampler = self.algorithm.rollout_sampler(step, rows.start, noise.shape[0], shape)

        def score_batch(rows: torch.Tensor, pixels: torch.Tensor) -> None:
            # Scored in the background while the next batch is sampled.
            groups = (rows // k).tolist()
            self.scorer.submit([sources[g] for g in groups], list(pixels), [samples[g] for g in groups])
            self.phases["rollout"].advance()

        old_policy = self.policies.merged_old() if rollout_config.merge_old_adapter else self.policies.use("old")
        with old_policy as old:
            edited = edit_batch(
                self.adapter, [source_images(s, size) for s in samples], [s.prompt for s in samples],
                noise.to(self.adapter.device), self.sigmas, size, size, repeats=k, batch_size=rollout_config.batch_size,
                sampler=sampler, cfg_scale=rollout_config.cfg_scale, guidance=rollout_config.guidance,
                transformer=old, conditions=conditions, negative_conditions=negative, on_batch=score_batch,
            )
        scored, compute_seconds = self.scorer.collect()
        return Rollout(indices, edited.conditions, sources, edited.latents, sampler.kept(), edited.pixels, scored,
                       compute_seconds)

    def _conditions(self, samples: list[EditSample], negative: bool = False) -> Conditions:
        """The training samples' conditions (with the family's negative prompt when `negative`), one row per
        sample: from the conditions cache, or encoded each alone (what the cache holds, bit for bit)."""
        if self.cache is not None:
            return self.cache.conditions(self.adapter, "train", samples, negative)
        prompts = [self.adapter.inference.negative_prompt if negative else s.prompt for s in samples]
        return self.adapter.encode_each([source_images(s, self.size) for s in samples], prompts, self.size, self.size)

    def _train(self, step: int, rollout: Rollout, advantages: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
        """Accumulate the algorithm's loss over kept edits x a random fraction of their trainable rollout steps,
        then one optimizer step.

        The loss is the mean over every rank's kept (edit, step) pairs. Ranks run the same number of backward
        passes (padding with zero-weight ones), as DDP's gradient all-reduce requires.
        """
        config, rl, algorithm = self.config, self.config.rl, self.algorithm
        kept = torch.nonzero(keep).flatten()
        self.optimizer.zero_grad(set_to_none=True)
        trainable = algorithm.trainable_steps(self.sigmas)
        per_sample = max(1, math.floor(rl.timestep_fraction * trainable.numel()))
        micro = config.optim.micro_batch
        local_steps = per_sample * math.ceil(kept.numel() / micro)
        counts = self.accelerator.gather(torch.tensor([kept.numel() * per_sample, local_steps], device=self.accelerator.device)).view(-1, 2)
        total_pairs, backward_passes = int(counts[:, 0].sum()), int(counts[:, 1].max())
        if total_pairs == 0:
            return {"skipped_update": 1.0}  # every group filtered: no loss to report, none invented
        # Every row draws from its own stream, named by its global row: its steps (a shuffled subset of the
        # trainable ones) and then, one per step in order, its noise. So the update does not depend on how rows
        # are split over processes or micro-batches.
        first_row = self.layout.rank_rows(self.rank).start
        streams = {int(row): generator_for(config.seed, step, f"train-row{first_row + int(row)}") for row in kept}
        order = [trainable[torch.randperm(trainable.numel(), generator=streams[int(row)])[:per_sample]] for row in kept]
        batches = [
            (kept[start : start + micro], torch.stack([o[column] for o in order[start : start + micro]]))
            for column in range(per_sample)
            for start in range(0, kept.numel(), micro)
        ]
        padding = [(torch.zeros(1, dtype=torch.long), trainable[:1])] * (backward_passes - len(batches))
        group_of_row = self.layout.group_of_row(len(rollout.dataset_indices))
        shape = rollout.latents.shape[1:]
        sums: dict[str, float] = {}
        device, guidance = self.accelerator.device, config.rollout.guidance
        self.phases["train"].restart(backward_passes)
        for index, (rows, steps) in enumerate(batches + padding):
            is_padding = index >= len(batches)

            def noise(rows=rows, is_padding=is_padding) -> torch.Tensor:
                if is_padding:
                    return torch.zeros(rows.numel(), *shape)
                return torch.stack([torch.randn(shape, generator=streams[int(row)]) for row in rows])

            inputs = algorithm.update_inputs(rollout.latents, rollout.kept, rows, steps, self.sigmas, noise)
            x_t, t = inputs.x_t.to(device), inputs.t.to(device)
            conditions = rollout.conditions.select(group_of_row[rows])
            v_old = v_ref = None
            with torch.no_grad():
                if algorithm.needs_old_velocity:
                    with self.policies.use("old") as old:
                        v_old = self.adapter.velocity(x_t, t, conditions, guidance, old)
                if rl.kl_coef > 0:
                    with self.policies.use("reference") as reference:
                        v_ref = self.adapter.velocity(x_t, t, conditions, guidance, reference)
            last = index == backward_passes - 1
            # Sharded gradients are reduced at every backward: unsynced ones would be whole on every rank.
            unsynced = not (last or self.sharded)
            with self.policies.use("trained"), (self.accelerator.no_sync(self.trained_module) if unsynced else nullcontext()):
                v_theta = self.adapter.velocity(x_t, t, conditions, guidance, self.trained_module)
                loss, loss_metrics = algorithm.loss(inputs, v_theta, v_old, v_ref, advantages[rows].to(device))
                if not torch.isfinite(loss):
                    raise EditR1Error(f"iteration {step + 1}: the {algorithm.title} loss is {loss.item()}; training "
                                      "diverged, lower optim.lr")
                share = 0.0 if is_padding else rows.numel() / total_pairs
                # DDP averages gradients over ranks; scaling by the world size makes that a sum.
                (loss * share * self.world).backward()
            metrics = dict(loss_metrics)
            if v_old is not None:
                metrics["old_deviation"] = (v_theta.detach() - v_old).pow(2).mean()
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) * share
            self.phases["train"].advance()
        summed = self.accelerator.reduce(torch.tensor(list(sums.values()), device=device, dtype=torch.float64), "sum")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policies.trainable_parameters(), config.optim.grad_clip)
        self.optimizer.step()
        return {**dict(zip(sums, summed.tolist())), "grad_norm": float(grad_norm)}

    # ---- evaluation, grids, checkpoints --------------------------------------------------------
    def _evaluate(self, step: int) -> dict[str, float]:
        ev = self.config.eval
        tick = time.monotonic()
        guidance = self.config.rollout.guidance if ev.guidance is None else ev.guidance
        count = len(self.heldout.samples)
        # Each process edits its share (padded: the same transformer calls on every one); the main process
        # gathers the edits and scores them.
        share = rank_share(count, self.world, self.rank)
        with torch.no_grad(), self.policies.use("trained") as trained:
            edited = generate_heldout(self.adapter, self.heldout, ev.steps, ev.sampler, ev.cfg_scale, trained,
                                      ev.batch_size, guidance, indices=share)
        if self.world > 1:
            edited = self._gather_shares(edited, ev.batch_size, count)
        if not self.is_main:
            return {}
        result = score_heldout(self.heldout, self.eval_reward, edited, ev.batch_size)
        if result.failures:
            self._report_unscored("the held-out evaluation", len(result.failures), result.scores.numel(),
                                  next(iter(result.failures.values())))
        metrics = self.watch.score(self.heldout, result, ev.batch_size)
        # The alarm compares the training reward with the evaluation-only rewards on the same edits.
        if (ev.track_training_reward or self.watch) and self.eval_reward is not self.reward:
            samples = self.heldout.samples
            tracked = self.reward.score([source_tensors(s, self.size) for s in samples], list(result.edited), samples,
                                        self.heldout.data_file)
            result.training_scores, result.training_valid = tracked.scores, tracked.valid
            if tracked.valid.any():
                metrics["heldout_training_reward"] = float(tracked.scores[tracked.valid].mean())
        folder = self.run_dir / EVAL_FOLDER
        save_eval(result, folder / f"step_{step:06d}.safetensors", GRID_SAMPLES)
        metrics.update(heldout_reward=result.mean, seconds_eval=time.monotonic() - tick)
        if step > 0:
            base = load_eval(folder / BASELINE_EVAL)
            gain, stderr, _ = paired_gain(result.scores, result.valid, base.scores, base.valid)
            metrics["heldout_gain"] = gain
            if stderr is not None:
                metrics["heldout_gain_stderr"] = stderr
            if self.watch:
                metrics.update(self.watch.compare(step, result, base, self._previous_evaluation(step), self.heldout,
                                                  self.run_dir))
        line = f"step {step}: held-out reward {result.mean:.4f}"
        if step:
            line += f" (gain {gain:+.4f}" + (f" ± {stderr:.4f})" if stderr is not None else ")")
        console.print(line)
        return metrics

    def _previous_evaluation(self, step: int) -> tuple[dict, EvalResult] | None:
        """The metrics row and saved result of the last evaluation before `step` (None: there was none)."""
        rows = [row for row in read_metrics(self.run_dir) if "heldout_reward" in row and row["step"] < step]
        if not rows:
            return None
        return rows[-1], load_eval(self.run_dir / EVAL_FOLDER / f"step_{rows[-1]['step']:06d}.safetensors")

    def _gather_shares(self, share: torch.Tensor, chunk: int, count: int) -> torch.Tensor | None:
        """The first `count` rows of every process's equal-sized `share`, in rank order, on the main process
        (None elsewhere); `chunk` rows at a time, so a device holds only `world x chunk` of them at once."""
        pieces: list[list[torch.Tensor]] = [[] for _ in range(self.world)]
        for start in range(0, share.shape[0], chunk):
            gathered = self.accelerator.gather(share[start:start + chunk].to(self.accelerator.device)).cpu()
            for rank, piece in enumerate(gathered.chunk(self.world)):
                pieces[rank].append(piece)
        return torch.cat([torch.cat(rank_pieces) for rank_pieces in pieces])[:count] if self.is_main else None

    def _report_unscored(self, where: str, count: int, total: int, reason: str) -> None:
        """Once per kind of failure and run: the reason is the same every time."""
        if where in self.reported_unscored or not self.is_main:
            return
        self.reported_unscored.add(where)
        console.print(f"warning: the reward could not score {count} of {total} samples in {where} (they are left out, "
                      f"and counted as `unscored` in metrics.jsonl); first reason: {reason}", soft_wrap=True)

    def _save_grid(self, iteration: int, rollout: Rollout, rewards: torch.Tensor) -> None:
        folder = self.run_dir / "grids"
        folder.mkdir(exist_ok=True)
        for g in range(min(self.config.logging.grid_groups, len(rollout.dataset_indices))):
            rows = self.layout.rows_of_group(g)
            image = group_grid(rollout.sources[g], list(rollout.images[rows]), rewards[rows].tolist(),
                               self.train_samples[rollout.dataset_indices[g]].prompt)
            path = folder / f"step_{iteration:06d}_group{g}.png"
            image.save(path)
            self.trackers.log_images(iteration, {f"grids/group{g}": path})

    def _save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.loop.step == self.saved_step:  # the final save after a periodic one at the same step
            return
        self.saved_step = self.loop.step
        if self.is_main or self.sharded:  # sharded: every rank takes part in gathering the slices
            trained, old = self.policies.trained_state(self.is_main), self.policies.old_state(self.is_main)
            optimizer_state = full_optimizer_state(self.optimizer, self.is_main)
        if self.is_main:
            state = {
                "position": self.position,
                "banned": sorted(self.train_samples[i].id for i in self.banned),
                "train_seconds": self.loop.seconds,
            }
            save_checkpoint(self.run_folder.checkpoints, self.loop.step, trained, old, optimizer_state, state,
                            keep=self.config.logging.keep_checkpoints)

    def _restore(self, checkpoint: Checkpoint) -> None:
        # Sharded, each process reads only its rows of the moments (here) and of the weights (below).
        checkpoint.restore(self.optimizer)
        self.policies.load_states(checkpoint.trained, checkpoint.old)
        state = checkpoint.state
        ids = {s.id: i for i, s in enumerate(self.train_samples)}
        self.loop.resume_at(state["step"], state["train_seconds"])
        self.saved_step = checkpoint.step
        self.position = state["position"]
        self.banned = {ids[sample_id] for sample_id in state["banned"] if sample_id in ids}
        if self.is_main:
            console.print(f"resumed from {checkpoint.folder} at iteration {checkpoint.step}")

    def _finish(self, final_weights: dict[str, torch.Tensor]) -> dict:
        rows = read_metrics(self.run_dir)
        reward_curve(rows, self.run_dir / "reward_curve.png",
                     eval_keys=("heldout_reward", "heldout_training_reward", *self.watch.curve_keys),
                     title=f"{self.algorithm.title}: rollout and held-out reward")
        final_folder = self.run_dir / "final"
        if self.lora is not None:
            self.adapter.save_lora(final_weights, final_folder, self.lora)
        else:
            with unsharded_transformer(self.adapter, final_weights):
                self.adapter.save_pretrained(final_folder)
            fix_modes(final_folder)
        step = self.loop.step
        summary = {"iterations": step, "train_seconds": round(self.loop.seconds, 1)}
        if self.heldout is not None:
            eval_dir = self.run_dir / EVAL_FOLDER
            base = load_eval(eval_dir / BASELINE_EVAL)
            final = load_eval(eval_dir / f"step_{step:06d}.safetensors")
            gain, stderr, both = paired_gain(final.scores, final.valid, base.scores, base.valid)
            summary.update(
                base_heldout_reward=float(base.scores[both].mean()),
                final_heldout_reward=float(final.scores[both].mean()),
                heldout_n=int(both.sum()),
                heldout_stderr=stderr,
            )
            if base.training_scores is not None and final.training_scores is not None:
                _, tracked_stderr, tracked = paired_gain(final.training_scores, final.training_valid,
                                                         base.training_scores, base.training_valid)
                summary.update(
                    base_heldout_training_reward=float(base.training_scores[tracked].mean()),
                    final_heldout_training_reward=float(final.training_scores[tracked].mean()),
                    heldout_training_stderr=tracked_stderr,
                )
            if self.watch:
                summary.update(self.watch.summary(base, final, rows))
            n = min(GRID_SAMPLES, len(self.heldout.samples))
            samples = self.heldout.samples[:n]
            grid = before_after_grid(
                [source_tensors(s, self.size) for s in samples], list(base.edited[:n]), list(final.edited[:n]),
                [s.prompt for s in samples], base.scores[:n].tolist(), final.scores[:n].tolist(),
            )
            grid.save(self.run_dir / "before_after.png")
        self.run_folder.write_json("summary.json", summary)
        sections = [ReportSection("Reward curve", "Rollout reward per iteration and held-out reward at evaluations.", "reward_curve.png")]
        if self.watch:
            sections.append(self.watch.report_section(summary))
        if self.heldout is not None:
            sections.append(ReportSection("Before / after", f"Held-out samples: source, base model, after {self.algorithm.title}.", "before_after.png"))
        if is_tiny_preset(self.config.model.path):  # first: it says how to read everything below
            sections.insert(0, ReportSection("Tiny preset", tiny_preset_note(self.config.model.path)))
        write_report(self.run_dir, summary, sections, title=f"editr1: {self.algorithm.title} run")
        return summary


def spread(scores: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """A reward's mean, population std and count of unscored samples (no mean or std when none was scored)."""
    good = scores[valid]
    moments = {"mean": float(good.mean()), "std": float(good.std(unbiased=False))} if good.numel() else {}
    return {**moments, "unscored": float((~valid).sum())}


def iteration_line(iteration: int, total: int, metrics: dict[str, float]) -> str:
    """One plain log line per iteration, for runs without a terminal."""
    line = (f"iteration {iteration}/{total}: reward {metrics['reward_mean']:.4f} ± {metrics['reward_std']:.4f}, "
            f"filtered {metrics['fraction_filtered']:.2f}")
    if metrics.get("unscored"):
        line += f", unscored {int(metrics['unscored'])}"
    if "loss" in metrics:
        line += f", loss {metrics['loss']:.4g}"
    return line + (f", rollout+reward {metrics['seconds_rollout_and_reward']:.1f}s, train {metrics['seconds_train']:.1f}s, "
                   f"total {metrics['seconds_total']:.1f}s")


def run_rl(config: TrainConfig, resume: bool = False) -> dict:
    return RLTrainer(config, resume=resume).run()
