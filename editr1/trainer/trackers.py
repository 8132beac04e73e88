"""Experiment trackers (`logging.trackers`): accelerate's tracker classes, fed on the main process.

`metrics.jsonl` stays the run's record: each tracker gets every row of it at the same step, the run's config
(dotted fields, secrets hidden) and the images the trainer draws (the RL trainer's group grids as it draws
them, the figures of a run's end at its last step).

`trackers.json` in the run folder names each tracker's run (wandb's run id, mlflow's run id, trackio's run
name) and the trackers of the run's last attempt, so that `--resume` continues the same tracker runs. A resumed
run takes the steps after its checkpoint again; each tracker still ends with each step once:
- tensorboard: the events after the checkpoint are purged (`purge_step`) and written again.
- wandb keeps the steps it holds, those below `run.step` (online: the server's count), and would drop them if
  sent again, so they are not; the rows of metrics.jsonl above them up to the checkpoint (those a killed process
  lost before wandb wrote them) are sent at the start. Offline, wandb can tell of no step: each attempt writes
  an offline run of the same id, and the last one gets every row, so it holds the whole history.
- mlflow and trackio keep the rows the killed attempt sent after the checkpoint (its rows of metrics.jsonl);
  the re-run's rows are not sent again. trackio writes from a background thread: the rows of the last moment
  before a kill may be missing there.
Rows kept from a killed attempt are the re-run's but for their `seconds_*` timings (a resumed run is the same
run). A tracker that was not in the last attempt (added on resume) starts a new tracker run (wandb continues
its own) and gets every row up to the checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import secrets
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from editr1.config import LoggingConfig
from editr1.errors import EditR1Error
from editr1.fileio import write_text_atomic
from editr1.trainer.metrics_log import METRICS_FILE, read_metrics
from editr1.trainer.run_folder import recorded_fields

TENSORBOARD_DIR, WANDB_DIR, TRACKERS_FILE = "tensorboard", "wandb", "trackers.json"
#: What trackers write in a run folder (wandb its `wandb/`; mlflow and trackio write to their own stores).
TRACKER_OUTPUTS = (TENSORBOARD_DIR, WANDB_DIR, TRACKERS_FILE)
#: The module each tracker needs, and how to install it.
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install 'editr1[wandb]'"),
    "trackio": ("trackio", "pip install 'editr1[trackio]'"),
    "mlflow": ("mlflow", "pip install 'editr1[mlflow]'"),
}
_NO_ROWS: frozenset = frozenset()


def check_installed(names: Iterable[str]) -> None:
    """A one-line error naming how to install the first tracker whose package is missing (called before a run
    writes anything)."""
    for name in names:
        module, install = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise EditR1Error(f"logging.trackers: {name} is not installed; {install}")


def tracked_config(config: Any) -> dict[str, bool | int | float | str | None]:
    """The config as trackers record it: dotted fields, secrets hidden; a list as its JSON text (tensorboard's
    hparams and mlflow's params take single values)."""
    return {key: json.dumps(value) if isinstance(value, list) else value
            for key, value in recorded_fields(config).items()}


class Trackers:
    """The run's trackers; inert off the main process and with `logging.trackers: []`. `config`: the run's
    config; `final_images`: files the trainer draws in the run folder at its end, sent at the last step when
    the run succeeds. Use it as a context: leaving it ends the tracker runs (failed when an exception leaves
    it), as a launched process's `job.leave()` (`os._exit`) would not."""

    def __init__(self, run_dir: str | Path, logging: LoggingConfig, config: Any, *, main: bool = True,
                 final_images: tuple[str, ...] = ()):
        self.run_dir = Path(run_dir)
        self.names = tuple(logging.trackers) if main else ()
        self.project, self.config, self.final_images = logging.project, config, final_images
        self._trackers: dict[str, Any] = {}
        #: Per tracker, what it holds from an earlier attempt and is not sent again: every step below the first
        #: number, and the rows (step, metric names) of the second.
        self._held: dict[str, tuple[int, frozenset[tuple[int, frozenset[str]]]]] = {}
        #: The last step logged (or the one the run continued from): the final images go there.
        self._last = 0

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.finish(failed=kind is not None)

    def start(self, step: int) -> None:
        """Begin or continue each tracker's run where the run continues (`step`: 0, or its checkpoint's). Call
        it before metrics.jsonl is cut back to `step`: the rows after it are what the last attempt sent."""
        if not self.names or self._trackers:
            return
        path = self.run_dir / TRACKERS_FILE
        state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if state.get("project") != self.project:  # new, or moved to another project: new tracker runs
            state = {"project": self.project, "trackers": []}
        metrics = self.run_dir / METRICS_FILE
        rows = read_metrics(metrics) if metrics.is_file() else []
        taken_again = frozenset((row["step"], frozenset(_values(row))) for row in rows if row["step"] > step)
        continuing = {name for name in self.names if name in state["trackers"]}
        # New runs' identities; wandb continues its run even after a gap (it knows which steps it holds).
        for name in (name for name in self.names if name not in continuing):
            if name == "wandb" and "wandb" not in state:
                state[name] = {"id": _new_id()}
            elif name == "trackio":  # trackio continues a run by its name: one of this folder's own
                state[name] = {"name": f"{self.run_dir.name}-{_new_id()}"}
            elif name == "mlflow":  # its run id, known once the run exists
                state[name] = {}
        self._save(state)  # each identity before its tracker run exists: an attempt killed now is continued
        replay_from = {}
        for name in self.names:
            tracker = self._build(name, state.get(name, {}), step, continuing)
            try:
                tracker.start()
                # Once per tracker run (mlflow refuses a param's second value, tensorboard would add a session),
                # but wandb's and trackio's every time: a killed process may have lost it, and each offline wandb
                # attempt is then a whole run.
                if name in ("wandb", "trackio") or name not in continuing:
                    tracker.store_init_configuration(tracked_config(self.config))
            except Exception as error:
                raise EditR1Error(f"logging.trackers: {name} could not start: {error}") from error
            self._trackers[name] = tracker
            if name == "mlflow":
                state["mlflow"]["run_id"] = tracker.active_run.info.run_id
            if name == "wandb":
                replay_from[name] = tracker.tracker.step  # the step its next row takes
                self._held[name] = (replay_from[name], _NO_ROWS)
            else:
                replay_from[name] = step + 1 if name in continuing else 0
                self._held[name] = (0, taken_again if name in continuing and name != "tensorboard" else _NO_ROWS)
        # Rows the checkpoint keeps that a tracker lacks.
        for row in rows:
            if row["step"] <= step:
                for name, first in replay_from.items():
                    if row["step"] >= first:
                        self._trackers[name].log(_values(row), step=row["step"])
        self._last = step
        self._save({**state, "trackers": list(self.names)})

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """One row of metrics.jsonl, at its step."""
        if not self.names:
            return
        self._last = step
        row = {key: float(value) for key, value in metrics.items()}  # trackers pass over numpy scalars
        for name, tracker in self._started().items():
            below, rows = self._held[name]
            if step >= below and (step, frozenset(row)) not in rows:
                tracker.log(row, step=step)

    def log_images(self, step: int, images: Mapping[str, Path]) -> None:
        """PNG files of the run folder, each under its name (e.g. "grids/group0"), at `step`."""
        if not self.names:
            return
        self._last = step
        for name, tracker in self._started().items():
            below, rows = self._held[name]
            if step >= below and all(step != held for held, _ in rows):
                self._send_images(name, tracker, step, {key: Path(path) for key, path in images.items()})

    def finish(self, failed: bool = False) -> None:
        """Send the final images (unless `failed`), then end each tracker's run."""
        if not self._trackers:
            return
        if not failed:
            images = {Path(name).stem: self.run_dir / name for name in self.final_images
                      if (self.run_dir / name).is_file()}
            if images:
                self.log_images(self._last, images)
        trackers, self._trackers = self._trackers, {}
        for name, tracker in trackers.items():
            if failed and name == "wandb":
                tracker.tracker.finish(exit_code=1)
            elif failed and name == "mlflow":
                import mlflow

                mlflow.end_run(status="FAILED")
            else:
                tracker.finish()

    # ---- internals ----------------------------------------------------------------------------------------
    def _build(self, name: str, entry: dict, step: int, continuing: set[str]) -> Any:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            # Events after the checkpoint are hidden: the loop writes those steps again. New to the run: all of
            # them (an earlier attempt's may have a gap); the rows up to the checkpoint are sent again.
            return cls("", self.run_dir / TENSORBOARD_DIR, purge_step=step + 1 if name in continuing else 0)
        if name == "wandb":
            return cls(self.project, id=entry["id"], resume="allow", dir=str(self.run_dir), name=self.run_dir.name)
        if name == "trackio":
            return cls(self.project, name=entry["name"], resume="allow")
        return cls(self.project, run_id=entry.get("run_id"), run_name=self.run_dir.name)

    def _started(self) -> dict[str, Any]:
        if not self._trackers:
            raise RuntimeError("Trackers.start was not called, or finish was")
        return self._trackers

    def _send_images(self, name: str, tracker: Any, step: int, images: dict[str, Path]) -> None:
        if name == "tensorboard":
            tracker.log_images({key: np.asarray(_rgb(path))[None] for key, path in images.items()}, step=step,
                               dataformats="NHWC")
            tracker.tracker.flush()  # its `log` flushes, `log_images` does not
        elif name == "wandb":
            tracker.log_images({key: [_rgb(path)] for key, path in images.items()}, step=step)
        elif name == "trackio":
            import trackio

            tracker.log({key: trackio.Image(str(path)) for key, path in images.items()}, step=step)
        else:  # mlflow keeps files, not images per step: under their folder in the run folder
            for path in images.values():
                folder = path.relative_to(self.run_dir).parent
                tracker.log_artifact(str(path), None if folder == Path(".") else folder.as_posix())

    def _save(self, state: dict) -> None:
        write_text_atomic(self.run_dir / TRACKERS_FILE, json.dumps(state, indent=2))


def _values(row: dict) -> dict[str, float]:
    """A row of metrics.jsonl as logged: its metrics, a non-finite one (null in the file) as NaN."""
    return {key: math.nan if value is None else value for key, value in row.items() if key not in ("step", "nonfinite")}


def _new_id() -> str:
    """Eight random base-36 digits, as wandb's run ids."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
