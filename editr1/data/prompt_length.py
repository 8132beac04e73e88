"""Instruction length against the model's text-encoder limit, decided when a dataset loads.

An instruction longer than `data.max_prompt_tokens` (null: the model family's own limit) either
fails the load with its file, line and token count, or, with `data.prompt_overflow: truncate`, is cut
to the limit and counted in one summary line. Training never meets an over-long instruction, so
it never allocates for one.

The model is duck-typed (`PromptTokens`; every `EditModelAdapter` is one): this module does not
import the models. Tokenizing is skipped where the model's cheap bound shows the instruction fits,
which is every instruction of a usual dataset.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal, Protocol

from editr1.data.jsonl import EditSample
from editr1.errors import DataError, EditR1Error

#: What an error in a dataset tells the user to change.
DATA_REMEDY = "data.max_prompt_tokens; set data.prompt_overflow: truncate to cut"


class PromptTokens(Protocol):
    """What the check needs of a model (see `EditModelAdapter` for the meaning of each)."""

    family: str
    max_prompt_tokens: int

    def prompt_token_bound(self, prompt: str) -> int: ...

    def count_prompt_tokens(self, prompt: str) -> int: ...

    def truncate_prompt(self, prompt: str, max_tokens: int) -> str: ...


def prompt_token_limit(model: PromptTokens, max_tokens: int | None) -> int:
    """`data.max_prompt_tokens` resolved: None gives the family's limit; more than it is an error,
    since the released model was never given longer instructions (the pipelines refuse them)."""
    if max_tokens is None:
        return model.max_prompt_tokens
    if max_tokens > model.max_prompt_tokens:
        raise EditR1Error(
            f"data.max_prompt_tokens: {max_tokens} is above the {model.family} limit of "
            f"{model.max_prompt_tokens} text-encoder tokens; lower it or set null"
        )
    return max_tokens


def fit_prompt(
    prompt: str,
    where: str,
    model: PromptTokens,
    max_tokens: int | None = None,
    overflow: Literal["error", "truncate"] = "error",
    remedy: str = DATA_REMEDY,
) -> str:
    """`prompt` if it has at most the limit's tokens; else a DataError starting with `where` and
    ending with `remedy` in parentheses, or (`overflow="truncate"`) its longest prefix that fits."""
    if overflow not in ("error", "truncate"):
        raise EditR1Error(f"data.prompt_overflow: {overflow!r}; expected 'error' or 'truncate'")
    limit = prompt_token_limit(model, max_tokens)
    if model.prompt_token_bound(prompt) <= limit:
        return prompt
    count = model.count_prompt_tokens(prompt)
    if count <= limit:
        return prompt
    if overflow == "error":
        raise DataError(f"{where}: {count} tokens; the limit is {limit} ({remedy})")
    cut = model.truncate_prompt(prompt, limit)
    if not cut.strip():
        raise DataError(f"{where}: {count} tokens, and its first {limit} are blank; nothing is left after cutting")
    return cut


def fit_prompt_lengths(
    samples: list[EditSample],
    source: str | Path,
    model: PromptTokens,
    max_tokens: int | None = None,
    overflow: Literal["error", "truncate"] = "error",
) -> list[EditSample]:
    """`samples` (read from `source`) with every instruction within the limit: a DataError naming
    `source:line` at the first over-long one, or (`overflow="truncate"`) cut copies of those, reported
    in one printed line."""
    fitted, cut_lines = [], []
    for sample in samples:
        prompt = fit_prompt(sample.prompt, f"{source}:{sample.line}: field 'prompt'", model, max_tokens, overflow)
        if prompt != sample.prompt:
            cut_lines.append(sample.line)
            sample = replace(sample, prompt=prompt)
        fitted.append(sample)
    if cut_lines:
        limit = prompt_token_limit(model, max_tokens)
        print(
            f"{source}: {len(cut_lines)} instruction(s) over {limit} tokens cut to fit, the first on line "
            f"{cut_lines[0]} (data.prompt_overflow: truncate)"
        )
    return fitted
