"""Reading and writing edit datasets in JSON Lines form.

One JSON object per line (blank lines are skipped), compatible with the public
Edit-R1 layout::

    {"id": "7", "image": "img/7.png", "prompt": "Make the sky red",
     "requirement": "keep the trees", "target": "tgt/7.png"}

``image`` is a path or a non-empty list of paths, relative to the JSONL file's
folder unless absolute. ``id`` (string or int) defaults to the 1-based line
number. Unknown fields are kept verbatim in ``EditSample.extra``. Every problem
is reported as ``"{file}:{line}: field '{name}': {what}"``.

The line-level helpers (``read_numbered_lines``, ``parse_json_object``,
``LineError`` and the field validators) are public for other JSONL readers
that report problems the same way (see ``editr1.data.preference_pairs``).
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from editr1.data.images import MAX_IMAGE_PIXELS, file_problem, load_image
from editr1.errors import DataError
from editr1.fileio import default_file_mode

_KNOWN_FIELDS = ("id", "image", "prompt", "requirement", "target")


@dataclass(frozen=True)
class EditSample:
    """One editing example; paths are already resolved against the JSONL folder."""

    id: str
    images: tuple[Path, ...]
    prompt: str
    requirement: str | None
    target: Path | None
    line: int
    extra: dict = field(default_factory=dict)


class LineError(Exception):
    """A problem on one line of a JSONL file; the reader adds the file and line number.

    ``what`` says what is wrong; ``field_name`` names the field at fault, or is
    None when the problem concerns the whole line (e.g. invalid JSON).
    """

    def __init__(self, what: str, field_name: str | None = None):
        super().__init__(what)
        self.what = what
        self.field_name = field_name


def read_edit_jsonl(
    path: Path,
    require_target: bool = False,
    check_images: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_pixels_field: str = "data.max_pixels",
) -> list[EditSample]:
    """Parse and validate an edit dataset; raise DataError on the first problem.

    With ``check_images`` every image and target is fully decoded once, so bad
    files fail here (with file, line and field) rather than mid-training.
    ``max_pixels_field`` is the setting an "image too large" error names.
    """
    path = Path(path)
    samples: list[EditSample] = []
    first_line_of_id: dict[str, int] = {}
    for lineno, text in read_numbered_lines(path):
        try:
            sample = _parse_row(text, lineno, path.parent, require_target)
            if sample.id in first_line_of_id:
                raise LineError(
                    f"duplicate id {sample.id!r} (first used on line {first_line_of_id[sample.id]})", "id"
                )
            if check_images:
                _check_sample_images(sample, max_pixels, max_pixels_field)
        except LineError as e:
            where = f"{path}:{lineno}: "
            if e.field_name is not None:
                where += f"field '{e.field_name}': "
            raise DataError(where + e.what) from None
        first_line_of_id[sample.id] = lineno
        samples.append(sample)
    if not samples:
        raise DataError(f"{path}: no samples (the file is empty)")
    return samples


def read_numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Read ``path`` and yield (1-based line number, text) for its non-blank lines.

    Raises DataError if the file is missing or unreadable, or a line is not
    UTF-8. A leading UTF-8 byte-order mark is ignored. Splits on b"\\n" only:
    str.splitlines would also split on U+2028 etc., which JSON allows
    unescaped inside strings.
    """
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or e})") from e
    if raw.startswith(b"\xef\xbb\xbf"):  # tolerate a UTF-8 byte-order mark
        raw = raw[3:]
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None
        if text.strip():
            yield lineno, text


def _parse_row(text: str, lineno: int, base: Path, require_target: bool) -> EditSample:
    """Decode one line and validate its fields (no file access)."""
    row = parse_json_object(text)
    if "image" not in row:
        raise LineError("missing (required)" + _misspelt(row, "image"), "image")
    if "prompt" not in row:
        raise LineError("missing (required)" + _misspelt(row, "prompt"), "prompt")
    target = _optional_path(row, "target", base)
    if require_target and target is None:
        raise LineError("missing (required for this dataset)" + _misspelt(row, "target"), "target")
    return EditSample(
        id=parse_id(row.get("id"), lineno),
        images=_parse_images(row["image"], base),
        prompt=non_empty_string(row["prompt"], "prompt"),
        requirement=optional_string(row, "requirement"),
        target=target,
        line=lineno,
        extra={k: v for k, v in row.items() if k not in _KNOWN_FIELDS},
    )


def _misspelt(row: dict, name: str) -> str:
    """Point at an unknown field that looks like a misspelling of the missing field ``name``."""
    unknown = [key for key in row if key not in _KNOWN_FIELDS]
    close = difflib.get_close_matches(name, unknown, n=1)
    return f"; found unknown field {close[0]!r} — did you mean {name!r}?" if close else ""


def parse_json_object(text: str) -> dict:
    """Decode one line that must hold a JSON object without repeated keys; LineError if not."""
    try:
        row = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise LineError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(row, dict):
        raise LineError(f"expected a JSON object, got {json_type_name(row)}")
    return row


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a repeated key would silently drop data, so refuse it."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise LineError("appears more than once in the object", key)
        out[key] = value
    return out


def json_type_name(value: Any) -> str:
    """Name a decoded JSON value's type the way JSON does."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "number"


def parse_id(value: Any, lineno: int) -> str:
    """Validate an ``id`` field: a non-empty string or an integer; None gives the line number."""
    if value is None:
        return str(lineno)
    # bool is an int subclass in Python, but true/false are not ids.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise LineError("must not be empty", "id")
        return value
    raise LineError(f"expected a string or an integer, got {json_type_name(value)}", "id")


def _parse_images(value: Any, base: Path) -> tuple[Path, ...]:
    """Accept one path string or a non-empty list of path strings."""
    if isinstance(value, str):
        return (resolve_path(value, base, "image"),)
    if isinstance(value, list):
        if not value:
            raise LineError("the list of images is empty", "image")
        return tuple(resolve_path(v, base, f"image[{i}]") for i, v in enumerate(value))
    raise LineError(f"expected a path string or a list of them, got {json_type_name(value)}", "image")


def resolve_path(value: Any, base: Path, name: str) -> Path:
    """Validate the path string in field ``name``; resolve it against ``base`` unless absolute."""
    if not isinstance(value, str):
        raise LineError(f"expected a path string, got {json_type_name(value)}", name)
    if not value.strip():
        raise LineError("path must not be empty", name)
    p = Path(value)
    return p if p.is_absolute() else base / p


def non_empty_string(value: Any, name: str) -> str:
    """Return ``value`` of field ``name`` if it is a string with some non-space content."""
    if not isinstance(value, str):
        raise LineError(f"expected a string, got {json_type_name(value)}", name)
    if not value.strip():
        raise LineError("must not be empty", name)
    return value


def optional_string(row: dict, name: str) -> str | None:
    """Return the string field ``name`` of ``row``, or None if it is absent or null."""
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineError(f"expected a string, got {json_type_name(value)}", name)
    return value


def _optional_path(row: dict, name: str, base: Path) -> Path | None:
    """A path field that may be absent or null."""
    value = row.get(name)
    return None if value is None else resolve_path(value, base, name)


def _check_sample_images(sample: EditSample, max_pixels: int, max_pixels_field: str) -> None:
    """Decode every image of ``sample`` once; attribute failures to the field."""
    named = [("image" if len(sample.images) == 1 else f"image[{i}]", p) for i, p in enumerate(sample.images)]
    if sample.target is not None:
        named.append(("target", sample.target))
    for name, p in named:
        try:
            load_image(p, max_pixels=max_pixels, limit_name=max_pixels_field)
        except DataError as e:
            raise LineError(str(e), name) from None


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON Lines, atomically.

    The rows go to a temporary file in the same folder, which then replaces
    ``path``; if anything fails, an existing file at ``path`` is left intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates files 0600: keep the old file's mode, else the usual one.
        os.chmod(tmp_name, stat.S_IMODE(path.stat().st_mode) if path.exists() else default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def _json_default(value: Any) -> Any:
    """Let rows carry Path objects."""
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")

