"""Model families by name, imported on first use, and detection of a saved model's family from its
`model_index.json`. `model.family` (and `model.path: tiny:<family>`) takes a name of `FAMILIES` or the
dotted path `package.module:Class` of an adapter defined anywhere (see docs/extending.md)."""

from __future__ import annotations

import inspect

import json
from pathlib import Path

import torch

from editr1.dotted import resolve
from editr1.errors import EditR1Error
from editr1.hub import resolve_model_path
from editr1.models.base import EditModelAdapter

FAMILIES: dict[str, str] = {
    "qwen-image-edit": "editr1.models.qwen_image_edit:QwenImageEditAdapter",
    "qwen-image-edit-plus": "editr1.models.qwen_image_edit_plus:QwenImageEditPlusAdapter",
    "qwen-image-edit-2511": "editr1.models.qwen_image_edit_2511:QwenImageEdit2511Adapter",
    "flux-kontext": "editr1.models.flux_kontext:FluxKontextAdapter",
    "flux2-klein": "editr1.models.flux2_klein:Flux2KleinAdapter",
    "flux2-dev": "editr1.models.flux2_dev:Flux2DevAdapter",
}


def adapter_class(family: str, field: str = "model.family") -> type[EditModelAdapter]:
    """The adapter class of `family` (a name of `FAMILIES` or a dotted path); errors name `field`."""
    cls = resolve(family, FAMILIES, field, "model family")
    if not (isinstance(cls, type) and issubclass(cls, EditModelAdapter)):
        raise EditR1Error(f"{field}: {family!r} is not a subclass of editr1.models.base.EditModelAdapter")
    return cls


def family_name(cls: type[EditModelAdapter]) -> str:
    """What `model.family` takes for `cls` (a run's `model.json` records it): its name in `FAMILIES`,
    else its dotted path."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    return cls.family if FAMILIES.get(cls.family) == path else path


#: `model.path: tiny:<family>` names that family's tiny preset instead of a saved model or hub id.
TINY_PREFIX = "tiny:"


def is_tiny_preset(path: str) -> bool:
    """Whether a model path names a tiny preset (built by `build_tiny`, never read from disk)."""
    return path.startswith(TINY_PREFIX)


def tiny_preset_note(path: str) -> str:
    """What a run on the tiny preset `path` prints and reports, for a user who pointed it at their own
    images: random weights edit into noise with no gain, and only the shapes task is learnt by them or
    known by the shipped judge (where `editr1 demo` does show a gain)."""
    return (f"model.path {path} is a tiny preset: a toy-size model with random weights, for checking that your "
            "data, reward and settings run end to end, not for results. Untrained, it edits into noise, and on "
            "your own images its held-out gain stays about 0. The one task a tiny model learns is editr1's "
            "synthetic 32-pixel shapes task (`editr1 demo` starts from a tiny model fine-tuned on it, and shows "
            "a real gain); the shipped judge (the distilled tiny judge, editr1/tasks/shapes/assets/shapes_judge) "
            "knows only that task too. For your images, train a real model with a real MLLM judge, as "
            "configs/qwen_image_edit_nft.yaml does.")


def build_tiny(
    preset: str, corpus: list[str], seed: int = 0, family: str | None = None, section: str = "model"
) -> EditModelAdapter:
    """The tiny preset `tiny:<family>`, its tokenizer vocabulary learned from `corpus` (e.g. the training
    prompts). A given `family` (`<section>.family`) must be the preset's own: a preset builds one family."""
    preset_family = preset.removeprefix(TINY_PREFIX)
    cls = adapter_class(preset_family, f"{section}.path")
    if family is not None and adapter_class(family, f"{section}.family") is not cls:
        raise EditR1Error(f"{section}.family: {family!r} contradicts {section}.path {preset} "
                          f"(a {preset_family} model); drop {section}.family or change {section}.path")
    try:
        return cls.build_tiny(corpus, seed)
    except NotImplementedError:
        raise EditR1Error(f"{section}.path: {preset}: the {cls.__qualname__} adapter has no tiny preset") from None


def detect_family(folder: Path, family: str | None = None, field: str = "model.family") -> str:
    """A saved model's family, from the pipeline class in its `model_index.json`.

    A given `family` (named `field` in errors) must agree: its adapter's pipeline class is the saved one,
    or the saved class is no registered family's (a fork's or a renamed pipeline), and then it decides."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise EditR1Error(f"{folder}: no model_index.json; not a diffusers-format model folder")
    pipeline = json.loads(index.read_text()).get("_class_name")
    transformer_config = _transformer_config(folder)
    if family is not None and adapter_class(family, field).recognizes(pipeline, transformer_config):
        return family
    detected = next((name for name in FAMILIES if adapter_class(name).recognizes(pipeline, transformer_config)), None)
    if family is not None:
        if detected is not None:
            raise EditR1Error(f"{field}: {family!r} contradicts {index} (a {detected} model)")
        return family
    if detected is None:
        pipelines = sorted({adapter_class(name).pipeline_class for name in FAMILIES})
        raise EditR1Error(f"{index}: unknown model family {pipeline!r}; supported: {pipelines}")
    return detected


def _transformer_config(folder: Path) -> dict:
    """The saved transformer's config.json ({} if absent or unreadable: the pipeline class decides alone)."""
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def load_adapter(
    path_or_id: str | Path, family: str | None = None, torch_dtype: torch.dtype = torch.float32,
    field: str = "model.family", text_encoders: bool = True, transformer_weights: bool = True,
) -> EditModelAdapter:
    """Load a model by path or hub id; the family comes from `model_index.json` (see `detect_family`).
    `text_encoders` / `transformer_weights` False: the family's text encoders / transformer's parameters
    without weights, where its loader offers that (a loader that does not loads them whole)."""
    folder = resolve_model_path(path_or_id)
    cls = adapter_class(detect_family(folder, family, field), field)
    taken = inspect.signature(cls.from_pretrained).parameters
    wanted = {"text_encoders": text_encoders, "transformer_weights": transformer_weights}
    options = {name: False for name, value in wanted.items() if not value and name in taken}
    return cls.from_pretrained(folder, torch_dtype=torch_dtype, **options)
