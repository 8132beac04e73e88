"""Preference pairs for measuring a reward's agreement with a judge of record (humans, a verifier).

JSON Lines, one pair per line::

    {"id": "p1", "source": "src/1.png", "prompt": "make the sky red", "requirement": null,
     "image_a": "a/1.png", "image_b": "b/1.png", "preferred": "a"}

`preferred` is "a", "b" or "tie". `source` is a path or, for multi-reference edits (Qwen-Image-Edit-2509's
"Picture 1", "Picture 2", ...), a non-empty list of paths in that order. Paths are relative to the
file's folder. Public human-preference sets (source image(s), one instruction, two edits, a vote)
convert to this with a few lines of code.
Problems are reported as `file:line: field 'name': what`, like the edit datasets.

`read_pairs` also reads GenAI-Bench's `image_edition` human votes saved with `datasets.save_to_disk`
(`editr1.data.genai_bench`); there a pair's images are cells of the dataset (`DatasetImage`), not files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

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
class DatasetImage:
    """An image in a cell of a saved dataset, decoded when asked for (a pairs set may not fit in memory)."""

    where: str  # how errors name the dataset, e.g. "GenAI-Bench data/genai"
    row: int
    column: str
    #: The dataset with only this image column, so that reading a cell decodes this image alone.
    dataset: Any = field(compare=False, repr=False)

    def load(self) -> Image.Image:
        try:
            image = self.dataset[self.row][self.column]
        except Exception as error:  # noqa: BLE001 - Pillow's decoders, called by datasets, raise OSError, SyntaxError...
            raise DataError(f"{self.where} row {self.row}: column {self.column!r}: cannot decode the image "
                            f"({type(error).__name__}: {error})") from error
        if not isinstance(image, Image.Image):
            raise DataError(f"{self.where} row {self.row}: column {self.column!r}: expected an image, "
                            f"got {type(image).__name__}")
        # As `load_image` does for a file: the image upright, as a viewer (the voters' browser) shows it.
        return ImageOps.exif_transpose(image)


#: Where a pair's image is: a file, or a cell of a saved dataset.
ImageRef = Path | DatasetImage


def load_pair_image(ref: ImageRef) -> Image.Image:
    """A pair's image, decoded (`load_image`'s checks for a file)."""
    return ref.load() if isinstance(ref, DatasetImage) else load_image(ref)


@dataclass(frozen=True)
class PreferencePair:
    """Two edits of the same source(s) and instruction, and which one the judge of record preferred."""

    id: str
    sources: tuple[ImageRef, ...]
    prompt: str
    requirement: str | None
    image_a: ImageRef
    image_b: ImageRef
    preferred: str  # "a", "b" or "tie"
    #: The pair's line in a JSONL file (1-based), or its row in a saved dataset (0-based).
    line: int
    #: The label as the data spells it ("tievote" and "bothbad_vote" are both ties); `preferred` for JSONL.
    vote: str


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
        vote=row["preferred"],
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


def read_pairs(path: Path) -> tuple[str, list[PreferencePair]]:
    """The layout of `path` and its pairs: a folder saved with `datasets.save_to_disk` is GenAI-Bench's
    `image_edition` votes, a `.jsonl` file editr1's pairs."""
    path = Path(path).expanduser()
    if path.is_dir():
        from editr1.data.genai_bench import read_genai_bench  # needs the optional `datasets`

        return "genai-bench", read_genai_bench(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: expected a .jsonl file of pairs, or a folder saved with datasets' save_to_disk "
                        "(GenAI-Bench image_edition)")
    return "editr1", read_preference_jsonl(path)
