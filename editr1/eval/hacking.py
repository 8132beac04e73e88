"""The reward-hacking alarm: the training reward rises on the held-out set while an independent reward falls.

Between two evaluations, each reward's change is the paired mean difference over the held-out samples both
scored, with its paired standard error. An evaluation is a *signal* for an evaluation-only reward when the
training reward rose by more than its standard error and that reward fell by more than its own. The alarm
holds once `patience` evaluations in a row were signals. A change whose standard error is unknown (fewer
than two samples scored in both) is no signal. docs/rewards.md, "The hacking alarm".
"""

from __future__ import annotations

import torch


def is_signal(training_change: float, training_stderr: float | None, independent_change: float,
              independent_stderr: float | None) -> bool:
    """Whether the training reward rose and the independent reward fell, each beyond its standard error."""
    if training_stderr is None or independent_stderr is None:
        return False
    return training_change > training_stderr and independent_change < -independent_stderr


def next_streak(previous: int, signal: bool) -> int:
    """Evaluations in a row that were signals, this one included."""
    return previous + 1 if signal else 0


def fallen_most(before: torch.Tensor, before_valid: torch.Tensor, after: torch.Tensor, after_valid: torch.Tensor,
                count: int) -> list[int]:
    """The indices of the (at most `count`) samples scored both times whose score fell most, largest fall first
    (ties by index); only samples whose score fell."""
    both = (before_valid & after_valid).nonzero().flatten()
    fall = (before[both].double() - after[both].double())
    order = sorted(range(both.numel()), key=lambda i: (-float(fall[i]), int(both[i])))
    return [int(both[i]) for i in order if float(fall[i]) > 0][:count]
