"""Build or load the base model named in a config."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypeVar

import torch

from editr1.config import ModelConfig, with_family_settings
from editr1.errors import EditR1Error
from editr1.models.base import EditModelAdapter
from editr1.models.lora_io import LoraSpec
from editr1.models.registry import build_tiny, is_tiny_preset, load_adapter
from editr1.trainer.progress import console

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(config: ModelConfig, corpus: Iterable[str] = (), seed: int = 0, section: str = "model",
                text_encoders: bool = True, transformer_weights: bool = True) -> EditModelAdapter:
    """`tiny:<family>` builds a random tiny model (its tokenizer learned from `corpus`); anything
    else is a diffusers-format folder or hub id. `section` names the config section in errors.
    `text_encoders` / `transformer_weights` False: a loaded model's text encoders / transformer parameters
    come without weights (never read from disk; a tiny model is built whole)."""
    dtype = DTYPES[config.dtype]
    if is_tiny_preset(config.path):
        adapter = build_tiny(config.path, list(corpus), seed, config.family, section)
        adapter.transformer.to(dtype)
    else:
        adapter = load_adapter(config.path, family=config.family, torch_dtype=dtype, field=f"{section}.family",
                               text_encoders=text_encoders, transformer_weights=transformer_weights)
    adapter.condition_area = config.condition_area
    if config.offload_text_encoder and not adapter.text_encoders():
        raise EditR1Error(f"{section}.offload_text_encoder: the {type(adapter).__qualname__} adapter names no text "
                          "encoders (its text_encoders() is empty), so there is nothing to offload")
    adapter.offload_text_encoder = config.offload_text_encoder
    if config.gradient_checkpointing:
        adapter.transformer.enable_gradient_checkpointing()
        # cuDNN attention crashed intermittently (illegal memory access) in the checkpointed backward with a
        # LoRA on H100s; flash and memory-efficient attention remain.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if config.compile:
        adapter.transformer.compile()  # in place: peft adapters, checkpointing and saving still see the module
    return adapter


RunConfig = TypeVar("RunConfig")


def with_model_family_settings(config: RunConfig, adapter: EditModelAdapter, announce: bool = True) -> RunConfig:
    """`config` (an `editr1 train` or `sft` config) with its `eval.*: family` values set to the loaded model's
    published inference settings, said once in a line."""
    inference = adapter.inference
    evaluation, taken = with_family_settings(config.eval, inference.steps, inference.cfg_scale, inference.guidance)
    if taken and announce:
        console.print(f"evaluation at the model family's published settings: {', '.join(taken)}", soft_wrap=True)
    return dataclasses.replace(config, eval=evaluation)


def lora_spec(config: ModelConfig, adapter: EditModelAdapter) -> LoraSpec:
    """The LoRA of `model.lora` (targets: the adapter's defaults unless given), as one object from here to
    the policies and the exported file."""
    lora = config.lora
    return LoraSpec(lora.rank, lora.alpha, tuple(lora.target_modules or adapter.lora_target_modules))
