"""A generic Markdown run report: a results table plus free-form sections.

The trainer decides what goes in; this module only formats it.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from editr1.fileio import write_text_atomic

REPORT_FILE = "report.md"


@dataclass(frozen=True)
class ReportSection:
    """One report section: a heading, optional text, optional image (path relative to run_dir)."""

    title: str
    text: str = ""
    image: str | None = None


def format_value(value: Any) -> str:
    """Floats with 4 decimals, everything else via str()."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{float(value):.4f}"
    return str(value)


def _cell(text: str) -> str:
    """Make text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def results_table(summary: Mapping[str, Any]) -> str:
    """Markdown table ``key | value`` for ``summary`` (insertion order kept)."""
    if not summary:
        return "_No results._\n"
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {_cell(str(k))} | {_cell(format_value(v))} |" for k, v in summary.items()]
    return "\n".join(lines) + "\n"


def _image_link(title: str, image: str, run_dir: Path) -> str:
    """Markdown image link, relative to ``run_dir`` so the report moves with the run."""
    path = Path(image)
    if path.is_absolute():
        path = Path(os.path.relpath(path, run_dir))
    target = path.as_posix()
    if any(ch in target for ch in " ()"):
        target = f"<{target}>"  # otherwise Markdown ends the link at the space/paren
    alt = title.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{alt}]({target})"


def render_report(run_dir: Path, summary: Mapping[str, Any], sections: Sequence[ReportSection],
                  title: str = "EditR1 run report") -> str:
    """Return the report Markdown text."""
    parts = [f"# {title}\n", "## Results\n", results_table(summary)]
    for section in sections:
        parts.append(f"## {section.title}\n")
        if section.text:
            parts.append(section.text.rstrip("\n") + "\n")
        if section.image:
            parts.append(_image_link(section.title, section.image, Path(run_dir)) + "\n")
    return "\n".join(parts)


def write_report(run_dir: Path, summary: Mapping[str, Any], sections: Sequence[ReportSection],
                 title: str = "EditR1 run report") -> Path:
    """Write ``run_dir/report.md`` atomically and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / REPORT_FILE
    write_text_atomic(path, render_report(run_dir, summary, sections, title))
    return path
