"""Per-iteration metrics: an append-only ``metrics.jsonl``, the run's record (experiment trackers get copies:
``editr1.trainer.trackers``).

Each line of ``metrics.jsonl`` is one JSON object ``{"step": int, **metrics}``.
Non-finite values are written as ``null`` and their keys listed under
``"nonfinite"`` so that a NaN shows up in the file instead of breaking strict
JSON parsers or being silently dropped.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from editr1.errors import DataError
from editr1.fileio import write_text_atomic

METRICS_FILE = "metrics.jsonl"
_RESERVED_KEYS = ("step", "nonfinite")


class MetricsLogger:
    """Write metrics rows to ``run_dir/metrics.jsonl``.

    Opening appends to an existing file, so a resumed run continues it; call
    :meth:`truncate_after` with the resumed step first to drop rows the crashed
    run wrote after its last checkpoint.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one row for ``step`` (flushed at once)."""
        if self._file is None:
            raise RuntimeError("MetricsLogger is closed")
        row = _make_row(step, metrics)
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Keep only rows with ``row["step"] <= step`` (atomic rewrite of metrics.jsonl)."""
        self._close_file()
        if self.path.exists():
            kept = [line for line, row in _parse_lines(self.path) if row["step"] <= step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        """Flush and close the jsonl file (idempotent)."""
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: Path) -> list[dict]:
    """Return the rows of a metrics.jsonl file (or of ``path/metrics.jsonl`` for a run dir).

    A torn last line (crash mid-write) is ignored; any other malformed line
    raises DataError naming the file and line number.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise DataError(f"metrics file not found: {path}")
    return [row for _, row in _parse_lines(path)]


def _make_row(step: int, metrics: Mapping[str, float]) -> dict:
    """Build the JSON row; non-finite values become null and are listed in "nonfinite"."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step must be an int, got {type(step).__name__}")
    row: dict[str, Any] = {"step": step}
    nonfinite = []
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be str, got {key!r}")
        if key in _RESERVED_KEYS:
            raise ValueError(f"metric name {key!r} is reserved")
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metric {key!r} is not a number: {value!r}") from e
        if math.isfinite(value):
            row[key] = value
        else:
            row[key] = None
            nonfinite.append(key)
    if nonfinite:
        row["nonfinite"] = nonfinite
    return row


def _parse_lines(path: Path) -> list[tuple[str, dict]]:
    """Return (raw line, parsed row) pairs; skip a torn final line without newline."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    if torn:
        warnings.warn(f"{path}: ignoring incomplete last line (interrupted write)", stacklevel=3)
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON: {e}") from e
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise DataError(f"{path}:{lineno}: expected an object with an int 'step'")
        out.append((line, row))
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cut a partial last line so the next appended row does not fuse with it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    warnings.warn(f"{path}: dropping incomplete last line (interrupted write)", stacklevel=3)
    os.truncate(path, keep)

