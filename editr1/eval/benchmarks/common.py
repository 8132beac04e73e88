"""What the benchmark modules share: a sample, a judge request and reply, a parse failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class BenchSample:
    """One benchmark item. `key` names its outputs (unique within a benchmark); `task_type` is the
    benchmark's canonical type name; `intersection` is GEdit's `Intersection_exist` (True for ImgEdit)."""

    benchmark: str
    key: str
    task_type: str
    instruction: str
    language: str = "en"
    intersection: bool = True
    #: A file on disk (ImgEdit), or None when the image lives in a dataset row (GEdit: `row`).
    source_path: Path | None = None
    row: int | None = None


@dataclass(frozen=True)
class JudgeRequest:
    """One question to a judge: the text, then the images in the order the protocol shows them."""

    text: str
    images: tuple[Image.Image, ...] = field(default=(), compare=False)
    #: What the request asks in the protocol's terms ("imgedit", "gedit_sc", "gedit_pq").
    kind: str = ""


@dataclass(frozen=True)
class JudgeReply:
    """The judge's text, or why there is none after the retries (`error`); never a score."""

    text: str | None
    error: str | None = None
    attempts: int = 1
    #: Settings the reply was made with (model, temperature, seed, ...), recorded with every cached reply.
    settings: dict[str, Any] = field(default_factory=dict)


class ReplyParseError(ValueError):
    """A judge reply that does not hold the scores the protocol asks for."""
