"""Model families by name, and detection of a saved model's family from its `model_index.json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from editr1.errors import EditR1Error
from editr1.hub import resolve_model_path
from editr1.models.base import EditModelAdapter
from editr1.models.flux_kontext import PIPELINE_CLASS as FLUX_KONTEXT_PIPELINE
from editr1.models.flux_kontext import FluxKontextAdapter
from editr1.models.qwen_image_edit import PIPELINE_CLASS as QWEN_IMAGE_EDIT_PIPELINE
from editr1.models.qwen_image_edit import QwenImageEditAdapter
from editr1.models.qwen_image_edit_plus import (
    PIPELINE_CLASS as QWEN_IMAGE_EDIT_PLUS_PIPELINE,
)
from editr1.models.qwen_image_edit_plus import QwenImageEditPlusAdapter
from editr1.models.tiny_flux_kontext import build_tiny_flux_kontext
from editr1.models.tiny_qwen_image_edit import build_tiny_qwen_image_edit
from editr1.models.tiny_qwen_image_edit_plus import build_tiny_qwen_image_edit_plus

ADAPTERS: dict[str, type[EditModelAdapter]] = {
    QwenImageEditAdapter.family: QwenImageEditAdapter,
    QwenImageEditPlusAdapter.family: QwenImageEditPlusAdapter,
    FluxKontextAdapter.family: FluxKontextAdapter,
}
#: Random tiny models of the real architectures, built offline from configs: `model.path: tiny:<family>`.
TINY_PRESETS: dict[str, Callable[..., EditModelAdapter]] = {
    "tiny:qwen-image-edit": build_tiny_qwen_image_edit,
    "tiny:qwen-image-edit-plus": build_tiny_qwen_image_edit_plus,
    "tiny:flux-kontext": build_tiny_flux_kontext,
}
PIPELINE_TO_FAMILY = {
    QWEN_IMAGE_EDIT_PIPELINE: QwenImageEditAdapter.family,
    QWEN_IMAGE_EDIT_PLUS_PIPELINE: QwenImageEditPlusAdapter.family,
    FLUX_KONTEXT_PIPELINE: FluxKontextAdapter.family,
}


def build_tiny(preset: str, corpus: list[str], seed: int = 0) -> EditModelAdapter:
    """A tiny preset whose tokenizer vocabulary is learned from `corpus` (e.g. the training prompts)."""
    if preset not in TINY_PRESETS:
        raise EditR1Error(f"model.path: unknown tiny preset {preset!r}; known: {sorted(TINY_PRESETS)}")
    return TINY_PRESETS[preset](corpus=corpus, seed=seed)


def detect_family(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise EditR1Error(f"{folder}: no model_index.json; not a diffusers-format model folder")
    pipeline = json.loads(index.read_text()).get("_class_name")
    if pipeline not in PIPELINE_TO_FAMILY:
        raise EditR1Error(
            f"{index}: unknown model family {pipeline!r}; supported: {sorted(PIPELINE_TO_FAMILY)}"
        )
    return PIPELINE_TO_FAMILY[pipeline]


def load_adapter(path_or_id: str | Path, family: str | None = None, torch_dtype: torch.dtype = torch.float32) -> EditModelAdapter:
    """Load a model by path or hub id; the family comes from `model_index.json` unless given."""
    folder = resolve_model_path(path_or_id)
    family = family or detect_family(folder)
    if family not in ADAPTERS:
        raise EditR1Error(f"unknown model family {family!r}; registered: {sorted(ADAPTERS)}")
    return ADAPTERS[family].from_pretrained(folder, torch_dtype=torch_dtype)
