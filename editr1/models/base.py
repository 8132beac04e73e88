"""The contract between the trainer and a base editing model.

An adapter wraps one family's diffusers components (transformer, VAE, text encoder, scheduler) and
exposes only what the Edit-R1 loop needs. Tensors on the trainer side are *packed tokens*
`(B, S, C)`; pixels are `(B, 3, H, W)` floats in [0, 1]. Adding a model family is one file that
subclasses `EditModelAdapter` and registers itself in `editr1.models.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

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


class EditModelAdapter(ABC):
    """One base-model family behind a small, uniform interface."""

    family: str
    transformer: nn.Module
    #: The flow-match scheduler whose config gives the sigma schedule (`sigmas`).
    scheduler: object
    #: Pixels <-> latents (`encode`, `decode`, `scale_factor`, `latent_channels`).
    codec: object
    #: Module names LoRA attaches to (peft `target_modules`).
    lora_target_modules: tuple[str, ...]
    #: Pixel area the source image is resized to for conditioning; None: the target size.
    condition_area: int | None = None

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> "EditModelAdapter":
        """Load from a local diffusers-format folder or a hub id."""

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
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
        return scheduler.sigmas.to(torch.float32).cpu()

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device
