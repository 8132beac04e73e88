"""A run's folder: one run per folder, resumable from any moment, with a record of its config.

`prepare` only reads: it refuses a folder that already holds another run, finds the checkpoint to
resume from, and checks that a resumed run keeps every field that changes what is learned. `start`
writes, and is called once every input has been validated, so a rejected input leaves nothing behind.

One job at a time: the job's main process locks the folder (`run_lock`) before `prepare` reads it, so a
second job (a requeued one while the first still runs) is refused before it decides anything.

`--resume` means "continue this run": from the newest intact checkpoint, or, when the run stopped
before its first checkpoint, from the beginning (the unfinished attempt's logs are discarded).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from editr1.config import ConfigError, config_to_dict, load_config, save_config
from editr1.errors import EditR1Error
from editr1.fileio import fix_modes, refuse_foreign_entries, write_text_atomic
from editr1.models.registry import family_name, is_tiny_preset
from editr1.rewards.registry import resume_safe_options
from editr1.trainer.checkpoint import (
    LATEST,
    Checkpoint,
    checkpoint_folders,
    newest_intact_checkpoint,
    remove_staging,
)
from editr1.trainer.progress import console
from editr1.trainer.run_lock import hold_folder, release_folder

CONFIG_FILE = "config.yaml"
#: `model.json` says how to rebuild the run's base model (`editr1 edit --run`); a tiny preset, built
#: in memory from the training prompts, is saved in `base_model/`.
MODEL_RECORD, BASE_MODEL_FOLDER = "model.json", "base_model"
MODEL_RECORD_FIELDS = ("base", "family", "dtype", "condition_area", "train_mode", "final")
CHANGES_FILE = "config_changes.jsonl"
#: The tracebacks of a reward's crashes, which its one-line error names (`editr1.rewards.checked`).
REWARD_ERRORS = "reward_errors.log"
CHECKPOINTS = "checkpoints"
#: Values of these options are not printed or recorded when they change.
SECRET_OPTIONS = ("api_key", "token", "password")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):  # an empty mapping has no fields: adding one is that field's change
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):  # e.g. reward.terms
        return _flatten({str(i): item for i, item in enumerate(value)}, prefix)
    return {prefix[:-1]: value}


def _secret(field: str, value: Any) -> bool:
    return value is not None and field.rsplit(".", 1)[-1] in SECRET_OPTIONS


def _recorded(field: str, value: Any) -> Any:
    return "(hidden)" if _secret(field, value) else value


def _shown(field: str, value: Any) -> str:
    return "(hidden)" if _secret(field, value) else repr(value)


def recorded_fields(config: Any) -> dict[str, Any]:
    """The config as dotted fields (`rollout.group_size`) and values, secret options hidden: what an experiment
    tracker records of a run."""
    return {key: _recorded(key, value) for key, value in _flatten(config_to_dict(config)).items()}


def resume_safe_reward_fields(section: str, reward: Any, where: str | None = None) -> tuple[str, ...]:
    """The options of the reward at `section` (e.g. "reward", or "eval.rewards.0" as `_flatten` names a list's
    item) that it declares safe to change on resume (its `resume_safe_options`): an endpoint, retries, a batch
    size. `where`: the reward's place as errors name it (default `section`)."""
    if reward is None:
        return ()
    fields = []
    for i, term in enumerate(reward.term_list()):
        prefix = f"{section}.terms.{i}" if reward.terms else section  # how `_flatten` names a list's items
        options = resume_safe_options(term.name, reward.term_section(where or section, i))
        fields += [f"{prefix}.options.{option}" for option in sorted(options)]
    return tuple(fields)


def _under(field: str, names: tuple[str, ...]) -> bool:
    return any(field == name or field.startswith(name + ".") for name in names)


def config_changes(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (old value, new value), for every field that differs."""
    before, after = _flatten(config_to_dict(old)), _flatten(config_to_dict(new))
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}


class RunFolder:
    """`outputs`: the names a trainer writes in the folder (discarded when a run starts over);
    `finished`: those only a finished run has (a start-over never discards them); `locked`: dotted
    config fields (and sections) that a resumed run may not change, except those under `unlocked`; `main`:
    this is the job's main process, which alone prints, locks the folder and writes (other ranks only read)."""

    def __init__(self, path: str | Path, outputs: tuple[str, ...], finished: tuple[str, ...], locked: tuple[str, ...],
                 main: bool = True, resumable: bool = True, unlocked: tuple[str, ...] = (), command: str = "editr1"):
        self.path = Path(path)
        self.command = command
        self.finished = finished
        self.main, self.resumable = main, resumable
        self.outputs = (*outputs, CHANGES_FILE, MODEL_RECORD, BASE_MODEL_FOLDER, REWARD_ERRORS)
        self.locked, self.unlocked = locked, unlocked
        self._changes: dict[str, tuple[Any, Any]] = {}
        self._resumed_from: Checkpoint | None = None

    def _say(self, message: str) -> None:
        if self.main:
            console.print(message, soft_wrap=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def reward_errors(self) -> Path:
        return self.path / REWARD_ERRORS

    def holds_run(self) -> bool:
        return any((self.path / name).exists() for name in (CONFIG_FILE, *self.outputs))

    def lock(self) -> None:
        """Hold the folder for this job (its main process) until `release` or the process's end; raise a
        one-line error naming the job that holds it."""
        hold_folder(self.path)

    def release(self) -> None:
        if self.main:
            release_folder(self.path)

    def prepare(self, config: Any, resume: bool) -> Checkpoint | None:
        """Read-only checks; the checkpoint to resume from, or None to start from the beginning."""
        if self.main:  # first: two jobs must never both pass the checks below
            self.lock()
        # A folder of the user's documents, an evaluation's or another command's run is never written into.
        refuse_foreign_entries(self.path, (CONFIG_FILE, *self.outputs), self.command)
        if not resume:
            if self.holds_run():
                hint = ("pass --resume to continue it (from its newest checkpoint, or from the beginning if it stopped "
                        "before the first), or choose another output_dir" if self.resumable else
                        "choose another output_dir, or delete this one to run it again")
                raise EditR1Error(f"{self.path}: already holds a run; {hint}")
            return None
        if not self.holds_run():
            self._say(f"--resume: {self.path} holds no run yet; starting one")
            return None
        saved = self.path / CONFIG_FILE  # every run writes it before anything else
        try:
            saved_config = load_config(type(config), saved)
        except ConfigError as error:
            raise EditR1Error(f"{self.path}: holds files but no {CONFIG_FILE} of this command that loads ({error}), "
                              "so it is no run folder of it; choose another output_dir") from error
        checkpoint, skipped = newest_intact_checkpoint(self.checkpoints)
        if checkpoint is None and checkpoint_folders(self.checkpoints):
            raise EditR1Error(
                f"{self.checkpoints}: no checkpoint can be read ({'; '.join(skipped)}); move that folder away to "
                "start the run again from the beginning"
            )
        for reason in skipped:
            self._say(f"--resume: passing over {reason}; it will be deleted, as this run writes that step again")
        if checkpoint is None and self.finished_outputs():
            raise EditR1Error(f"{self.path}: the run finished ({', '.join(self.finished_outputs())} exist) but it has no "
                              "checkpoint left to resume from; start a new run in another output_dir")
        if checkpoint is None:
            self._say(f"--resume: {self.path} stopped before its first checkpoint; starting it again from the "
                          "beginning (the unfinished attempt's logs are discarded)")
            return None
        self._changes = self._check_config(saved_config, config)
        self._resumed_from = checkpoint
        return checkpoint

    def finished_outputs(self) -> list[str]:
        return [name for name in self.finished if (self.path / name).exists()]

    def _check_config(self, old: Any, config: Any) -> dict[str, tuple[Any, Any]]:
        saved = self.path / CONFIG_FILE
        changes = config_changes(old, config)
        locked = {key: change for key, change in changes.items()
                  if _under(key, self.locked) and not _under(key, self.unlocked)}
        if locked:
            lines = "; ".join(f"{key}: {_shown(key, old_value)} -> {_shown(key, new_value)}"
                              for key, (old_value, new_value) in locked.items())
            raise EditR1Error(
                f"--resume: these fields change what is learned and must stay as the run started ({saved}): {lines}. "
                "Change them back, or start a new run in another output_dir"
            )
        return changes

    def start(self, config: Any) -> None:
        """Create or continue the folder (main process only): after every input was validated."""
        self.path.mkdir(parents=True, exist_ok=True)
        remove_staging(self.checkpoints)
        if self._resumed_from is not None:
            # Newer folders were passed over as unreadable: the resumed run writes those steps again.
            for step, folder in checkpoint_folders(self.checkpoints):
                if step > self._resumed_from.step:
                    try:
                        shutil.rmtree(folder)
                    except OSError as error:
                        raise EditR1Error(f"{folder}: cannot delete this unreadable checkpoint ({error}); move it "
                                          "away and resume again") from error
            write_text_atomic(self.checkpoints / LATEST, self._resumed_from.folder.name)
        if self._resumed_from is None:
            for name in self.outputs:
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
        elif self._changes:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_at_step": self._resumed_from.step,
                      "changes": {key: {"old": _recorded(key, old), "new": _recorded(key, new)}
                                  for key, (old, new) in self._changes.items()}}
            with open(self.path / CHANGES_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            self._say("--resume: changed " + ", ".join(f"{key} {_shown(key, old)} -> {_shown(key, new)}"
                                                       for key, (old, new) in self._changes.items())
                          + f" (recorded in {CHANGES_FILE})")
        save_config(config, self.path / CONFIG_FILE)

    def write_json(self, name: str, data: dict) -> None:
        write_text_atomic(self.path / name, json.dumps(data, indent=2))

    def record_base_model(self, adapter: Any, model: Any, final: str) -> None:
        """Write `model.json` (main process, once per run): the base model (`model.path` resolved, or
        the saved tiny preset), its family, dtype and conditioning, and where the final weights go."""
        base = model.path
        # A full fine-tune's final folder is a whole model: a tiny base is then not needed to edit.
        if is_tiny_preset(base) and model.train_mode == "lora":
            adapter.save_pretrained(self.path / BASE_MODEL_FOLDER)
            fix_modes(self.path / BASE_MODEL_FOLDER)
            base = BASE_MODEL_FOLDER
        elif Path(base).exists():
            base = str(Path(base).resolve())
        self.write_json(MODEL_RECORD, {
            "base": base, "family": family_name(type(adapter)), "dtype": model.dtype,
            "condition_area": model.condition_area,
            "train_mode": model.train_mode, "final": final,
        })
