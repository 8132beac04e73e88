"""Evaluation-only rewards (`eval.rewards`) and the hacking alarm that watches them during training.

At every held-out evaluation each evaluation-only reward scores the same edits as the held-out reward. Its gain
against step 0 is paired sample by sample, like the held-out reward's. Between two evaluations, the training
reward's change on the held-out set and each evaluation-only reward's change feed the alarm
(`editr1.eval.hacking`). While it holds, a warning is printed and `hacking.png` shows the held-out samples whose
evaluation-only reward fell most since step 0. Everything it decides is in `metrics.jsonl`, so a resumed run
continues each streak where it stood.
"""

from __future__ import annotations

from pathlib import Path

import torch

from editr1.config import NamedRewardConfig
from editr1.data.batching import source_tensors
from editr1.eval.hacking import fallen_most, is_signal, next_streak
from editr1.eval.heldout import EvalResult, HeldoutSet, paired_gain, score_heldout
from editr1.eval.report import ReportSection
from editr1.eval.visuals import image_grid
from editr1.rewards.checked import CheckedReward
from editr1.rewards.combined import unique_labels
from editr1.rewards.registry import build_reward
from editr1.trainer.progress import console

#: The alarm's picture in the run folder.
HACKING_GRID = "hacking.png"
#: Samples the picture shows.
GRID_ROWS = 8


def metric(label: str, what: str = "") -> str:
    """An evaluation-only reward's metric: `eval_<label>`, `eval_<label>_gain`, ..."""
    return f"eval_{label}{'_' + what if what else ''}"


class HackingWatch:
    """The evaluation-only rewards of `specs` (built and asked whether they are ready), and the alarm after
    `patience` signals in a row (0: no alarm). `training_is_heldout`: the held-out reward is the training reward
    (else an evaluation's `training_scores` are the training reward's)."""

    def __init__(self, specs: list[NamedRewardConfig], patience: int, error_log: Path | None, training_is_heldout: bool):
        self.rewards: dict[str, CheckedReward] = {}
        for i, (spec, label) in enumerate(zip(specs, unique_labels(specs))):
            reward = build_reward(spec.name, spec.options, f"eval.rewards[{i}]")
            reward.check_ready()
            self.rewards[label] = CheckedReward(reward, spec.name, error_log)
        self.patience = patience
        self.training_is_heldout = training_is_heldout

    def __bool__(self) -> bool:
        return bool(self.rewards)

    @property
    def curve_keys(self) -> tuple[str, ...]:
        return tuple(metric(label) for label in self.rewards)

    def score(self, heldout: HeldoutSet, result: EvalResult, batch_size: int) -> dict[str, float]:
        """Score `result`'s edits with every evaluation-only reward, into `result.independent`."""
        metrics = {}
        for label, reward in self.rewards.items():
            scored = score_heldout(heldout, reward, result.edited, batch_size)
            result.independent[label] = (scored.scores, scored.valid)
            metrics[metric(label)] = scored.mean
        return metrics

    def compare(self, step: int, result: EvalResult, base: EvalResult, previous: tuple[dict, EvalResult] | None,
                heldout: HeldoutSet, run_dir: Path) -> dict[str, float]:
        """Gains against step 0 (`base`), changes since the previous evaluation (its metrics row and result) and
        the alarm's streaks; prints the alarm and draws `hacking.png` while it holds."""
        metrics = {}
        for label, (scores, valid) in result.independent.items():
            gain, stderr, _ = paired_gain(scores, valid, *base.independent[label])
            metrics[metric(label, "gain")] = gain
            if stderr is not None:
                metrics[metric(label, "gain_stderr")] = stderr
        if previous is None or not self.patience:
            return metrics
        previous_row, previous_result = previous
        change, change_stderr, _ = paired_gain(*self.training(result), *self.training(previous_result))
        metrics["heldout_training_change"] = change
        if change_stderr is not None:
            metrics["heldout_training_change_stderr"] = change_stderr
        alarmed = []
        for label, (scores, valid) in result.independent.items():
            own, own_stderr, _ = paired_gain(scores, valid, *previous_result.independent[label])
            metrics[metric(label, "change")] = own
            if own_stderr is not None:
                metrics[metric(label, "change_stderr")] = own_stderr
            signal = is_signal(change, change_stderr, own, own_stderr)
            streak = next_streak(int(previous_row.get(metric(label, "hacking_streak"), 0)), signal)
            metrics[metric(label, "hacking_streak")] = streak
            if streak >= self.patience:
                alarmed.append(label)
        if alarmed:
            metrics["hacking_alarm"] = 1.0
            console.print(f"warning: possible reward hacking at step {step}: the training reward rose on the held-out "
                          f"set (by {change:+.4f}) while {', '.join(alarmed)} fell, each beyond its standard error, "
                          f"{self.patience} evaluations in a row; see {run_dir / HACKING_GRID}", soft_wrap=True)
            self._grid(alarmed[0], result, base, heldout).save(run_dir / HACKING_GRID)
        return metrics

    def _grid(self, label: str, result: EvalResult, base: EvalResult, heldout: HeldoutSet):
        """The held-out samples whose `label` score fell most since step 0: their sources and edit now."""
        scores, valid = result.independent[label]
        base_scores, base_valid = base.independent[label]
        training, base_training = self.training(result)[0], self.training(base)[0]
        rows, captions, titles = [], [], []
        for i in fallen_most(base_scores, base_valid, scores, valid, GRID_ROWS) or [0]:
            sample = heldout.samples[i]
            sources = source_tensors(sample, heldout.resolution)
            rows.append([*sources, result.edited[i]])
            captions.append([*(["source"] if len(sources) == 1 else [f"picture {k + 1}" for k in range(len(sources))]),
                             "edit now"])
            titles.append(f"{sample.prompt}: {label} {float(base_scores[i]):.2f} -> {float(scores[i]):.2f}, training "
                          f"reward {float(base_training[i]):.2f} -> {float(training[i]):.2f}")
        return image_grid(rows, captions, row_titles=titles)

    def summary(self, base: EvalResult, final: EvalResult, rows: list[dict]) -> dict:
        """Each reward's base, final and paired gain, and whether (and at which steps) the alarm held."""
        rewards = {}
        for label in self.rewards:
            gain, stderr, both = paired_gain(*final.independent[label], *base.independent[label])
            rewards[label] = {"base": float(base.independent[label][0][both].mean()),
                              "final": float(final.independent[label][0][both].mean()),
                              "gain": gain, "stderr": stderr, "n": int(both.sum())}
        alarm_steps = [row["step"] for row in rows if row.get("hacking_alarm")]
        return {"eval_rewards": rewards,
                "hacking_alarm": {"fired": bool(alarm_steps), "steps": alarm_steps, "patience": self.patience}}

    def training(self, result: EvalResult) -> tuple[torch.Tensor, torch.Tensor]:
        """The training reward's scores and validity of an evaluation's edits."""
        if self.training_is_heldout:
            return result.scores, result.valid
        return result.training_scores, result.training_valid

    def report_section(self, summary: dict) -> ReportSection:
        alarm = summary["hacking_alarm"]
        gains = "; ".join(f"{label} {values['base']:.3f} -> {values['final']:.3f} ({values['gain']:+.3f}"
                          + (f" ± {values['stderr']:.3f})" if values["stderr"] is not None else ")")
                          for label, values in summary["eval_rewards"].items())
        if not alarm["fired"]:
            text = (f"Evaluation-only rewards, base -> final (paired gain ± SE): {gains}. The hacking alarm did not fire "
                    + ("(it is off: eval.hacking_patience is 0)." if not self.patience else
                       f"(it needs {self.patience} evaluations in a row in which the training reward rose on the held-out "
                       "set while an evaluation-only reward fell, each beyond its standard error)."))
            return ReportSection("Reward hacking alarm", text)
        text = (f"**The alarm fired** at step(s) {', '.join(map(str, alarm['steps']))}: the training reward rose on the "
                f"held-out set while an evaluation-only reward fell, each beyond its standard error, {self.patience} "
                f"evaluations in a row. Evaluation-only rewards, base -> final: {gains}. The grid shows, at the last "
                "alarm, the held-out samples whose evaluation-only reward fell most since step 0.")
        return ReportSection("Reward hacking alarm", text, HACKING_GRID)

