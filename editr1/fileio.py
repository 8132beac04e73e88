"""Durable file writes: a file appears complete or not at all, with the user's usual permissions.

`safetensors` creates its files mode 0600, and so does `tempfile.mkstemp`; outputs a user shares
(LoRAs, models, checkpoints) get the mode a plain `open()` would give them (0666 minus the umask).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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
