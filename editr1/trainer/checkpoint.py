"""Training checkpoints that load without unpickling arbitrary objects.

Layout of `output_dir/checkpoints/step_000010/`:
- `trained.safetensors`, `old.safetensors`: the trained and old policy weights;
- `optimizer.safetensors` + `optimizer.json`: optimizer tensors, and its scalar state and hyper-parameters;
- `rng.safetensors`: the torch CPU RNG state;
- `state.json`: step, data position, banned sample ids and anything else JSON-plain.
A checkpoint is written to a temporary folder and renamed into place, so a crash never leaves a
half-written one; `latest` names the newest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from editr1.errors import EditR1Error

LATEST = "latest"


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars, "indices": list(state_dict["state"])}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(meta["scalars"].get(str(i), {})) for i in meta["indices"]}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state[int(index)][key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    root: Path,
    step: int,
    trained: dict[str, torch.Tensor],
    old: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    staging = root / f".tmp_step_{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: v.detach().contiguous() for k, v in trained.items()}, staging / "trained.safetensors")
    save_file({k: v.detach().contiguous() for k, v in old.items()}, staging / "old.safetensors")
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, staging / "optimizer.safetensors")
    (staging / "optimizer.json").write_text(json.dumps(meta))
    save_file({"cpu": torch.get_rng_state()}, staging / "rng.safetensors")
    (staging / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not folder.is_dir():
        raise EditR1Error(f"{pointer}: names {folder.name}, which does not exist")
    return folder


def load_checkpoint(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[dict, dict, dict]:
    """Restore the optimizer and the RNG; return (trained weights, old weights, state)."""
    try:
        trained = load_file(folder / "trained.safetensors")
        old = load_file(folder / "old.safetensors")
        meta = json.loads((folder / "optimizer.json").read_text())
        optimizer.load_state_dict(_unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta))
        torch.set_rng_state(load_file(folder / "rng.safetensors")["cpu"])
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise EditR1Error(f"{folder}: cannot load checkpoint: {error}") from error
    return trained, old, state
