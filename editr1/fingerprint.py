"""Fingerprints of files and model folders by content: caches and results are keyed by them, never by a
path alone, so that weights rewritten under the same path (a run extended, a model re-saved) are told apart.

A file's fingerprint covers its size and its bytes: the whole file up to `WHOLE_FILE_BYTES`; past that, a
safetensors file's header (names, dtypes, shapes, offsets) and `SAMPLED_BLOCKS` blocks spread evenly over
the file, without reading tens of GB each time. A fine-tune or a LoRA update rewrites weights throughout
the file, which the blocks see; a change confined to a few small tensors between two blocks (say, only
some norms) can pass unseen. A folder's fingerprint covers every file's relative path and fingerprint,
hidden files (a download's `.cache/`), notes and pictures aside.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path

#: Files up to this size are hashed whole (configs, tokenizers, most LoRAs).
WHOLE_FILE_BYTES = 64 << 20
SAMPLED_BLOCKS, BLOCK_BYTES = 64, 64 << 10
#: A safetensors header larger than this is not one (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Shown in messages and tables: enough to tell fingerprints apart by eye.
SHORT = 12


def file_fingerprint(path: str | Path) -> str:
    """sha256 over the file's size and its content (whole, or its header and sampled blocks)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return digest.hexdigest()
        if path.suffix == ".safetensors":
            (length,) = struct.unpack("<Q", handle.read(8))
            digest.update(handle.read(min(length, MAX_HEADER_BYTES)))
        for index in range(SAMPLED_BLOCKS):
            handle.seek((size - BLOCK_BYTES) * index // (SAMPLED_BLOCKS - 1))
            digest.update(handle.read(BLOCK_BYTES))
    return digest.hexdigest()


#: Files no loader reads: notes and pictures beside the weights.
NOT_COUNTED_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".webp")


def _files(folder: Path):
    """Every file under `folder`, through symlinked folders too (a model's `transformer/` may link to another
    disk), each real folder once; hidden files and folders (a download's `.cache/`) and notes left out."""
    seen = set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or one folder linked twice
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and not name.lower().endswith(NOT_COUNTED_SUFFIXES) and path.is_file():
                yield path


def files_fingerprint(folder: str | Path, files: Iterable[Path]) -> str:
    """sha256 over each of `files`' path relative to `folder` and its fingerprint, in path order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_fingerprint(path)}\n".encode())
    return digest.hexdigest()


def folder_fingerprint(folder: str | Path, skip: Iterable[str] = ()) -> str:
    """The fingerprint of every file under `folder` but those under the top-level folders `skip`."""
    folder = Path(folder)
    skipped = set(skip)
    return files_fingerprint(folder, (p for p in _files(folder) if p.relative_to(folder).parts[0] not in skipped))


def short(fingerprint: str | None) -> str:
    return "not recorded" if fingerprint is None else fingerprint[:SHORT]
