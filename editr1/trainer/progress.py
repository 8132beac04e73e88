"""Progress bars for training phases, with a quiet fallback for logs.

On a terminal each task shows a rich bar (description, bar, M/N, elapsed,
remaining). Elsewhere (CI, redirected output, ``enabled=False``) per-step
updates are silent and each finished task prints one line
``description: M/N in X.Xs`` so logs stay readable.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Shared console for one-line messages; it follows sys.stdout at print time.
console = Console()


class TaskHandle:
    """One task: ``advance()`` as work completes, ``done()`` once at the end."""

    def __init__(self, description: str, total: int, progress: Progress | None, quiet: bool = False) -> None:
        self.description = description
        self.total = total
        self.completed = 0
        self.finished = False
        self.quiet = quiet
        self._progress = progress
        self._start = time.perf_counter()
        self._task_id = None
        if progress is not None:  # descriptions are plain text, not rich markup
            self._task_id = progress.add_task(escape(description), total=total)

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more units of work as complete."""
        if self.finished:
            return
        self.completed += n
        if self._progress is not None:
            self._progress.advance(self._task_id, n)

    def restart(self, total: int) -> None:
        """Begin the task again with a new total (a phase that repeats every iteration)."""
        self.total, self.completed, self.finished = total, 0, False
        self._start = time.perf_counter()
        if self._progress is not None:
            self._progress.reset(self._task_id, total=total, completed=0)

    def done(self) -> None:
        """Finish the task (idempotent); in fallback mode print its summary line unless quiet."""
        if self.finished:
            return
        self.finished = True
        elapsed = time.perf_counter() - self._start
        if self._progress is not None:
            self._progress.stop_task(self._task_id)
        elif not self.quiet:
            print(f"{self.description}: {self.completed}/{self.total} in {elapsed:.1f}s",
                  file=sys.stdout, flush=True)


class PhaseProgress:
    """Creates tasks; returned by :func:`phase_progress`."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._tasks: list[TaskHandle] = []

    @property
    def live(self) -> bool:
        """True when bars are drawn; otherwise long loops print a plain line per unit of work."""
        return self._progress is not None

    def task(self, description: str, total: int, quiet: bool = False) -> TaskHandle:
        """Start a task of ``total`` units of work; a quiet one prints nothing in fallback mode."""
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        handle = TaskHandle(description, total, self._progress, quiet)
        self._tasks.append(handle)
        return handle

    def _finish_all(self) -> None:
        # An interrupted phase still reports how far its tasks got.
        for handle in self._tasks:
            handle.done()


def _is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def phase_progress(enabled: bool = True) -> Iterator[PhaseProgress]:
    """Context manager yielding a :class:`PhaseProgress`; live bars only on a terminal."""
    if not (enabled and _is_terminal()):
        phase = PhaseProgress(None)
        try:
            yield phase
        finally:
            phase._finish_all()
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    phase = PhaseProgress(progress)
    with progress:
        try:
            yield phase
        finally:
            phase._finish_all()
