"""The judge's prompt: one user turn of [source image, edited image, text] (ALGORITHM.md).

The text comes from a template with named placeholders: `{instruction}`, `{requirement}` (the
per-sample requirement line, empty when there is none) and `{max_score}`. Users replace the default
with a template file; an unknown or missing placeholder is an error that names the file.
"""

from __future__ import annotations

import string
from pathlib import Path

from editr1.errors import EditR1Error

DEFAULT_TEMPLATE = (
    "The first image is the source image and the second image is the edited result. "
    "The editing instruction was: {instruction}\n"
    "{requirement}"
    "Rate from 0 to {max_score} how well the edit follows the instruction and the requirements, "
    "with high visual quality. 0 means the wrong object was edited or the requirements fail completely; "
    "{max_score} means the edit is correct, compliant and of high quality. "
    "Answer with the number only."
)
PLACEHOLDERS = frozenset({"instruction", "requirement", "max_score"})
REQUIRED = frozenset({"instruction"})


class JudgePrompt:
    def __init__(self, template: str = DEFAULT_TEMPLATE, max_score: int = 5, origin: str = "the judge template"):
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise EditR1Error(f"{origin}: unknown placeholder(s) {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}")
        if not REQUIRED <= fields:
            raise EditR1Error(f"{origin}: the template must contain {{instruction}}")
        self.template, self.max_score = template, max_score

    @classmethod
    def from_file(cls, path: str | Path, max_score: int = 5) -> "JudgePrompt":
        path = Path(path)
        if not path.is_file():
            raise EditR1Error(f"{path}: judge template file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise EditR1Error(f"{path}: judge template is not UTF-8 text ({error})") from error
        try:
            return cls(text, max_score, origin=str(path))
        except ValueError as error:  # unbalanced braces
            raise EditR1Error(f"{path}: invalid template: {error}") from error

    def text(self, instruction: str, requirement: str | None = None) -> str:
        line = f"Requirements: {requirement}\n" if requirement else ""
        return self.template.format(instruction=instruction, requirement=line, max_score=self.max_score)

    def messages(self, instruction: str, requirement: str | None = None, image_parts: tuple[dict, dict] | None = None) -> list[dict]:
        """One chat turn. `image_parts` are the two image content parts (source, edited); the
        in-process judge passes `{"type": "image"}` placeholders, the HTTP client data URLs."""
        source, edited = image_parts or ({"type": "image"}, {"type": "image"})
        return [{"role": "user", "content": [source, edited, {"type": "text", "text": self.text(instruction, requirement)}]}]
