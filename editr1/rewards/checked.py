"""A reward as editr1's trainers and evaluations call it: every answer checked against the contract
(`editr1.rewards.base.contract_breach`), every failure one `EditR1Error` naming the reward, the samples and
their data file. A crash's traceback, which one line cannot hold, is appended to a log file the error names."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from editr1.data.jsonl import EditSample
from editr1.errors import EditR1Error
from editr1.rewards.base import CONTRACT, Reward, RewardBatch, contract_breach

#: The most samples an error names; the rest are counted.
MAX_NAMED_SAMPLES = 5


class CheckedReward:
    """`reward`, named as its config names it (by default its class's dotted path, as a plugin's config
    would); a crash's traceback is appended to `error_log` (None: it is only the error's cause)."""

    def __init__(self, reward: Reward, name: str | None = None, error_log: Path | None = None):
        self.reward = reward
        self.name = name or f"{type(reward).__module__}:{type(reward).__qualname__}"
        self.error_log = error_log

    def score(self, sources: list[list[torch.Tensor]], edited: list[torch.Tensor], samples: Sequence[EditSample],
              data_file: str | Path) -> RewardBatch:
        """`Reward.score` of the edits of `samples` (read from `data_file`; one per edit, so repeats for
        several edits of a sample), with their prompts and requirements. Raises EditR1Error when the reward
        fails or its answer breaks the contract."""
        try:
            batch = self.reward.score(sources, edited, [s.prompt for s in samples], [s.requirement for s in samples])
        except EditR1Error:
            raise  # the reward's own one-line error (a judge that is down) says what is wrong already
        except Exception as error:
            where = samples_named(samples, range(len(samples)), data_file)
            raise EditR1Error(f"reward {self.name!r} failed on {where}: {one_line(error)}"
                              f"{self._log_traceback(where, error)}") from error
        breach = contract_breach(batch, len(samples))
        if breach is not None:
            problem, at_fault = breach
            raise EditR1Error(f"reward {self.name!r} broke the reward contract on "
                              f"{samples_named(samples, at_fault, data_file)}: {problem}; {CONTRACT}")
        return batch

    def _log_traceback(self, where: str, error: Exception) -> str:
        """Append `error`'s traceback to the error log; returns what the one-line error says about it."""
        if self.error_log is None:
            return ""
        record = (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: reward {self.name!r} failed on {where}\n"
                  + "".join(traceback.format_exception(error)) + "\n")
        try:
            self.error_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.error_log, "a", encoding="utf-8") as log:
                log.write(record)
        except OSError as log_error:
            return f" (its traceback could not be written to {self.error_log}: {log_error.strerror or log_error})"
        return f" (traceback in {self.error_log})"


def samples_named(samples: Sequence[EditSample], positions: Iterable[int], data_file: str | Path) -> str:
    """'samples a (line 1), b (line 2) of FILE': the samples at `positions`, each once, the first
    MAX_NAMED_SAMPLES of them by name."""
    named = list(dict.fromkeys(f"{samples[i].id} (line {samples[i].line})" for i in positions))
    shown = ", ".join(named[:MAX_NAMED_SAMPLES])
    if len(named) > MAX_NAMED_SAMPLES:
        shown += f" and {len(named) - MAX_NAMED_SAMPLES} more"
    return f"sample{'s' if len(named) > 1 else ''} {shown} of {data_file}"


def one_line(error: Exception) -> str:
    """`Type: message`, the message's lines and spaces run together."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
