"""The in-process MLLM judge and the `mllm` reward: a readout (score logit by default) of a transformers chat model.

Any image-text-to-text chat model loads (`AutoModelForImageTextToText`), Qwen2.5-VL first. Prompts
are batched with left padding so that the last position of every row is its first answer position.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from editr1.data.images import tensor_to_image
from editr1.errors import EditR1Error
from editr1.hub import resolve_model_path
from editr1.processing.qwen2vl_image_only import load_image_only_processor
from editr1.rewards.base import Reward, RewardBatch, check_batch
from editr1.rewards.readouts import Readout, build_readout, content_seed
from editr1.rewards.score_logit import DEFAULT_LEVELS

#: One conversation: chat messages whose image parts are placeholders, and the images in order.
Conversation = tuple[list[dict], list[Image.Image]]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_judge_processor(folder: Path):
    """Qwen2-VL-family processors load without torchvision; other models through AutoProcessor."""
    config = folder / "preprocessor_config.json"
    if config.is_file() and '"Qwen2VLImageProcessor' in config.read_text():
        return load_image_only_processor(folder)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


class MLLMJudge:
    """A chat model whose next-token distribution after the assistant prefix is read, never sampled."""

    def __init__(self, model: torch.nn.Module, processor, batch_size: int = 8):
        if getattr(processor, "chat_template", None) is None:
            raise EditR1Error("the judge's processor has no chat template")
        self.model, self.processor, self.batch_size = model.eval(), processor, batch_size
        self.processor.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, dtype: str = "float32", device: str = "cpu", batch_size: int = 8) -> "MLLMJudge":
        from transformers import AutoModelForImageTextToText

        if dtype not in _DTYPES:
            raise EditR1Error(f"judge dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        folder = resolve_model_path(path_or_id)
        try:
            model = AutoModelForImageTextToText.from_pretrained(folder, dtype=_DTYPES[dtype])
            processor = load_judge_processor(folder)
        except (OSError, ValueError) as error:
            raise EditR1Error(f"{folder}: cannot load a judge model from it ({error})") from error
        return cls(model.to(device), processor, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def prompt_text(self, messages: list[dict]) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def next_token_logits(self, conversations: list[Conversation]) -> torch.Tensor:
        """`(N, V)` float32 logits of the first answer token of each conversation."""
        rows = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            images = [image for _, conversation_images in chunk for image in conversation_images]
            inputs = self.processor(
                text=[self.prompt_text(messages) for messages, _ in chunk],
                images=images or None, padding=True, return_tensors="pt",
            ).to(self.device)
            rows.append(self.model(**inputs, logits_to_keep=1).logits[:, -1].float().cpu())
        return torch.cat(rows) if rows else torch.empty(0, self.model.config.get_text_config().vocab_size)


class MLLMJudgeReward(Reward):
    """An in-process judge's reward in [0, 1], read from its first answer token by a readout: the expected score
    (score logit, the default), P(Yes) over {Yes, No}, or sampled scores (editr1/rewards/readouts.py)."""

    name = "mllm"

    def __init__(self, judge: MLLMJudge, readout: Readout | None = None, seed: int = 0):
        self.judge, self.seed = judge, seed
        self.readout = readout or build_readout("score", None)
        try:
            self.readout.bind(judge.tokenizer)
        except ValueError as error:
            field = "levels" if self.readout.name == "score" else "readout"
            raise EditR1Error(f"reward.options.{field}: {error}") from error

    def score(self, sources, edited, prompts, requirements) -> RewardBatch:
        """The judge sees each reference image in order, then the edit, then the text."""
        check_batch(sources, edited, prompts, requirements)
        n = len(edited)
        scores = torch.full((n,), float("nan"), dtype=torch.float64)
        diagnostic = torch.full((n,), float("nan"), dtype=torch.float64)
        failures: dict[int, str] = {}
        conversations, seeds, rows = [], [], []
        prompt = self.readout.prompt
        for i in range(n):
            images = [*sources[i], edited[i]]
            if not all(torch.isfinite(image).all() for image in images):
                failures[i] = "image contains NaN or infinite values"
                continue
            pictures = [tensor_to_image(image) for image in images]
            conversations.append((prompt.messages(prompts[i], requirements[i], num_references=len(sources[i])), pictures))
            seeds.append(content_seed(self.seed, prompt.text(prompts[i], requirements[i], len(sources[i])), pictures))
            rows.append(i)
        if rows:
            row_scores, row_diagnostic, unread = self.readout.from_logits(self.judge.next_token_logits(conversations), seeds)
            for j, i in enumerate(rows):
                if j in unread:
                    failures[i] = unread[j]
                elif torch.isfinite(row_scores[j]):
                    scores[i], diagnostic[i] = row_scores[j], row_diagnostic[j]
                else:
                    failures[i] = "the judge's logits are not finite"
        valid = torch.isfinite(scores)
        return RewardBatch(scores.float(), valid, {self.readout.diagnostic: diagnostic.float()}, failures)


def mllm_reward(model: str, template: str | None = None, levels: int = DEFAULT_LEVELS, batch_size: int = 8,
                dtype: str = "float32", device: str = "cpu", readout: str = "score", temperature: float = 1.0,
                samples: int = 8, seed: int = 0) -> MLLMJudgeReward:
    """The judge at `model` (a local folder or hub id); `template`: a prompt template file; `readout`: score,
    yes_no or sampled (`temperature`, `samples` answers per edit, `seed`)."""
    chosen = build_readout(readout, template, levels, temperature, samples)
    judge = MLLMJudge.from_pretrained(model, dtype=dtype, device=device, batch_size=batch_size)
    return MLLMJudgeReward(judge, chosen, seed)


#: Options a resumed training run may change (see `Reward.resume_safe_options`).
mllm_reward.resume_safe_options = ("batch_size",)
