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


def check_family(family: str, field: str = "model.family") -> str:
    """`family` if an adapter is registered under that name; else an error naming `field`."""
    if family not in ADAPTERS:
        raise EditR1Error(f"{field}: unknown model family {family!r}; known: {sorted(ADAPTERS)}")
    return family


def build_tiny(
    preset: str, corpus: list[str], seed: int = 0, family: str | None = None, section: str = "model"
) -> EditModelAdapter:
    """A tiny preset whose tokenizer vocabulary is learned from `corpus` (e.g. the training prompts).

    A given `family` (`<section>.family`) must be the preset's own: a preset builds one family only."""
    if preset not in TINY_PRESETS:
        raise EditR1Error(f"{section}.path: unknown tiny preset {preset!r}; known: {sorted(TINY_PRESETS)}")
    if family is not None and check_family(family, f"{section}.family") != preset.removeprefix("tiny:"):
        raise EditR1Error(f"{section}.family: {family!r} contradicts {section}.path {preset} "
                          f"(a {preset.removeprefix('tiny:')} model); drop {section}.family or change {section}.path")
    return TINY_PRESETS[preset](corpus=corpus, seed=seed)


def detect_family(folder: Path, family: str | None = None, field: str = "model.family") -> str:
    """A saved model's family, from the pipeline class in its `model_index.json`.

    A given `family` (named `field` in errors) must agree with a known pipeline class; it is only
    needed, and only decides, when the class is not one of ours (a fork's or a renamed pipeline)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise EditR1Error(f"{folder}: no model_index.json; not a diffusers-format model folder")
    pipeline = json.loads(index.read_text()).get("_class_name")
    detected = PIPELINE_TO_FAMILY.get(pipeline)
    if family is not None:
        check_family(family, field)
        if detected is not None and detected != family:
            raise EditR1Error(f"{field}: {family!r} contradicts {index} (a {detected} model)")
        return family
    if detected is None:
        raise EditR1Error(
            f"{index}: unknown model family {pipeline!r}; supported: {sorted(PIPELINE_TO_FAMILY)}"
        )
    return detected


def load_adapter(
    path_or_id: str | Path, family: str | None = None, torch_dtype: torch.dtype = torch.float32,
    field: str = "model.family",
) -> EditModelAdapter:
    """Load a model by path or hub id; the family comes from `model_index.json` (see `detect_family`)."""
    folder = resolve_model_path(path_or_id)
    return ADAPTERS[detect_family(folder, family, field)].from_pretrained(folder, torch_dtype=torch_dtype)
