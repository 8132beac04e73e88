"""Durable file writes: a file appears complete or not at all, with the user's usual permissions.

`safetensors` creates its files mode 0600, and so does `tempfile.mkstemp`; outputs a user shares
(LoRAs, models, checkpoints) get the mode a plain `open()` would give them (0666 minus the umask).
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from editr1.errors import EditR1Error

if TYPE_CHECKING:
    import torch


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: setting the umask to read it is not safe while other threads create files.
_UMASK = _read_umask()


def default_file_mode() -> int:
    return 0o666 & ~_UMASK


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, then `folder` itself."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def fix_modes(folder: Path, pattern: str = "*.safetensors") -> None:
    """Give files that a library wrote 0600 (safetensors does) the usual mode."""
    mode = default_file_mode()
    for path in Path(folder).rglob(pattern):
        os.chmod(path, mode)


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """`write(temporary path)` beside `path`, fsync it, give it the usual mode, rename it over `path`
    and fsync the folder: `path` is the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fsync_path(Path(tmp))
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_safetensors(tensors: dict[str, "torch.Tensor"], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, atomic and synced, with the usual file mode."""
    from safetensors.torch import save_file  # here: configs import this module before torch is needed

    _write_atomically(path, lambda tmp: save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp,
                                                  metadata=metadata))


def foreign_entries(folder: str | Path, ours: Iterable[str]) -> list[str]:
    """The names at the top of `folder` that match none of the patterns `ours` (what a command writes there).
    Hidden names are not counted: a file manager's or a download's bookkeeping, never a user's documents."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    patterns = tuple(ours)
    return sorted(entry.name for entry in folder.iterdir()
                  if not entry.name.startswith(".") and not any(fnmatch.fnmatchcase(entry.name, p) for p in patterns))


def refuse_foreign_entries(folder: str | Path, ours: Iterable[str], what: str) -> None:
    """One rule for every command that writes a folder: a folder holding files the command did not write is
    not one of its folders, and is refused (EditR1Error naming a few of them) before anything is written."""
    found = foreign_entries(folder, ours)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise EditR1Error(f"{folder}: holds files that {what} did not write ({shown}); choose a new or empty folder")
