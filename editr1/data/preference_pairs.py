"""Preference pairs for measuring a reward's agreement with a judge of record (humans, a verifier).

JSON Lines, one pair per line::

    {"id": "p1", "source": "src/1.png", "prompt": "make the sky red", "requirement": null,
     "image_a": "a/1.png", "image_b": "b/1.png", "preferred": "a"}

`preferred` is "a", "b" or "tie". `source` is a path or, for multi-reference edits (Qwen-Image-Edit-2509's
"Picture 1", "Picture 2", ...), a non-empty list of paths in that order. Paths are relative to the
file's folder. Public human-preference sets (source image(s), one instruction, two edits, a vote)
convert to this with a few lines of code.
Problems are reported as `file:line: field 'name': what`, like the edit datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from editr1.data.images import MAX_IMAGE_PIXELS, load_image
from editr1.data.jsonl import (
    _json_type,
    _LineError,
    _no_duplicate_keys,
    _non_empty_string,
    _numbered_lines,
    _optional_string,
    _parse_id,
    _read_bytes,
    _resolve,
)
from editr1.errors import DataError

PREFERENCES = ("a", "b", "tie")


@dataclass(frozen=True)
class PreferencePair:
    id: str
    sources: tuple[Path, ...]
    prompt: str
    requirement: str | None
    image_a: Path
    image_b: Path
    preferred: str
    line: int


def _parse_sources(value, base: Path) -> tuple[Path, ...]:
    if isinstance(value, list):
        if not value:
            raise _LineError("the list of source images is empty", "source")
        return tuple(_resolve(v, base, f"source[{i}]") for i, v in enumerate(value))
    if not isinstance(value, str):
        raise _LineError(f"expected a path string or a list of them, got {_json_type(value)}", "source")
    return (_resolve(value, base, "source"),)


def _parse_pair(text: str, lineno: int, base: Path) -> PreferencePair:
    try:
        row = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise _LineError(f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(row, dict):
        raise _LineError(f"expected a JSON object, got {_json_type(row)}")
    for name in ("source", "prompt", "image_a", "image_b", "preferred"):
        if name not in row:
            raise _LineError("missing (required)", name)
    if row["preferred"] not in PREFERENCES:
        raise _LineError(f"expected one of {list(PREFERENCES)}, got {row['preferred']!r}", "preferred")
    return PreferencePair(
        id=_parse_id(row.get("id"), lineno),
        sources=_parse_sources(row["source"], base),
        prompt=_non_empty_string(row["prompt"], "prompt"),
        requirement=_optional_string(row, "requirement"),
        image_a=_resolve(row["image_a"], base, "image_a"),
        image_b=_resolve(row["image_b"], base, "image_b"),
        preferred=row["preferred"],
        line=lineno,
    )


def read_preference_jsonl(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> list[PreferencePair]:
    """Parse and validate a pairs file, decoding every image once; DataError on the first problem."""
    path = Path(path)
    pairs = []
    for lineno, text in _numbered_lines(path, _read_bytes(path)):
        try:
            pair = _parse_pair(text, lineno, path.parent)
            sources = [("source" if len(pair.sources) == 1 else f"source[{i}]", p) for i, p in enumerate(pair.sources)]
            for name, image in [*sources, ("image_a", pair.image_a), ("image_b", pair.image_b)]:
                try:
                    load_image(image, max_pixels=max_pixels)
                except DataError as error:
                    raise _LineError(str(error), name) from None
        except _LineError as error:
            field = f"field '{error.field_name}': " if error.field_name else ""
            raise DataError(f"{path}:{lineno}: {field}{error.what}") from None
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no pairs (the file is empty)")
    return pairs
