"""Precomputed conditions: `editr1 precompute CONFIG` encodes every training and held-out sample once, and
`editr1 train` or `editr1 sft` with `data.conditions_cache` reads them instead of running the text encoder.

A cache is a folder: `manifest.json` and safetensors shards. Each sample is stored as `encode_conditions`
of that sample alone gives it (unpadded: its own prompt length), and batches are joined with the
adapter's `join_conditions`, which pads exactly as `encode_conditions` pads. Training without a cache
encodes each sample alone too (`EditModelAdapter.encode_each`), so a run from the cache trains the same
weights, bit for bit, as a run that encodes on the fly (on the same kind of device).

The manifest records what the conditions depend on, and a cache that disagrees is refused, never used:
- the model: its path and the fingerprint (`editr1.fingerprint`) of its files outside `transformer/` (the
  text encoders, tokenizers, processor and VAE); for a tiny preset, the preset, the seed and the training prompts its tokenizer
  vocabulary was learned from;
- the conditioning settings: resolution, `data.max_prompt_tokens` and `data.prompt_overflow`, and the
  adapter's own (`conditioning_settings`: condition area, dtypes, prompt templates, text lengths);
- each sample: its id and a digest of its instruction (as encoded: after any truncation) and the bytes
  of its source images; with true CFG, the family's negative prompt over the same images too.

The manifest is written last and atomically, so a cache is the old one or the whole new one. Writing a
cache where a compatible one exists reuses the entries whose samples did not change.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from editr1.config import TrainConfig, SFTConfig
from editr1.data.batching import source_images
from editr1.data.jsonl import EditSample, read_edit_jsonl
from editr1.data.prompt_length import fit_prompt_lengths
from editr1.errors import EditR1Error
from editr1.fileio import refuse_foreign_entries, save_safetensors, write_text_atomic
from editr1.fingerprint import folder_fingerprint
from editr1.hub import resolve_model_path
from editr1.models.base import Conditions, EditModelAdapter
from editr1.models.registry import is_tiny_preset
from editr1.trainer.model_loading import build_model, with_model_family_settings
from editr1.trainer.progress import console

MANIFEST = "manifest.json"
FORMAT, VERSION = "editr1-conditions-cache", 1
#: Samples per safetensors shard (FLUX: ~4 MiB of T5 embeddings each in bf16).
SHARD_SAMPLES = 64
SHARD_GLOB = "shard-*.safetensors"
CACHE_ENTRIES = (MANIFEST, SHARD_GLOB)
#: What each dataset of the cache is, and which config field names its file.
ROLES = {"train": "data.train", "heldout": "data.heldout"}


# ---- what the conditions depend on -------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_digest(prompt: str, images: Iterable[Path]) -> str:
    """What one sample's conditions are computed from: the instruction as encoded and its source images' bytes."""
    parts = [_sha256(prompt.encode("utf-8", "surrogatepass"))] + [_file_digest(Path(p)) for p in images]
    return _sha256("\n".join(parts).encode())


def model_identity(path: str, seed: int, corpus: list[str]) -> dict[str, Any]:
    """The model as far as conditions go: a tiny preset by its name, seed and the prompts its tokenizers
    learned from; a saved model by its folder and the content of every file outside `transformer/`
    (`editr1.fingerprint`: encoders re-saved under the same path are another model)."""
    if is_tiny_preset(path):
        return {"model.path": path, "seed": seed,
                "training prompts (the tiny tokenizer's corpus)": _sha256(json.dumps(corpus).encode("utf-8", "surrogatepass"))}
    folder = resolve_model_path(path).resolve()
    return {"model.path": str(folder), "model files outside transformer/ (fingerprint)": folder_fingerprint(folder, skip=["transformer"])}


def conditioning_settings(config: TrainConfig | SFTConfig, adapter: EditModelAdapter) -> dict[str, Any]:
    settings = {"model.resolution": config.model.resolution, "data.max_prompt_tokens": config.data.max_prompt_tokens,
                "data.prompt_overflow": config.data.prompt_overflow,
                "negative prompt": adapter.inference.negative_prompt}
    settings.update({f"model.{key}": value for key, value in adapter.conditioning_settings().items()})
    return _jsonable(settings)


def _jsonable(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), so a manifest compares equal to fresh settings."""
    return json.loads(json.dumps(value))


# ---- `shared` metadata: JSON that keeps tuples tuples ----------------------------------------------
def _encode_shared(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [_encode_shared(v) for v in value]}
    if isinstance(value, list):
        return [_encode_shared(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise EditR1Error(f"conditions metadata {value!r}: only string keys can be cached")
        return {"dict": {k: _encode_shared(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise EditR1Error(f"conditions metadata of type {type(value).__name__} cannot be cached")


def _decode_shared(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_shared(v) for v in value]
    if isinstance(value, dict):
        if "tuple" in value:
            return tuple(_decode_shared(v) for v in value["tuple"])
        return {k: _decode_shared(v) for k, v in value["dict"].items()}
    return value


# ---- reading --------------------------------------------------------------------------------------
def _differences(cached: dict, current: dict) -> str:
    keys = sorted(k for k in cached.keys() | current.keys() if cached.get(k) != current.get(k))

    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    return "; ".join(f"{key}: {shown(cached.get(key))} in the cache, {shown(current.get(key))} here" for key in keys)


def _negative_needed(config: TrainConfig | SFTConfig, role: str) -> bool:
    """True CFG needs the negative prompt's conditions: in NFT rollouts and in held-out evaluation (SFT
    trains without CFG)."""
    if role == "train":
        return isinstance(config, TrainConfig) and config.rollout.cfg_scale != 1.0
    return config.eval.cfg_scale != 1.0


class ConditionsCache:
    """A conditions cache opened for one model and one set of conditioning settings."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self._handles: dict[str, Any] = {}
        #: role -> sample id -> (conditions digest, negative digest or None), for the checked samples.
        self._keys: dict[str, dict[str, tuple[str, str | None]]] = {}

    @classmethod
    def open(cls, folder: str | Path, model: dict, settings: dict, field: str = "data.conditions_cache") -> "ConditionsCache":
        """The cache at `folder`, refused unless built for this `model` and these `settings`."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise EditR1Error(f"{field}: {folder}: no conditions cache there (no {MANIFEST}); write it with "
                              "`editr1 precompute CONFIG`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise EditR1Error(f"{field}: {path}: unreadable ({error}); write the cache again with `editr1 precompute`") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise EditR1Error(f"{field}: {path}: not a version-{VERSION} editr1 conditions cache; write it again with "
                              "`editr1 precompute`")
        if manifest["model"] != model:
            raise EditR1Error(f"{field}: {folder} was built for another model ({_differences(manifest['model'], model)}); "
                              "rerun `editr1 precompute` with this config")
        if manifest["settings"] != settings:
            raise EditR1Error(f"{field}: {folder} was built with other conditioning settings "
                              f"({_differences(manifest['settings'], settings)}); rerun `editr1 precompute` with this config")
        return cls(folder, manifest)

    def check(self, role: str, samples: list[EditSample], negative: bool, source: str,
              field: str = "data.conditions_cache") -> None:
        """Every sample of `samples` (read from `source`) is in the cache, unchanged, with its negative-prompt
        conditions when `negative`; remembers them for `conditions(role, ...)`."""
        dataset = self.manifest["datasets"].get(role, {"samples": {}})
        entries, negative_prompt = self.manifest["entries"], self.manifest["settings"]["negative prompt"]
        keys = {}
        for sample in samples:
            where = f"sample {sample.id!r} ({source} line {sample.line})"
            recorded = dataset["samples"].get(sample.id)
            if recorded is None:
                raise EditR1Error(f"{field}: {self.folder} has no conditions for {where}; rerun `editr1 precompute` "
                                  "with this config")
            if recorded["conditions"] != sample_digest(sample.prompt, sample.images):
                raise EditR1Error(f"{field}: {where} changed (its instruction or source images) since {self.folder} "
                                  "was built; rerun `editr1 precompute` with this config")
            negative_key = None
            if negative:
                negative_key = recorded.get("negative")
                if negative_key is None:
                    cfg = "rollout.cfg_scale" if role == "train" else "eval.cfg_scale"
                    raise EditR1Error(f"{field}: {self.folder} holds no negative-prompt conditions for the {role} samples, "
                                      f"which true CFG ({cfg} != 1) needs; rerun `editr1 precompute` with this config")
                if negative_key != sample_digest(negative_prompt, sample.images):
                    raise EditR1Error(f"{field}: {where}: its negative-prompt conditions in {self.folder} are for other "
                                      "source images; rerun `editr1 precompute` with this config")
            for key in (recorded["conditions"], negative_key):
                if key is not None and not (key in entries and (self.folder / entries[key]["shard"]).is_file()):
                    raise EditR1Error(f"{field}: {self.folder}: the conditions of {where} are missing from the cache "
                                      f"(shard {entries.get(key, {}).get('shard', '?')}); rerun `editr1 precompute`")
            keys[sample.id] = (recorded["conditions"], negative_key)
        self._keys.setdefault(role, {}).update(keys)

    def _row(self, key: str) -> Conditions:
        entry = self.manifest["entries"][key]
        shard = entry["shard"]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / shard), framework="pt", device="cpu")
        handle = self._handles[shard]
        tensors = {name: handle.get_tensor(f"{key}.{name}") for name in entry["tensors"]}
        tensors.update({name: None for name in entry["none"]})
        return Conditions({name: tensors[name] for name in entry["order"]}, _decode_shared(entry["shared"]))

    def conditions(self, adapter: EditModelAdapter, role: str, samples: list[EditSample], negative: bool = False) -> Conditions:
        """The batch of `samples` (checked with `check(role, ...)`) as `encode_each` gives it, on the adapter's device."""
        keys = self._keys[role]
        return adapter.join_conditions([self._row(keys[s.id][1 if negative else 0]) for s in samples])


def open_for_run(config: TrainConfig | SFTConfig, adapter: EditModelAdapter, corpus: list[str], train: list[EditSample],
                 heldout: list[EditSample] | None) -> ConditionsCache:
    """The cache of `data.conditions_cache`, checked to hold every sample this run will encode."""
    cache = ConditionsCache.open(config.data.conditions_cache, model_identity(config.model.path, config.seed, corpus),
                                 conditioning_settings(config, adapter))
    cache.check("train", train, _negative_needed(config, "train"), config.data.train)
    if heldout is not None:
        cache.check("heldout", heldout, _negative_needed(config, "heldout"), config.data.heldout)
    return cache


# ---- writing --------------------------------------------------------------------------------------
def _row_tensors(conditions: Conditions) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    tensors = conditions.tensors
    stored = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items() if t is not None}
    return stored, [name for name, t in tensors.items() if t is None], list(tensors)


def write_conditions_cache(folder: str | Path, adapter: EditModelAdapter, model: dict, settings: dict, size: int,
                           datasets: dict[str, tuple[list[EditSample], bool]], shard_samples: int = SHARD_SAMPLES
                           ) -> dict[str, int]:
    """Encode each sample of `datasets` (role -> (samples, with negative-prompt conditions too)) alone
    at `size` and write the cache; entries of a compatible cache already in `folder` are reused.
    Returns counts: samples, entries encoded, entries reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old_entries: dict[str, dict] = {}
    try:
        old = ConditionsCache.open(folder, model, settings)
        old_entries = {k: e for k, e in old.manifest["entries"].items() if (folder / e["shard"]).is_file()}
    except EditR1Error:
        pass  # none there, or built for something else: written anew
    negative_prompt = adapter.inference.negative_prompt
    manifest_datasets: dict[str, dict] = {}
    wanted: dict[str, tuple[EditSample, str]] = {}  # digest -> (sample, prompt to encode), in order
    for role, (samples, negative) in datasets.items():
        records = {}
        for sample in samples:
            record = {"conditions": sample_digest(sample.prompt, sample.images)}
            wanted.setdefault(record["conditions"], (sample, sample.prompt))
            if negative:
                record["negative"] = sample_digest(negative_prompt, sample.images)
                wanted.setdefault(record["negative"], (sample, negative_prompt))
            records[sample.id] = record
        manifest_datasets[role] = {"samples": records}
    entries = {key: old_entries[key] for key in wanted if key in old_entries}
    todo = [key for key in wanted if key not in entries]
    token = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with adapter.text_encoders_on_device():
        for number, start in enumerate(range(0, len(todo), shard_samples)):
            shard = f"shard-{token}-{number:05d}.safetensors"
            tensors = {}
            for key in todo[start : start + shard_samples]:
                sample, prompt = wanted[key]
                row = adapter.encode_conditions([source_images(sample, size)], [prompt], size, size)
                stored, none, order = _row_tensors(row)
                tensors.update({f"{key}.{name}": t for name, t in stored.items()})
                entries[key] = {"shard": shard, "tensors": list(stored), "none": none, "order": order,
                                "shared": _encode_shared(row.shared)}
            save_safetensors(tensors, folder / shard)
            console.print(f"precompute: {min(start + shard_samples, len(todo))}/{len(todo)} conditions encoded")
    manifest = {"format": FORMAT, "version": VERSION, "model": model, "settings": settings,
                "device": str(adapter.device.type), "datasets": manifest_datasets, "entries": entries}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1))
    used = {entry["shard"] for entry in entries.values()}
    for path in folder.glob(SHARD_GLOB):
        if path.name not in used:
            path.unlink()
    return {"samples": sum(len(samples) for samples, _ in datasets.values()), "encoded": len(todo),
            "reused": len(entries) - len(todo)}


def precompute_conditions(config: TrainConfig | SFTConfig) -> dict:
    """`editr1 precompute`: the model, data and settings exactly as `editr1 train` (or `editr1 sft`) builds
    them with this config, every sample encoded alone on this process's device (accelerate's), written to
    `data.conditions_cache`. Only the text encoders and the codec go to the device, never the transformer."""
    from accelerate import PartialState

    if not config.data.conditions_cache:
        raise EditR1Error("data.conditions_cache: set the folder to write the conditions cache to")
    data = config.data
    refuse_foreign_entries(data.conditions_cache, CACHE_ENTRIES, "editr1 precompute")  # before loading a model
    train = read_edit_jsonl(data.train, max_pixels=data.max_pixels)
    corpus = [s.prompt for s in train]
    torch.manual_seed(config.seed)
    # The transformer is never run here: its weights are not read (≈ 40 GB of host memory for Qwen-Image-Edit).
    adapter = build_model(config.model, corpus, seed=config.seed, transformer_weights=False)
    config = with_model_family_settings(config, adapter, announce=False)
    train = fit_prompt_lengths(train, data.train, adapter, data.max_prompt_tokens, data.prompt_overflow)
    datasets = {"train": (train, _negative_needed(config, "train"))}
    if data.heldout:
        held = fit_prompt_lengths(read_edit_jsonl(data.heldout, max_pixels=data.max_pixels), data.heldout, adapter,
                                  data.max_prompt_tokens, data.prompt_overflow)
        datasets["heldout"] = (held, _negative_needed(config, "heldout"))
    with adapter.encoding_on(PartialState().device):
        counts = write_conditions_cache(data.conditions_cache, adapter, model_identity(config.model.path, config.seed, corpus),
                                        conditioning_settings(config, adapter), config.model.resolution, datasets)
    return {"conditions_cache": str(data.conditions_cache), **counts}
