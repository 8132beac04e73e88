"""The contract between the trainer and a base editing model.

An adapter wraps one family's diffusers components (transformer, VAE, text encoder, scheduler) and
exposes only what the Edit-R1 loop needs. Tensors on the trainer side are *packed tokens*
`(B, S, C)`; pixels are `(B, 3, H, W)` floats in [0, 1]. Adding a model family is one file that
subclasses `EditModelAdapter`, used from a config by its dotted path or named in
`editr1.models.registry.FAMILIES` (docs/extending.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Encoding
from torch import nn
from transformers import PreTrainedTokenizerBase

from editr1.errors import EditR1Error
from editr1.models.lora_io import LoraSpec, save_lora


@dataclass
class Conditions:
    """Everything a velocity call needs besides the noisy latents, batch-first.

    `tensors` are sliced per sample; `shared` holds per-batch metadata that is the same for every
    sample (e.g. token-grid shapes at a fixed resolution).
    """

    tensors: dict[str, torch.Tensor | None]
    shared: dict = field(default_factory=dict)

    def select(self, index: torch.Tensor | list[int]) -> "Conditions":
        """The rows `index` (with repeats), e.g. each group's conditions repeated K times."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Conditions(
            {k: None if t is None else t[index.to(t.device)] for k, t in self.tensors.items()}, self.shared
        )


@dataclass(frozen=True)
class InferenceDefaults:
    """A family's stock-pipeline inference settings: what `editr1 edit` uses unless told otherwise,
    and how true CFG combines the two branches wherever it runs (rollouts and evaluation too)."""

    steps: int = 28
    #: True CFG scale (1: off); the negative prompt of its unconditional branch.
    cfg_scale: float = 1.0
    negative_prompt: str = " "
    #: Norm-preserving CFG (the Qwen-Image pipelines rescale the guided velocity; FLUX's does not).
    cfg_renorm: bool = True
    #: Distilled guidance of guidance-embedded transformers; None for those without a guidance input.
    guidance: float | None = None
    #: Source images a sample may have (1: the source only).
    max_references: int = 1


class EditModelAdapter(ABC):
    """One base-model family behind a small, uniform interface."""

    #: The family's name in messages (and in `editr1.models.registry.FAMILIES` for a built-in one).
    family: str
    #: The diffusers pipeline class `save_pretrained` names in `model_index.json`; a saved model's family
    #: is detected by it.
    pipeline_class: str
    inference: InferenceDefaults
    transformer: nn.Module
    #: The flow-match scheduler whose config gives the sigma schedule (`sigmas`).
    scheduler: object
    #: Pixels <-> latents (`encode`, `decode`, `scale_factor`, `latent_channels`).
    codec: object
    #: Module names LoRA attaches to (peft `target_modules`).
    lora_target_modules: tuple[str, ...]
    #: Pixel area the source image is resized to for conditioning; None: the target size.
    condition_area: int | None = None

    @abstractmethod
    def use_pipeline_sizing(self) -> "EditModelAdapter":
        """Size the source images for conditioning as the family's diffusers pipeline does (instead of at
        the output size); returns the adapter."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> "EditModelAdapter":
        """Load from a local diffusers-format folder or a hub id."""

    @classmethod
    def build_tiny(cls, corpus: list[str], seed: int = 0) -> "EditModelAdapter":
        """A randomly initialised toy-size model of the family (`model.path: tiny:<family>`), its
        tokenizers' vocabularies learned from `corpus`. Optional: a family without one raises this."""
        raise NotImplementedError

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        """Write every component in diffusers format."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "EditModelAdapter":
        """Move every component to `device`."""

    #: The diffusers pipeline class whose `load_lora_weights` reads this family's exported LoRAs.
    lora_pipeline: type

    def save_lora(self, state_dict: dict[str, torch.Tensor], folder: str | Path, spec: LoraSpec) -> Path:
        """Write peft LoRA weights of the transformer (`get_peft_model_state_dict`: no adapter name in
        the keys) in the layout the family's diffusers pipeline loads with `load_lora_weights`, with
        `spec` (rank, alpha, targets) as metadata so that the LoRA loads at its trained scale.
        Returns the file written (`folder/pytorch_lora_weights.safetensors`)."""
        return save_lora(self.lora_pipeline, state_dict, folder, spec)

    #: Longest instruction the released model takes, in the tokens `count_prompt_tokens` counts (each
    #: adapter cites where its value comes from). `data.max_prompt_tokens` may lower it, not raise it.
    max_prompt_tokens: int

    @property
    @abstractmethod
    def prompt_tokenizer(self) -> PreTrainedTokenizerBase:
        """The (`tokenizers`-backed) tokenizer whose tokens `max_prompt_tokens` limits."""

    def _prompt_encoding(self, prompt: str) -> Encoding:
        # Truncation and padding off explicitly: a tokenizer keeps the settings of its last call (the
        # FLUX encode pads and truncates T5 to 512), which would otherwise cap the count.
        return self.prompt_tokenizer(
            prompt, add_special_tokens=False, truncation=False, padding=False, verbose=False
        ).encodings[0]

    def count_prompt_tokens(self, prompt: str) -> int:
        """The instruction's own tokens in the sequence the limiting text encoder sees; the special
        tokens around it (chat template, image tokens, end of sequence) are not counted."""
        return len(self._prompt_encoding(prompt).ids)

    def prompt_token_bound(self, prompt: str) -> int:
        """An upper bound on `count_prompt_tokens(prompt)` without tokenizing: the UTF-8 bytes of the
        text after the tokenizer's normalizer, plus one. It holds for the families' tokenizers: a
        byte-level BPE token (Qwen2) or a special token covers at least one byte, a Unigram token
        (T5's sentencepiece) at least one character, and T5's pre-tokenizer adds one "▁" per word
        but drops at least one space between words. Normalizing first matters: NFKC (T5's) can turn
        one character into many."""
        normalizer = self.prompt_tokenizer.backend_tokenizer.normalizer
        text = prompt if normalizer is None else normalizer.normalize_str(prompt)
        # surrogatepass: JSON allows lone surrogates, which plain UTF-8 encoding refuses.
        return len(text.encode("utf-8", "surrogatepass")) + 1

    def truncate_prompt(self, prompt: str, max_tokens: int) -> str:
        """The longest prefix of `prompt` ending where one of its first `max_tokens` tokens ends that
        still counts at most `max_tokens` tokens: exactly `max_tokens` unless a character is split
        across tokens at the cut. Cut at the tokens' offsets in `prompt` rather than decoding them,
        so the kept text is the user's own (decoding would rewrite it: normalization, T5's "<unk>")."""
        offsets = self._prompt_encoding(prompt).offsets
        if len(offsets) <= max_tokens:
            return prompt
        # Re-tokenizing a prefix can differ at its end (a character split across tokens comes back
        # whole), so each candidate cut is counted again, longest first.
        for end in sorted({stop for _, stop in offsets[:max_tokens]}, reverse=True):
            if self.count_prompt_tokens(prompt[:end]) <= max_tokens:
                return prompt[:end]
        return ""

    @abstractmethod
    def encode_conditions(self, sources: list[list[Image.Image]], prompts: list[str], height: int, width: int) -> Conditions:
        """Encode the instruction and the source image(s) of each sample, once per group."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `(B, 3, H, W)` in [0, 1] -> packed clean latents `(B, S, C)`."""

    @abstractmethod
    def decode_latents(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents `(B, S, C)` -> pixels `(B, 3, H, W)` in [0, 1]."""

    def _latent_hw(self, height: int, width: int) -> tuple[int, int]:
        """The codec's latent grid for an image size; the size must allow 2x2 latent patches."""
        multiple = self.codec.scale_factor * 2
        if height % multiple or width % multiple:
            raise EditR1Error(f"image size {width}x{height} must be a multiple of {multiple} for this model")
        return height // self.codec.scale_factor, width // self.codec.scale_factor

    def latent_token_shape(self, height: int, width: int) -> tuple[int, int]:
        """`(S, C)` of the packed latents for an image of this size: 2x2 patches of the codec's latents."""
        h, w = self._latent_hw(height, width)
        return (h // 2) * (w // 2), self.codec.latent_channels * 4

    @abstractmethod
    def velocity(
        self,
        tokens: torch.Tensor,
        sigma: torch.Tensor,
        conditions: Conditions,
        guidance: float | None = None,
        transformer: nn.Module | None = None,
    ) -> torch.Tensor:
        """Predicted velocity (eps - x0) for the target tokens at noise level `sigma` `(B,)`.

        `transformer` overrides the adapter's own module (full fine-tuning keeps separate copies of
        the old and reference policies); with LoRA the caller switches adapters instead.
        """

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The family's shifted sigma schedule for `num_steps` steps, ending with 0 (length N+1): the
        pipelines' `linspace(1, 1/N, N)` shifted by `calculate_shift` of the target's token count."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        config = scheduler.config
        mu = calculate_shift(
            self.latent_token_shape(height, width)[0],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        with np.errstate(invalid="ignore", divide="ignore"):  # a schedule stretched to a terminal sigma: see below
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        sigmas = scheduler.sigmas.to(torch.float32).cpu()
        if not torch.isfinite(sigmas).all():
            # A scheduler with `shift_terminal` (Qwen-Image) stretches the schedule between its first and last
            # sigma, which coincide for a single step.
            raise EditR1Error(f"{num_steps} sampler step(s): this model's schedule needs at least 2 steps")
        return sigmas

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device
