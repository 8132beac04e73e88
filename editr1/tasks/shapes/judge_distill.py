"""`editr1 judge distill`: teach the tiny Qwen2.5-VL judge to answer the shapes verifier's score.

The judge sees what a real one sees (source image, edited image, the instruction in the judge
prompt) and is trained, with cross-entropy at its first answer position, to put on the score tokens a
distribution whose expectation is the verifier's score. A judge trained from scratch on that one
token per example stays image-blind for a long time (it learns the score prior first), so each step
also trains it to caption single images ("a red circle at the top left, ..."), the dense
vision-language pretraining real judges get before any scoring. Its training edits are the policy model's own
rollouts (what RL will show it), the exact targets, and procedural corruptions. Its pairwise agreement
with the verifier is measured on rollouts of held-out samples, written as a preference-pairs file so
that `editr1 eval reward-alignment` measures any reward the same way.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editr1.data.batching import source_images, source_tensors
from editr1.data.jsonl import EditSample, read_edit_jsonl, write_jsonl
from editr1.data.preference_pairs import read_preference_jsonl
from editr1.data.prompt_length import fit_prompt_lengths
from editr1.errors import EditR1Error
from editr1.eval.reward_alignment import evaluate_alignment
from editr1.eval.visuals import reward_curve
from editr1.rewards.judge_prompt import JudgePrompt
from editr1.rewards.mllm_judge import MLLMJudgeReward
from editr1.rewards.readouts import ScoreLogit
from editr1.rewards.score_logit import DEFAULT_LEVELS, expected_score, score_token_ids, two_hot_levels
from editr1.rewards.tiny_judge import build_tiny_judge, save_judge
from editr1.sampling.generate import edit_batch
from editr1.tasks.shapes.config import JudgeDistillConfig, JudgeRolloutConfig
from editr1.tasks.shapes.corruptions import corrupted_edits
from editr1.tasks.shapes.scenes import (
    apply_edit,
    describe_scene,
    parse_instruction,
    parse_scene,
    render,
)
from editr1.tasks.shapes.verifier import verify_edit
from editr1.trainer import job
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.model_loading import build_model
from editr1.trainer.run_folder import RunFolder
from editr1.trainer.run_loop import TrainingLoop, timed
from editr1.trainer.progress import console, phase_progress
from editr1.trainer.seeding import generator_for
from editr1.trainer.sft import SAVE_DTYPES, learning_rate_factor
from editr1.trainer.trackers import TRACKER_OUTPUTS, Trackers, check_installed

ROLLOUT_BATCH = 64
CAPTION_REQUEST = "Describe the image."


@dataclass
class JudgeExamples:
    """Edited images with their verifier scores; `source_of[i]` indexes `sources` and `samples`."""

    samples: list[EditSample]
    sources: np.ndarray
    source_of: np.ndarray
    edited: np.ndarray
    scores: np.ndarray


def caption_examples(examples: JudgeExamples) -> tuple[list[np.ndarray], list[str]]:
    """Every distinct clean rendering among the sources and edits, with its scene caption."""
    images, captions, seen = [], [], set()
    for image in [*examples.sources, *examples.edited]:
        key = image.tobytes()
        if key in seen:
            continue
        seen.add(key)
        try:
            scene = parse_scene(image, strict=True)
        except ValueError:  # not an exact rendering (a rollout, a noisy corruption)
            continue
        images.append(image)
        captions.append(describe_scene(scene))
    return images, captions


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return t.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def policy_rollouts(adapter, samples: list[EditSample], spec: JudgeRolloutConfig, size: int, generator: torch.Generator,
                    on_batch=None) -> np.ndarray:
    """`spec.count` edits of every sample, `(len(samples) * count, H, W, 3)` uint8, sample-major."""
    sigmas = adapter.sigmas(spec.steps, size, size)
    token_shape = adapter.latent_token_shape(size, size)
    chunks = []
    per_chunk = max(1, ROLLOUT_BATCH // spec.count)
    for start in range(0, len(samples), per_chunk):
        chunk = samples[start : start + per_chunk]
        noise = torch.randn(len(chunk) * spec.count, *token_shape, generator=generator).to(adapter.device)
        edited = edit_batch(adapter, [source_images(s, size) for s in chunk], [s.prompt for s in chunk], noise, sigmas,
                            size, size, repeats=spec.count, batch_size=ROLLOUT_BATCH, sampler=spec.sampler)
        chunks.append(_to_uint8(edited.pixels))
        if on_batch is not None:
            on_batch(len(chunk))
    return np.concatenate(chunks)


def build_examples(adapter, samples: list[EditSample], config: JudgeDistillConfig, progress) -> JudgeExamples:
    size = config.policy.resolution
    sources = np.stack([_to_uint8(source_tensors(s, size)[0][None])[0] for s in samples])
    edited, source_of = [], []
    for number, spec in enumerate(config.rollouts):
        if spec.count == 0:
            continue
        task = progress.task(f"judge data: {spec.sampler} x{spec.steps} rollouts", len(samples))
        images = policy_rollouts(adapter, samples, spec, size, generator_for(config.seed, number, "judge-rollouts"), task.advance)
        task.done()
        edited.append(images)
        source_of.append(np.repeat(np.arange(len(samples)), spec.count))
    rng = random.Random(f"editr1-judge:{config.seed}")
    task = progress.task("judge data: targets and corruptions", len(samples))
    for index, sample in enumerate(samples):
        scene, edit = parse_scene(sources[index], strict=True), parse_instruction(sample.prompt)
        images = [render(apply_edit(scene, edit)), *corrupted_edits(rng, scene, edit, config.corruptions_per_sample)]
        edited.append(np.stack(images))
        source_of.append(np.full(len(images), index))
        task.advance()
    task.done()
    edited_all, source_all = np.concatenate(edited), np.concatenate(source_of)
    scores = np.array([verify_edit(sources[s], e, samples[s].prompt) for s, e in zip(source_all, edited_all)], dtype=np.float32)
    return JudgeExamples(samples, sources, source_all, edited_all, scores)


def write_heldout_pairs(adapter, samples: list[EditSample], config: JudgeDistillConfig, folder: Path) -> Path:
    """Two rollouts per held-out sample (the first rollout spec, as RL samples them), labelled by the
    verifier: "tie" when their scores are within `tie_margin`. Returns the pairs JSONL."""
    size = config.policy.resolution
    spec = JudgeRolloutConfig(config.rollouts[0].sampler, config.rollouts[0].steps, 2)
    images = policy_rollouts(adapter, samples, spec, size, generator_for(config.seed, 0, "judge-heldout-pairs"))
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, sample in enumerate(samples):
        source = _to_uint8(source_tensors(sample, size)[0][None])[0]
        a, b = images[2 * index], images[2 * index + 1]
        score_a, score_b = verify_edit(source, a, sample.prompt), verify_edit(source, b, sample.prompt)
        preferred = "tie" if abs(score_a - score_b) < config.tie_margin else ("a" if score_a > score_b else "b")
        names = {}
        for side, image in (("source", source), ("a", a), ("b", b)):
            names[side] = f"images/{sample.id}_{side}.png"
            Image.fromarray(image).save(folder / names[side])
        rows.append({"id": sample.id, "source": names["source"], "prompt": sample.prompt, "requirement": sample.requirement,
                     "image_a": names["a"], "image_b": names["b"], "preferred": preferred,
                     "verifier_a": round(score_a, 6), "verifier_b": round(score_b, 6)})
    path = folder / "pairs.jsonl"
    write_jsonl(path, rows)
    return path


def pairwise_ranking_loss(expected: torch.Tensor, scores: torch.Tensor, source_of: torch.Tensor, margin: float,
                          sharpness: float = 10.0) -> torch.Tensor:
    """Logistic loss on the order of every two edits of one source whose verifier scores differ by more
    than `margin`: RL uses the judge to rank a group's edits, so the ranking is trained directly."""
    same = source_of[:, None] == source_of[None, :]
    better = (scores[:, None] - scores[None, :]) > margin
    pairs = same & better
    if not pairs.any():
        return expected.sum() * 0
    gaps = (expected[:, None] - expected[None, :]).float()
    return torch.nn.functional.softplus(-sharpness * gaps[pairs]).mean()


#: What `editr1 judge distill` writes in its run folder.
OUTPUTS = ("metrics.jsonl", *TRACKER_OUTPUTS, "judge", "examples.npz", "heldout_pairs", "agreement_curve.png", "summary.json")


class JudgeDistiller:
    def __init__(self, config: JudgeDistillConfig):
        check_installed(config.logging.trackers)
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.trackers = Trackers(self.run_dir, config.logging, config, final_images=("agreement_curve.png",))
        self.run_folder = RunFolder(self.run_dir, OUTPUTS, finished=("judge", "summary.json"), locked=(), resumable=False,
                                    command="editr1 judge distill")
        self.run_folder.prepare(config, resume=False)
        # Every input is read and checked before anything is written.
        self.train = read_edit_jsonl(config.data.train, max_pixels=config.data.max_pixels)
        self.heldout = read_edit_jsonl(config.data.heldout, max_pixels=config.data.max_pixels) if config.data.heldout else []
        arch = config.arch
        corpus = [s.prompt for s in self.train] + [CAPTION_REQUEST, describe_scene(parse_scene(np.zeros((32, 32, 3), np.uint8)))]
        self.judge = build_tiny_judge(corpus, config.policy.resolution, config.seed, arch.hidden,
                                      arch.layers, arch.vision_hidden, arch.vision_depth)
        self.prompt = JudgePrompt()
        self.level_ids = torch.tensor(score_token_ids(self.judge.tokenizer))
        if config.reuse_examples and not Path(config.reuse_examples).is_file():
            raise EditR1Error(f"reuse_examples: {config.reuse_examples} not found")
        torch.manual_seed(config.seed)
        self.policy = build_model(config.policy, [s.prompt for s in self.train], seed=config.seed, section="policy")
        data = config.data
        self.train = fit_prompt_lengths(self.train, data.train, self.policy, data.max_prompt_tokens, data.prompt_overflow)
        if self.heldout:
            self.heldout = fit_prompt_lengths(self.heldout, data.heldout, self.policy, data.max_prompt_tokens,
                                              data.prompt_overflow)
        self.run_folder.start(config)

    def run(self) -> dict:
        config = self.config
        with phase_progress(config.logging.progress) as progress:
            policy, self.policy = self.policy, None  # freed once its rollouts are made
            examples = self._examples(policy, progress)
            pairs_path = None
            if self.heldout and config.eval_pairs:
                pairs_path = write_heldout_pairs(policy, self.heldout[: config.eval_pairs], config, self.run_dir / "heldout_pairs")
            del policy
        console.print(f"judge: {len(examples.scores)} training edits, mean verifier score {examples.scores.mean():.3f}")
        pairs = read_preference_jsonl(pairs_path) if pairs_path else []
        with self.trackers:
            step = self._train(examples, pairs)
            save_judge(self.judge, self.run_dir / "judge", SAVE_DTYPES[config.save_dtype])
            rows = read_metrics(self.run_dir)
            reward_curve(rows, self.run_dir / "agreement_curve.png", keys=("loss",), eval_keys=("heldout_agreement",),
                         title="Judge distillation: loss and held-out agreement with the verifier")
        summary = {"steps": step, "training_edits": int(len(examples.scores)), "judge": str(self.run_dir / "judge")}
        if pairs:
            summary.update(self._agreement(pairs).as_dict())
            summary["pairs"] = str(pairs_path)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.run_folder.release()
        return summary

    def _examples(self, policy, progress) -> JudgeExamples:
        """Built once per run and kept in `examples.npz`; `reuse_examples` points at another run's file."""
        path = Path(self.config.reuse_examples) if self.config.reuse_examples else self.run_dir / "examples.npz"
        if path.is_file():
            data = np.load(path)
            if len(data["sources"]) != len(self.train):
                raise EditR1Error(f"{path}: built from {len(data['sources'])} training samples, the data has {len(self.train)}")
            return JudgeExamples(self.train, data["sources"], data["source_of"], data["edited"], data["scores"])
        examples = build_examples(policy, self.train, self.config, progress)
        np.savez_compressed(self.run_dir / "examples.npz", sources=examples.sources, source_of=examples.source_of,
                            edited=examples.edited, scores=examples.scores)
        return examples

    def _agreement(self, pairs):
        self.judge.model.eval()
        return evaluate_alignment(MLLMJudgeReward(self.judge, ScoreLogit(self.prompt, DEFAULT_LEVELS)), pairs)

    def _train(self, examples: JudgeExamples, pairs) -> int:
        config, model = self.config, self.judge.model
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        order = torch.empty(0, dtype=torch.long)
        # Batches are whole sources (all their edits), so that the ranking loss compares edits of one source.
        by_source = [torch.from_numpy(np.flatnonzero(examples.source_of == s)) for s in range(len(examples.sources))]
        sources_per_batch = max(1, config.batch_size // max(len(group) for group in by_source))
        caption_images, captions = caption_examples(examples) if config.caption_weight > 0 else ([], [])

        def take_step(step: int) -> dict[str, float]:
            nonlocal order
            if order.numel() < sources_per_batch:
                order = torch.cat([order, torch.randperm(len(by_source), generator=generator_for(config.seed, step, "judge-order"))])
            batch = torch.cat([by_source[s] for s in order[:sources_per_batch].tolist()])
            order = order[sources_per_batch:]
            lr = config.lr * learning_rate_factor(step, config.steps, config.warmup_steps, "cosine")
            for group in optimizer.param_groups:
                group["lr"] = lr
            score_loss, expected = self._loss(examples, batch)
            ranking_loss = pairwise_ranking_loss(expected, torch.from_numpy(examples.scores[batch.numpy()]),
                                                 torch.from_numpy(examples.source_of[batch.numpy()]), config.tie_margin)
            loss, caption_loss = score_loss + config.ranking_weight * ranking_loss, torch.zeros(())
            if captions:
                picks = torch.randint(len(captions), (config.caption_batch_size,),
                                      generator=generator_for(config.seed, step, "judge-captions")).tolist()
                caption_loss = self._caption_loss([caption_images[i] for i in picks], [captions[i] for i in picks])
                loss = loss + config.caption_weight * caption_loss
            if not torch.isfinite(loss):
                raise EditR1Error(f"judge step {step + 1}: the loss is {loss.item()}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            return {"loss": loss.item(), "score_loss": score_loss.item(), "caption_loss": caption_loss.item(),
                    "ranking_loss": ranking_loss.item(), "grad_norm": float(grad_norm), "lr": lr}

        def agreement(step: int) -> dict[str, float]:
            result = self._agreement(pairs)
            model.train()
            if result.accuracy is None:  # every held-out pair a tie, or unscored: no agreement to report
                raise EditR1Error(f"judge step {step}: no held-out agreement to measure: {result.reason}")
            console.print(f"judge step {step}: held-out pairwise agreement with the verifier {result.accuracy:.4f}")
            return {"heldout_agreement": result.accuracy}

        loop = TrainingLoop(self.run_dir, "judge", "steps", config.steps, time_budget_s=config.time_budget_s,
                            eval_every=config.eval_every, checkpoint_every=0, progress=config.logging.progress,
                            trackers=self.trackers, evaluated_key="heldout_agreement")
        step = loop.run(timed(take_step), evaluate=agreement if pairs else None, evaluate_at_end=False)
        model.eval()
        return step

    def _loss(self, examples: JudgeExamples, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy against the two-hot score targets, and the judge's expected scores (the reward)."""
        conversations = []
        for i in batch.tolist():
            sample = examples.samples[examples.source_of[i]]
            images = [Image.fromarray(examples.sources[examples.source_of[i]]), Image.fromarray(examples.edited[i])]
            conversations.append((self.prompt.messages(sample.prompt, sample.requirement), images))
        inputs = self.judge.processor(
            text=[self.judge.prompt_text(m) for m, _ in conversations],
            images=[image for _, images in conversations for image in images], padding=True, return_tensors="pt",
        )
        logits = self.judge.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        target = torch.zeros_like(logits)
        target[:, self.level_ids] = two_hot_levels(torch.from_numpy(examples.scores[batch.numpy()])).float()
        log_probabilities = torch.log_softmax(logits, dim=-1)
        expected = expected_score(log_probabilities[:, self.level_ids])
        return -(target * log_probabilities).sum(-1).mean(), expected


    def _caption_loss(self, images: list[np.ndarray], captions: list[str]) -> torch.Tensor:
        """Teacher-forced cross-entropy of each caption (and its end token) after a one-image prompt."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_REQUEST}]}]
        prompt = self.judge.prompt_text(messages)
        end = self.judge.processor.tokenizer.eos_token
        inputs = self.judge.processor(text=[prompt + c + end for c in captions], images=[Image.fromarray(i) for i in images],
                                      padding=True, return_tensors="pt")
        answer_lengths = [len(self.judge.tokenizer(c + end, add_special_tokens=False)["input_ids"]) for c in captions]
        keep = max(answer_lengths) + 1
        logits = self.judge.model(**inputs, logits_to_keep=keep).logits.float()  # the last `keep` positions
        targets = inputs["input_ids"][:, -keep + 1 :]
        log_probabilities = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None])[..., 0]
        # Left padding: every row's answer is its last `answer_lengths[i]` tokens.
        mask = torch.arange(keep - 1)[None, :] >= (keep - 1 - torch.tensor(answer_lengths))[:, None]
        return -(log_probabilities * mask).sum() / mask.sum()


def run_judge_distill(config: JudgeDistillConfig) -> dict:
    job.refuse_launcher("editr1 judge distill")
    return JudgeDistiller(config).run()
