"""Build or load the base model named in a config."""

from __future__ import annotations

from collections.abc import Iterable

from editr1.config import ModelConfig
from editr1.errors import EditR1Error
from editr1.models.base import EditModelAdapter
from editr1.models.registry import load_adapter
from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit

TINY_PRESETS = {"tiny:qwen-image-edit": build_tiny_qwen_image_edit}


def build_model(config: ModelConfig, corpus: Iterable[str] = (), seed: int = 0) -> EditModelAdapter:
    """`tiny:<family>` builds a random tiny model (its tokenizer learned from `corpus`); anything
    else is a diffusers-format folder or hub id."""
    if config.path.startswith("tiny:"):
        if config.path not in TINY_PRESETS:
            raise EditR1Error(f"model.path: unknown tiny preset {config.path!r}; known: {sorted(TINY_PRESETS)}")
        adapter = TINY_PRESETS[config.path](corpus=list(corpus), seed=seed)
    else:
        adapter = load_adapter(config.path, family=config.family)
    if config.gradient_checkpointing:
        adapter.transformer.enable_gradient_checkpointing()
    return adapter
