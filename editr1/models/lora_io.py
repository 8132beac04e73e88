"""LoRA weights in and out of an adapter's transformer.

Export writes the diffusers layout that each family's pipeline loads with `load_lora_weights`, with
no key conversion: `pytorch_lora_weights.safetensors`, keys `transformer.<module>.lora_A.weight` /
`.lora_B.weight`, and the LoRA's config (rank, alpha, targets) in the file's `lora_adapter_metadata`.
Without that metadata diffusers assumes alpha = rank, so a rank-32 / alpha-64 LoRA would load at half
strength.

Import reads either that layout or peft's (`adapter_model.safetensors` + `adapter_config.json`, keys
prefixed `base_model.model.`, as the public Edit-R1 releases are published), with or without the
adapter name (`.default`) in the keys, and checks every key against the transformer before touching
it: a LoRA of another family or size is an `EditR1Error` naming the file and offending keys, never a
silent partial load.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from editr1.errors import EditR1Error
from editr1.fileio import default_file_mode

#: The file diffusers' `save_lora_weights` writes and `load_lora_weights` looks for in a folder.
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: The files peft's `save_pretrained` writes.
PEFT_WEIGHT_NAME, PEFT_CONFIG_NAME = "adapter_model.safetensors", "adapter_config.json"
#: diffusers' key of the LoRA config in a safetensors file's metadata.
METADATA_KEY = "lora_adapter_metadata"
#: Key prefixes of the layouts accepted on import, stripped in this order.
KEY_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.")

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_SHOWN = 3  # offending keys named in an error


@dataclass(frozen=True)
class LoraSpec:
    """What a LoRA's weights do not say: its scale (`alpha / rank`) and the modules it targets."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    #: Per-module ranks / alphas that differ from `rank` / `alpha` (peft's `rank_pattern`, `alpha_pattern`).
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False

    @classmethod
    def from_peft(cls, config: Any) -> "LoraSpec":
        """From a peft `LoraConfig` (e.g. `transformer.peft_config["default"]`)."""
        return cls(
            int(config.r), float(config.lora_alpha), tuple(sorted(config.target_modules)),
            dict(config.rank_pattern or {}), dict(config.alpha_pattern or {}), bool(config.use_rslora),
        )

    def scale(self) -> float:
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)

    def lora_config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of peft's `LoraConfig`; also the metadata diffusers reads back."""
        return {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "use_rslora": self.use_rslora,
            "lora_dropout": 0.0,
            "bias": "none",
            "init_lora_weights": True,
        }

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(**self.lora_config_kwargs())


def lora_parameter_count(module: nn.Module, targets: tuple[str, ...], rank: int) -> int:
    """Parameters of a LoRA of `rank` on `module`: rank x (in + out) on every `nn.Linear` that peft's
    `target_modules` matching (the name, or a dotted suffix of it) selects."""
    return sum(rank * (sub.in_features + sub.out_features) for name, sub in module.named_modules()
               if isinstance(sub, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


# ---- export --------------------------------------------------------------------------------------


def save_lora(pipeline_class: type, state_dict: dict[str, torch.Tensor], folder: str | Path, spec: LoraSpec) -> Path:
    """Write `state_dict` (peft keys of the transformer, no adapter name: `get_peft_model_state_dict`)
    with `spec` as metadata through `pipeline_class.save_lora_weights`; returns the file written."""
    modules = _check_state(state_dict, "the LoRA state to save")
    ranks = {module: shapes["lora_A"][0] for module, shapes in modules.items()}
    wrong = [m for m, r in ranks.items() if r != spec.rank_pattern.get(m, spec.rank)]
    if wrong and not spec.rank_pattern:
        raise EditR1Error(
            f"save_lora: the LoRA weights have rank {ranks[wrong[0]]} (e.g. {wrong[0]}) but the spec says rank "
            f"{spec.rank}; pass the rank the adapter was built with"
        )
    folder = Path(folder)
    pipeline_class.save_lora_weights(
        str(folder),
        transformer_lora_layers={k: v.detach().contiguous() for k, v in state_dict.items()},
        transformer_lora_adapter_metadata=spec.lora_config_kwargs(),
    )
    file = folder / DIFFUSERS_WEIGHT_NAME
    os.chmod(file, default_file_mode())  # safetensors created it 0600; a LoRA is made to be shared
    return file


# ---- import --------------------------------------------------------------------------------------


@dataclass
class LoraFile:
    """A LoRA read from disk: transformer-relative peft keys without adapter name, and its spec."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    #: None when the file carries no config: diffusers then assumes alpha = rank.
    config: dict[str, Any] | None


def find_lora_file(path: str | Path) -> tuple[Path, Path | None]:
    """The weights file of a LoRA file or folder, and the peft `adapter_config.json` beside it (if any)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EditR1Error(f"LoRA not found: {path}")
    if path.is_dir():
        for name in (DIFFUSERS_WEIGHT_NAME, PEFT_WEIGHT_NAME):
            if (path / name).is_file():
                path = path / name
                break
        else:
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise EditR1Error(
                    f"{path}: no LoRA weights found; expected {DIFFUSERS_WEIGHT_NAME} (diffusers) or "
                    f"{PEFT_WEIGHT_NAME} + {PEFT_CONFIG_NAME} (peft)"
                    + (f", or a single .safetensors file (found {len(found)})" if found else "")
                )
            path = found[0]
    if path.suffix != ".safetensors":
        raise EditR1Error(f"{path}: LoRA weights must be a .safetensors file (pickled .bin files are not loaded)")
    config = path.parent / PEFT_CONFIG_NAME
    return path, config if config.is_file() else None


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA in the diffusers or peft layout; keys come back transformer-relative (`<module>.lora_A.weight`)."""
    file, config_file = find_lora_file(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            raw = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise EditR1Error(f"{file}: not a readable safetensors file ({error})") from error
    if not raw:
        raise EditR1Error(f"{file}: holds no tensors")
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unsupported = []
    for key, tensor in raw.items():
        match = _LORA_KEY.match(_strip_prefixes(key))
        if match is None:
            unsupported.append(key)
            continue
        name = f"{match['module']}.{match['part']}.weight"
        if name in state:
            raise EditR1Error(
                f"{file}: keys {origin[name]!r} and {key!r} map to the same LoRA weight; the file holds several "
                "adapters: export one"
            )
        state[name], origin[name] = tensor, key
    if unsupported:
        raise EditR1Error(
            f"{file}: {len(unsupported)} of {len(raw)} keys are not peft/diffusers LoRA weights "
            f"(<module>.lora_A.weight / .lora_B.weight), e.g. {unsupported[:_SHOWN]}; kohya/ComfyUI (lora_down/lora_up, "
            ".alpha) and DoRA files are not supported"
        )
    return LoraFile(file, state, _read_config(file, metadata, config_file))


def _strip_prefixes(key: str) -> str:
    for prefix in KEY_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _read_config(file: Path, metadata: dict[str, str], config_file: Path | None) -> dict[str, Any] | None:
    if METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as error:
            raise EditR1Error(f"{file}: corrupt {METADATA_KEY} in the file's metadata ({error})") from error
        # `save_lora_weights` prefixes each component's entries ("transformer.r"); a model's own
        # `save_lora_adapter` does not.
        if any(k.startswith("transformer.") for k in config):
            config = {k.removeprefix("transformer."): v for k, v in config.items() if k.startswith("transformer.")}
        return config
    if config_file is not None and file.name == PEFT_WEIGHT_NAME:
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EditR1Error(f"{config_file}: unreadable peft adapter config ({error})") from error
        if config.get("peft_type", "LORA") != "LORA":
            raise EditR1Error(f"{config_file}: peft_type {config.get('peft_type')!r}; only LORA adapters are supported")
        return config
    return None


def _check_state(state: dict[str, torch.Tensor], what: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """Group LoRA keys by module, checking every module has a 2-D lora_A and lora_B of one rank."""
    if not state:
        raise EditR1Error(f"{what}: no LoRA weights")
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match is None or match["adapter"] is not None:
            raise EditR1Error(f"{what}: {key!r} is not a LoRA key of the form <module>.lora_A.weight / .lora_B.weight")
        modules.setdefault(match["module"], {})[match["part"]] = tuple(tensor.shape)
    broken = [
        m for m, parts in modules.items()
        if set(parts) != {"lora_A", "lora_B"} or len(parts["lora_A"]) != 2 or len(parts["lora_B"]) != 2
        or parts["lora_A"][0] != parts["lora_B"][1]
    ]
    if broken:
        raise EditR1Error(f"{what}: {len(broken)} modules lack a matching lora_A / lora_B pair, e.g. {broken[:_SHOWN]}")
    return modules


def lora_spec(lora: LoraFile) -> LoraSpec:
    """The spec of a read LoRA: ranks from the weights, alpha (and rsLoRA) from its config."""
    modules = _check_state(lora.state_dict, str(lora.path))
    ranks = {module: shapes["lora_A"][0] for module, shapes in modules.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    rank_pattern = {module: r for module, r in ranks.items() if r != rank}
    config = lora.config
    if config is None:
        warnings.warn(
            f"{lora.path}: no LoRA config (alpha) in the file or beside it; assuming alpha = rank (scale 1), as "
            "diffusers does",
            stacklevel=3,
        )
        return LoraSpec(rank, float(rank), tuple(sorted(modules)), rank_pattern, dict(rank_pattern))
    if config.get("use_dora"):
        raise EditR1Error(f"{lora.path}: a DoRA adapter (use_dora: true); only plain LoRA is supported")
    stated = config.get("r")
    if stated is not None and not config.get("rank_pattern") and int(stated) != rank:
        raise EditR1Error(f"{lora.path}: its config says rank {stated} but the weights have rank {rank}")
    alpha = float(config.get("lora_alpha", rank))
    return LoraSpec(
        rank, alpha, tuple(sorted(modules)), rank_pattern, dict(config.get("alpha_pattern") or {}),
        bool(config.get("use_rslora", False)),
    )


def check_lora_matches(transformer: nn.Module, lora: LoraFile, model_name: str = "this model") -> None:
    """Raise an `EditR1Error` unless every LoRA module exists in `transformer` as a linear layer of the right shape."""
    modules = _check_state(lora.state_dict, str(lora.path))
    named = dict(transformer.named_modules())
    missing, wrong_shape = [], []
    for module, shapes in modules.items():
        layer = named.get(module)
        layer = getattr(layer, "base_layer", layer)  # a module that already carries a peft adapter
        if not isinstance(layer, nn.Linear):
            missing.append(f"{module}.lora_A.weight")
            continue
        rank = shapes["lora_A"][0]
        if shapes["lora_A"] != (rank, layer.in_features) or shapes["lora_B"] != (layer.out_features, rank):
            wrong_shape.append(
                f"{module}: lora_A {list(shapes['lora_A'])} / lora_B {list(shapes['lora_B'])}, the layer is "
                f"{layer.in_features} -> {layer.out_features}"
            )
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(modules)} LoRA modules have no linear layer of that name in the transformer, "
                        f"e.g. {missing[:_SHOWN]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} of {len(modules)} LoRA modules have the wrong shape, e.g. {wrong_shape[:_SHOWN]}")
    if problems:
        raise EditR1Error(
            f"{lora.path}: this LoRA does not match {model_name} (another model family or size?): " + "; ".join(problems)
        )


def load_lora(target: Any, path: str | Path, adapter_name: str = "default") -> LoraSpec:
    """Load a LoRA file or folder into `target` (an adapter or its transformer) as peft adapter
    `adapter_name`, and make it the active adapter. All keys are checked before anything is loaded."""
    transformer = getattr(target, "transformer", target)
    model_name = f"this {target.family} model" if hasattr(target, "family") else "this transformer"
    lora = read_lora(path)
    check_lora_matches(transformer, lora, model_name)
    spec = lora_spec(lora)
    if adapter_name in (getattr(transformer, "peft_config", None) or {}):
        raise EditR1Error(f"the transformer already has a LoRA adapter named {adapter_name!r}")
    from peft.utils import set_peft_model_state_dict

    transformer.add_adapter(spec.peft_config(), adapter_name=adapter_name)
    try:
        result = set_peft_model_state_dict(transformer, lora.state_dict, adapter_name=adapter_name)
        unexpected = [k for k in result.unexpected_keys if "lora_" in k]
        missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
        if unexpected or missing:
            raise EditR1Error(
                f"{lora.path}: LoRA keys did not all load (unexpected {unexpected[:_SHOWN]}, missing {missing[:_SHOWN]})"
            )
    except BaseException:
        transformer.delete_adapters(adapter_name)
        raise
    transformer.set_adapter(adapter_name)
    return spec
