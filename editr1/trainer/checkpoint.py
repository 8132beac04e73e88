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
Reading a checkpoint reads the headers of its tensor files; the tensors are read when loaded, and a
sharded run reads only each process's rows of them (`TensorFile`, `sharding.read_like`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from editr1.errors import EditR1Error
from editr1.fileio import fsync_path, fsync_tree, save_safetensors, write_text_atomic
from editr1.trainer.sharding import read_like

LATEST = "latest"
MANIFEST = "manifest.json"
_STEP_FOLDER = re.compile(r"^step_(\d+)$")
_STAGING_PREFIX = ".staging_"


class TensorFile(Mapping[str, torch.Tensor]):
    """The tensors of a safetensors file, read when asked for: whole (`file[name]`, `read(name)`), or one
    block (`read(name, index)`: only those bytes are read). Opening reads and checks the header; each read
    opens the file again, so nothing stays mapped between reads."""

    def __init__(self, path: Path):
        self.path = path
        with safe_open(path, framework="pt") as handle:
            self._shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> torch.Tensor:
        try:
            with safe_open(self.path, framework="pt") as handle:
                return handle.get_tensor(name) if index is None else handle.get_slice(name)[index]
        except (OSError, SafetensorError) as error:  # the header was checked: the file changed or the disk failed
            raise EditR1Error(f"{self.path}: cannot read tensor {name!r} ({error})") from error

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._shapes:
            raise KeyError(name)
        return self.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


@dataclass
class Checkpoint:
    """A checkpoint whose small files are read and whose tensor files are opened: the caller loads the
    weights; `restore` sets the optimizer and the RNG."""

    folder: Path
    trained: TensorFile
    old: TensorFile
    #: The optimizer's tensors, named "<parameter index>.<key>" (`optimizer.json` holds the rest).
    optimizer_tensors: TensorFile
    optimizer_meta: dict
    rng: torch.Tensor
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's state, each tensor of a parameter's shape (Adam's moments) read as that parameter
        is held (a sharded run: this process's rows only), and the RNG."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state: dict[int, dict] = {int(i): dict(self.optimizer_meta["scalars"].get(str(i), {}))
                                  for i in self.optimizer_meta["indices"]}
        for name in self.optimizer_tensors:
            index, key = name.split(".", 1)
            param = params[int(index)] if 0 <= int(index) < len(params) else None
            like = param if param is not None and self.optimizer_tensors.shape(name) == tuple(param.shape) else None
            state[int(index)][key] = read_like(self.optimizer_tensors, name, like)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": self.optimizer_meta["param_groups"]})
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
        return Checkpoint(
            folder,
            TensorFile(folder / "trained.safetensors"),
            TensorFile(folder / "old.safetensors"),
            TensorFile(folder / "optimizer.safetensors"),
            json.loads((folder / "optimizer.json").read_text()),
            TensorFile(folder / "rng.safetensors")["cpu"],
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
