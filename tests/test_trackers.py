"""Experiment trackers (`logging.trackers`): a run killed and resumed keeps one wandb run (offline here) whose
history holds every step of metrics.jsonl once, with the config and images; tensorboard's events hold each step
once; a missing tracker package is a one-line error before anything is written; `[]` writes no tracker file."""

import json
import struct
import sys

import pytest
from tiny_runs import run_killed, tiny_nft_overrides

from editr1.config import ConfigError, SFTConfig, TrainConfig, load_config
from editr1.errors import EditR1Error
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.rl_trainer import run_rl
from editr1.trainer.sft import run_sft
from editr1.trainer.trackers import TRACKER_OUTPUTS, TRACKERS_FILE


def wandb_records(path):
    """The records of a `.wandb` file: a header, then LevelDB-log blocks of 32 KiB holding protobuf Records
    (each whole, or in first/middle/last pieces)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a .wandb file"
    position, piece = 7, b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if left < 7 or kind == 0:  # a block's padding
            position += left
            continue
        piece += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # whole, or the last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            yield record


def _key(item):
    """An item's key: "loss", or ("grids/group0", "filenames") inside a logged image."""
    return item.key or (item.nested_key[0] if len(item.nested_key) == 1 else tuple(item.nested_key))


def test_killed_and_resumed_run_keeps_one_wandb_run_with_every_step_once(shapes_data, tmp_path, monkeypatch):
    for name, folder in (("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "wandb_config"),
                         ("WANDB_CACHE_DIR", "wandb_cache"), ("WANDB_DATA_DIR", "wandb_data")):
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    overrides = tiny_nft_overrides(shapes_data, out, iterations=4) + ["logging.trackers=[wandb, tensorboard]"]
    # In iteration 4: after the checkpoint of 2 and iteration 3's row, which the resumed run takes again.
    killed = run_killed(overrides, ("trainer", "_train", 4))
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_killed(overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    rows = read_metrics(out)
    expected = {}
    for row in rows:
        expected.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k != "step"})
    assert sorted(expected) == [0, 1, 2, 3, 4]
    run_id = json.loads((out / TRACKERS_FILE).read_text())["wandb"]["id"]
    # One offline run folder per process, both of the same run (the killed one holds what wandb wrote before the
    # kill, maybe nothing); the last one holds the whole history.
    attempts = sorted((out / "wandb").glob("offline-run-*"))
    assert len(attempts) == 2 and all((folder / f"run-{run_id}.wandb").is_file() for folder in attempts)
    last = (out / "wandb" / "latest-run").resolve()
    assert last == attempts[-1]
    records = list(wandb_records(last / f"run-{run_id}.wandb"))
    assert {record.run.run_id for record in records if record.WhichOneof("record_type") == "run"} == {run_id}
    history = [record.history for record in records if record.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [0, 1, 2, 3, 4]
    images = {}
    for h in history:
        items = {_key(item): json.loads(item.value_json) for item in h.item}
        scalars = {key: value for key, value in items.items() if isinstance(key, str) and not key.startswith("_")}
        assert scalars == expected[h.step.num], f"step {h.step.num}"
        images.update({(h.step.num, key[0]): items[key[0], "filenames"] for key in items if key[1:] == ("_type",)})
    assert {(3, "grids/group0"), (4, "reward_curve"), (4, "before_after")} <= images.keys()
    assert all((last / "files" / name).is_file() for names in images.values() for name in names)
    config = {_key(item): json.loads(item.value_json) for record in records
              if record.WhichOneof("record_type") == "config" for item in record.config.update}
    assert config["rollout.group_size"] == 4 and config["logging.trackers"] == '["wandb", "tensorboard"]'

    # Tensorboard: the killed attempt's events after the checkpoint (iteration 3's) were purged and written again.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("reward_mean")] == [1, 2, 3, 4]
    assert [event.value for event in events.Scalars("heldout_reward")] == pytest.approx(
        [expected[step]["heldout_reward"] for step in (0, 2, 4)])
    assert "grids/group0" in events.Tags()["images"]


def test_missing_tracker_package_is_a_one_line_error_before_anything_is_written(shapes_data, tmp_path, monkeypatch):
    for module in ("wandb", "mlflow", "trackio"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    for name in ("wandb", "mlflow", "trackio"):
        out = tmp_path / name
        overrides = tiny_nft_overrides(shapes_data, out, iterations=1) + [f"logging.trackers=[tensorboard, {name}]"]
        with pytest.raises(EditR1Error) as error:
            run_rl(load_config(TrainConfig, None, overrides))
        assert str(error.value) == f"logging.trackers: {name} is not installed; pip install 'editr1[{name}]'"
        assert not out.exists()
    sft = [f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null", f"output_dir={tmp_path / 'sft'}",
           "logging.trackers=[wandb]"]
    with pytest.raises(EditR1Error, match=r"^logging.trackers: wandb is not installed; pip install 'editr1\[wandb\]'$"):
        run_sft(load_config(SFTConfig, None, sft))
    assert not (tmp_path / "sft").exists()


def test_the_replaced_field_still_reads_and_a_tracker_named_twice_is_refused(tmp_path):
    # Run folders saved before `trackers` keep resuming: their `tensorboard: true/false` reads as the tracker list.
    old = tmp_path / "old.yaml"
    old.write_text("logging:\n  tensorboard: true\n")
    assert load_config(SFTConfig, old).logging.trackers == ["tensorboard"]
    assert load_config(TrainConfig, None, ["logging.tensorboard=false"]).logging.trackers == []
    with pytest.raises(ConfigError, match=r"logging.tensorboard: replaced by logging.trackers; give only trackers"):
        load_config(TrainConfig, None, ["logging.tensorboard=false", "logging.trackers=[]"])
    with pytest.raises(ConfigError, match="logging.trackers: wandb is named twice"):
        load_config(TrainConfig, None, ["logging.trackers=[wandb, tensorboard, wandb]"])
    with pytest.raises(ConfigError, match=r"logging.trackers\[0\]: expected one of"):
        load_config(TrainConfig, None, ["logging.trackers=[comet]"])
    assert load_config(TrainConfig).logging.trackers == ["tensorboard"]


@pytest.mark.parametrize("trackers", ["[]", "[tensorboard]"])
def test_sft_sends_its_rows_and_final_figure_or_writes_no_tracker_file(shapes_data, tmp_path, trackers):
    out = tmp_path / "sft"
    run_sft(load_config(SFTConfig, None, [
        f"data.train={shapes_data / 'train.jsonl'}", "data.heldout=null", f"output_dir={out}", "steps=2",
        "batch_size=2", "logging.progress=false", f"logging.trackers={trackers}"]))
    assert [row["step"] for row in read_metrics(out)] == [1, 2]
    if trackers == "[]":
        assert not any((out / name).exists() for name in TRACKER_OUTPUTS)
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2]
    assert [event.step for event in events.Images("heldout_curve")] == [2]
    assert json.loads((out / TRACKERS_FILE).read_text())["trackers"] == ["tensorboard"]
