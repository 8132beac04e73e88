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

from dataclasses import dataclass
from pathlib import Path

from editr1.data.images import MAX_IMAGE_PIXELS, load_image
from editr1.data.jsonl import (
    LineError,
    json_type_name,
    non_empty_string,
    optional_string,
    parse_id,
    parse_json_object,
    read_numbered_lines,
    resolve_path,
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
            raise LineError("the list of source images is empty", "source")
        return tuple(resolve_path(v, base, f"source[{i}]") for i, v in enumerate(value))
    if not isinstance(value, str):
        raise LineError(f"expected a path string or a list of them, got {json_type_name(value)}", "source")
    return (resolve_path(value, base, "source"),)


def _parse_pair(text: str, lineno: int, base: Path) -> PreferencePair:
    row = parse_json_object(text)
    for name in ("source", "prompt", "image_a", "image_b", "preferred"):
        if name not in row:
            raise LineError("missing (required)", name)
    if row["preferred"] not in PREFERENCES:
        raise LineError(f"expected one of {list(PREFERENCES)}, got {row['preferred']!r}", "preferred")
    return PreferencePair(
        id=parse_id(row.get("id"), lineno),
        sources=_parse_sources(row["source"], base),
        prompt=non_empty_string(row["prompt"], "prompt"),
        requirement=optional_string(row, "requirement"),
        image_a=resolve_path(row["image_a"], base, "image_a"),
        image_b=resolve_path(row["image_b"], base, "image_b"),
        preferred=row["preferred"],
        line=lineno,
    )


def read_preference_jsonl(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> list[PreferencePair]:
    """Parse and validate a pairs file, decoding every image once; DataError on the first problem."""
    path = Path(path)
    pairs = []
    for lineno, text in read_numbered_lines(path):
        try:
            pair = _parse_pair(text, lineno, path.parent)
            sources = [("source" if len(pair.sources) == 1 else f"source[{i}]", p) for i, p in enumerate(pair.sources)]
            for name, image in [*sources, ("image_a", pair.image_a), ("image_b", pair.image_b)]:
                try:
                    load_image(image, max_pixels=max_pixels)
                except DataError as error:
                    raise LineError(str(error), name) from None
        except LineError as error:
            field = f"field '{error.field_name}': " if error.field_name else ""
            raise DataError(f"{path}:{lineno}: {field}{error.what}") from None
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no pairs (the file is empty)")
    return pairs
