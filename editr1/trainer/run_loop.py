"""The step loop every trainer shares: metrics log, trackers and progress, time budget, evaluation cadence,
checkpoint cadence, the final evaluation and checkpoint. A trainer supplies only its step.

A resumed run continues at `step`: the metrics log is cut back to that step (rows written after the
checkpoint are written again; `editr1.trainer.trackers` says what each tracker does with them), and steps
already evaluated (the final evaluation comes after the last checkpoint) are not evaluated twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from editr1.trainer.metrics_log import METRICS_FILE, MetricsLogger, read_metrics
from editr1.trainer.progress import console, phase_progress
from editr1.trainer.trackers import Trackers

#: The metric whose presence marks an evaluated step in `metrics.jsonl`.
EVALUATED_KEY = "heldout_reward"


@dataclass
class StepResult:
    #: Logged under exactly these names.
    metrics: dict[str, float]
    #: What the step adds to the time-budget clock (every rank must add the same).
    seconds: float


class TrainingLoop:
    """`name` prefixes its messages ("nft", "sft"); `unit` names a step in them ("iterations", "steps").
    `eval_every` 0 evaluates only at the end; `checkpoint_every` 0 never checkpoints; `is_main`: only
    the main process logs, shows progress and prints. `trackers` get every row of the metrics log (the loop
    starts them; the trainer ends them, after its final images)."""

    def __init__(self, run_dir: Path, name: str, unit: str, total: int, *, time_budget_s: float, eval_every: int,
                 checkpoint_every: int, progress: bool, trackers: Trackers, is_main: bool = True,
                 evaluated_key: str = EVALUATED_KEY):
        self.run_dir, self.name, self.unit, self.total = Path(run_dir), name, unit, total
        self.time_budget_s, self.eval_every, self.checkpoint_every = time_budget_s, eval_every, checkpoint_every
        self.show_progress, self.trackers, self.is_main = progress, trackers, is_main
        self.evaluated_key = evaluated_key
        #: Where the run stands: steps taken and seconds on the time-budget clock (a checkpoint saves both).
        self.step, self.seconds = 0, 0.0
        #: Steps already evaluated (not evaluated again).
        self.evaluated: set[int] = set()
        self.progress = None

    def resume_at(self, step: int, seconds: float) -> None:
        """Continue at `step`. Every rank reads the evaluated steps here, before any rank writes the log, and
        only rows up to `step` count (rows after it are cut and taken again): so every rank takes the same
        evaluate-or-not decisions, which sharded models need (an evaluation runs on every rank)."""
        self.step, self.seconds = step, seconds
        log = self.run_dir / METRICS_FILE
        rows = read_metrics(log) if log.is_file() else []
        self.evaluated = {row["step"] for row in rows if self.evaluated_key in row and row["step"] <= step}

    def run(
        self,
        take_step: Callable[[int], StepResult],
        *,
        evaluate: Callable[[int], dict[str, float]] | None = None,
        evaluate_at_start: bool = False,
        evaluate_at_end: bool = True,
        save_checkpoint: Callable[[], None] | None = None,
        line: Callable[[int, int, dict[str, float]], str] | None = None,
        plain_every: int = 1,
    ) -> int:
        """Run to `total` steps or the time budget; returns the step reached. `evaluate(step)` returns
        metrics logged at that step; `line(step, total, metrics)` is the plain line printed per step
        (every `plain_every`) when there is no live progress bar; `save_checkpoint()` runs on every rank,
        after every `checkpoint_every` steps and once at the end."""
        logger = MetricsLogger(self.run_dir) if self.is_main else nullcontext()
        with logger as log, phase_progress(self.show_progress and self.is_main) as progress:
            self.progress = progress
            evaluated = self.evaluated
            if log is not None:
                self.trackers.start(self.step)  # first: it reads the rows after `step` that are taken again
                log.truncate_after(self.step)

            def record(metrics: dict[str, float]) -> None:
                log.log(self.step, metrics)
                self.trackers.log(self.step, metrics)

            def evaluate_now() -> None:
                metrics = evaluate(self.step)
                if log is not None:
                    record(metrics)
                evaluated.add(self.step)

            if evaluate is not None and evaluate_at_start and 0 not in evaluated:
                evaluate_now()
            task = progress.task(f"{self.name} {self.unit}", self.total, quiet=not self.is_main)
            task.advance(self.step)
            while self.step < self.total:
                if self.time_budget_s and self.seconds >= self.time_budget_s:
                    if self.is_main:
                        console.print(f"{self.name}: time budget of {self.time_budget_s:.0f}s reached after "
                                      f"{self.step} {self.unit}")
                    break
                result = take_step(self.step)
                self.step += 1
                self.seconds += result.seconds
                if log is not None:
                    record(result.metrics)
                    if line is not None and not progress.live and (
                            self.step == 1 or self.step % plain_every == 0 or self.step == self.total):
                        console.print(line(self.step, self.total, result.metrics), soft_wrap=True)
                task.advance()
                if evaluate is not None and self.eval_every and self.step % self.eval_every == 0:
                    evaluate_now()
                if save_checkpoint is not None and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    save_checkpoint()
            task.done()
            if evaluate is not None and evaluate_at_end and self.step not in evaluated:
                evaluate_now()
        self.progress = None
        if save_checkpoint is not None:
            save_checkpoint()
        return self.step


def timed(step: Callable[[int], dict[str, float]]) -> Callable[[int], StepResult]:
    """A step whose time-budget seconds are its own wall time."""

    def run(index: int) -> StepResult:
        tick = time.monotonic()
        metrics = step(index)
        return StepResult(metrics, time.monotonic() - tick)

    return run
