"""The judge's prompt: one user turn of [reference image(s), edited image, text] (docs/algorithm.md).

The text comes from a template with named placeholders: `{instruction}`, `{requirement}` (the
per-sample requirement line, empty when there is none), `{max_score}`, and for samples with several
reference images (Qwen-Image-Edit-2509 takes 1-3): `{images}`, a sentence saying which pictures are
the references and which is the edited result, and `{num_references}`, their count. Users replace
the default with a template file; an unknown or missing placeholder is an error that names the file.
A template with neither `{images}` nor `{num_references}` describes a fixed two-image layout: it
works for one reference, and a sample with several is an error (the judge could not tell the edit
from the references).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from editr1.errors import EditR1Error

#: What `{images}` says for one reference: the wording the shipped judge was distilled on.
ONE_REFERENCE = "The first image is the source image and the second image is the edited result."
DEFAULT_TEMPLATE = (
    "{images} "
    "The editing instruction was: {instruction}\n"
    "{requirement}"
    "Rate from 0 to {max_score} how well the edit follows the instruction and the requirements, "
    "with high visual quality. 0 means the wrong object was edited or the requirements fail completely; "
    "{max_score} means the edit is correct, compliant and of high quality. "
    "Answer with the number only."
)
#: The yes/no readout's question (`reward.options.readout: yes_no`).
YES_NO_TEMPLATE = (
    "{images} "
    "The editing instruction was: {instruction}\n"
    "{requirement}"
    "Is this a good edit: does it carry out the instruction and the requirements, leave everything else as it "
    "was, and look natural? Answer Yes or No."
)
PLACEHOLDERS = frozenset({"instruction", "requirement", "max_score", "images", "num_references"})
REQUIRED = frozenset({"instruction"})
LAYOUT_PLACEHOLDERS = frozenset({"images", "num_references"})


def describe_images(num_references: int) -> str:
    """The `{images}` sentence. Several references are named "Picture 1", "Picture 2", ... as
    Qwen-Image-Edit-2509 instructions refer to them; the edited result always comes last."""
    if num_references < 1:
        raise ValueError(f"a sample needs at least one reference image, got {num_references}")
    if num_references == 1:
        return ONE_REFERENCE
    names = [f"Picture {k}" for k in range(1, num_references + 1)]
    return (f"The first {num_references} images are the reference images {', '.join(names[:-1])} and {names[-1]}, "
            f"in that order, and the last image is the edited result.")


class JudgePrompt:
    def __init__(self, template: str = DEFAULT_TEMPLATE, max_score: int = 5, origin: str = "the judge template"):
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise EditR1Error(f"{origin}: unknown placeholder(s) {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}")
        if not REQUIRED <= fields:
            raise EditR1Error(f"{origin}: the template must contain {{instruction}}")
        self.template, self.max_score, self.origin = template, max_score, origin
        self.describes_layout = bool(fields & LAYOUT_PLACEHOLDERS)

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

    def check_layout(self, num_references: int) -> None:
        """EditR1Error if this template cannot describe a sample with `num_references` references."""
        if num_references > 1 and not self.describes_layout:
            raise EditR1Error(
                f"{self.origin}: a sample has {num_references} reference images, but the template has neither "
                f"{{images}} nor {{num_references}}, so the judge cannot tell the references from the edit; "
                f"add {{images}} (a sentence saying which image is which)"
            )

    def text(self, instruction: str, requirement: str | None = None, num_references: int = 1) -> str:
        images = describe_images(num_references)
        self.check_layout(num_references)
        line = f"Requirements: {requirement}\n" if requirement else ""
        return self.template.format(instruction=instruction, requirement=line, max_score=self.max_score,
                                    images=images, num_references=num_references)

    def messages(self, instruction: str, requirement: str | None = None, image_parts: Sequence[dict] | None = None,
                 num_references: int = 1) -> list[dict]:
        """One chat turn: the reference images in order, the edited image, then the text. `image_parts`
        are those num_references + 1 content parts; the in-process judge leaves them out and gets
        `{"type": "image"}` placeholders, the HTTP client passes data URLs."""
        parts = list(image_parts) if image_parts is not None else [{"type": "image"} for _ in range(num_references + 1)]
        if len(parts) != num_references + 1:
            raise ValueError(f"{len(parts)} image parts for {num_references} reference image(s) and one edit")
        text = self.text(instruction, requirement, num_references)
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]
