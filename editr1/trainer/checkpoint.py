"""Training checkpoints that load without unpickling, survive a kill at any moment, and rotate.

Layout of `output_dir/checkpoints/step_000010/`:
- `trained.safetensors`, `old.safetensors`: the trained and old policy weights;
- `optimizer.safetensors` + `optimizer.json`: optimizer tensors, and its scalar state and hyper-parameters;
- `rng.safetensors`: the torch CPU RNG state;
- `state.json`: step, data position, banned sample ids and anything else JSON-plain;
- `manifest.json`, written last: every file's size. A folder whose files do not match it is not a
  checkpoint (folders from before the manifest are read as they are).
A checkpoint is written to a staging folder, fsynced, then renamed into place, so a kill or a power cut
never leaves a checkpoint that looks complete but is not. An intact checkpoint is never rewritten (it
already holds its step's state); a broken one is moved aside before the new one is renamed in.
`latest` names the newest, but resuming does not trust it alone: it takes the newest intact
checkpoint and says which folders it passed over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from editr1.errors import EditR1Error
from editr1.fileio import fsync_path, fsync_tree, save_safetensors, write_text_atomic

LATEST = "latest"
MANIFEST = "manifest.json"
_STEP_FOLDER = re.compile(r"^step_(\d+)$")
_STAGING_PREFIX = ".staging_"


@dataclass
class Checkpoint:
    """A checkpoint read fully into memory: the caller loads the weights; `restore` sets the
    optimizer and the RNG."""

    folder: Path
    trained: dict[str, torch.Tensor]
    old: dict[str, torch.Tensor]
    optimizer_state: dict
    rng: torch.Tensor
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            optimizer.load_state_dict(self.optimizer_state)
        except (ValueError, KeyError) as error:
            raise EditR1Error(f"{self.folder}: the optimizer state does not fit this run's parameters ({error})") from error
        torch.set_rng_state(self.rng)


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


def checkpoint_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step_N` folder, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m[1]), path) for path in root.iterdir() if (m := _STEP_FOLDER.match(path.name)) and path.is_dir()]
    return sorted(found, reverse=True)


def save_checkpoint(
    root: Path,
    step: int,
    trained: dict[str, torch.Tensor],
    old: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict,
    state: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write `step_N` (unless it exists already), point `latest` at it (for people and tools; resuming
    scans the folders), then keep it and the `keep - 1` newest older checkpoints (0: all).
    `optimizer`: an optimizer, or its state dict already taken (a sharded run gathers one)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    if not _manifest_matches(final):
        staging = root / f"{_STAGING_PREFIX}step_{step:06d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        files = {
            "trained.safetensors": lambda p: save_safetensors(trained, p),
            "old.safetensors": lambda p: save_safetensors(old, p),
            "rng.safetensors": lambda p: save_safetensors({"cpu": torch.get_rng_state()}, p),
        }
        tensors, meta = _flatten_optimizer(optimizer if isinstance(optimizer, dict) else optimizer.state_dict())
        files["optimizer.safetensors"] = lambda p: save_safetensors(tensors, p)
        files["optimizer.json"] = lambda p: write_text_atomic(p, json.dumps(meta))
        files["state.json"] = lambda p: write_text_atomic(p, json.dumps({"step": step, **state}, indent=2))
        for name, write in files.items():
            write(staging / name)
        sizes = {name: (staging / name).stat().st_size for name in files}
        write_text_atomic(staging / MANIFEST, json.dumps({"step": step, "files": sizes}, indent=2))
        fsync_tree(staging)
        if final.exists():  # a broken folder of an earlier attempt: moved aside, then the new one in
            broken = root / f"{_STAGING_PREFIX}broken_{final.name}"
            shutil.rmtree(broken, ignore_errors=True)
            os.replace(final, broken)
        os.replace(staging, final)
        fsync_path(root)
        shutil.rmtree(root / f"{_STAGING_PREFIX}broken_{final.name}", ignore_errors=True)
    write_text_atomic(root / LATEST, final.name)
    fsync_path(root)
    if keep > 0:
        older = [folder for saved, folder in checkpoint_folders(root) if saved < step]
        for folder in older[keep - 1:]:
            shutil.rmtree(folder)
    return final


def _manifest_matches(folder: Path) -> bool:
    """Cheap completeness check (sizes only): the manifest is written last, after every file."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def remove_staging(root: Path) -> None:
    """Half-written checkpoints of a killed run."""
    if root.is_dir():
        for path in root.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(path)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read and check every file of a checkpoint; EditR1Error naming the folder and the problem."""
    # Folders of editr1 versions before the manifest are read as they are.
    if (folder / MANIFEST).exists() and not _manifest_matches(folder):
        raise EditR1Error(f"{folder}: incomplete checkpoint (its files do not match {MANIFEST})")
    try:
        meta = json.loads((folder / "optimizer.json").read_text())
        return Checkpoint(
            folder,
            load_file(folder / "trained.safetensors"),
            load_file(folder / "old.safetensors"),
            _unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta),
            load_file(folder / "rng.safetensors")["cpu"],
            json.loads((folder / "state.json").read_text()),
        )
    except EditR1Error:
        raise
    except FileNotFoundError as error:
        raise EditR1Error(f"{folder}: incomplete checkpoint ({Path(error.filename).name} is missing)") from error
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise EditR1Error(f"{folder}: unreadable checkpoint ({type(error).__name__}: {error})") from error


def newest_intact_checkpoint(root: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that reads back whole, and why each newer folder was passed over."""
    skipped = []
    for _, folder in checkpoint_folders(root):
        try:
            return read_checkpoint(folder), skipped
        except EditR1Error as error:
            skipped.append(str(error))
    return None, skipped
