import json

import pytest

from editr1.errors import DataError
from editr1.trainer.metrics_log import METRICS_FILE, MetricsLogger, read_metrics


def _lines(run_dir):
    return (run_dir / METRICS_FILE).read_text().splitlines()


def test_rows_are_json_lines_with_step_and_floats(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"reward_mean": 0.5, "loss": 1})
        log.log(1, {"reward_mean": 0.75})
    lines = _lines(tmp_path)
    assert [json.loads(x) for x in lines] == [
        {"step": 0, "reward_mean": 0.5, "loss": 1.0},
        {"step": 1, "reward_mean": 0.75},
    ]
    assert isinstance(json.loads(lines[0])["loss"], float)
    assert read_metrics(tmp_path / METRICS_FILE) == read_metrics(tmp_path)


def test_each_row_is_flushed_immediately(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(3, {"a": 1.0})
    assert read_metrics(tmp_path) == [{"step": 3, "a": 1.0}]  # before close()
    log.close()


def test_reopen_appends(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"a": 1.0})
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"a": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]


def test_truncate_after_keeps_rows_up_to_step_and_continues(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in range(5):
            log.log(step, {"a": float(step)})
    with MetricsLogger(tmp_path) as log:
        log.truncate_after(2)
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
        log.log(3, {"a": 30.0})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["a"] == 30.0
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]  # no temp file left


def test_nonfinite_values_are_null_and_listed(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(0, {"loss": float("nan"), "grad": float("inf"), "ok": 1.0})
    line = _lines(tmp_path)[0]
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    row = json.loads(line)
    assert row["loss"] is None and row["grad"] is None and row["ok"] == 1.0
    assert row["nonfinite"] == ["loss", "grad"]


def test_bad_inputs_rejected(tmp_path):
    with MetricsLogger(tmp_path) as log:
        with pytest.raises(ValueError):
            log.log(0, {"step": 1.0})
        with pytest.raises(TypeError):
            log.log(0, {"a": "x"})
        with pytest.raises(TypeError):
            log.log(1.5, {"a": 1.0})
    assert not _lines(tmp_path)


def test_torn_last_line_is_dropped_on_reopen(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 0, "a": 1.0}\n{"step": 1, "a"')
    with pytest.warns(UserWarning):
        assert read_metrics(path) == [{"step": 0, "a": 1.0}]
    with pytest.warns(UserWarning):
        log = MetricsLogger(tmp_path)
    log.log(1, {"a": 2.0})
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [0, 1]


def test_malformed_middle_line_raises(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=":2:"):
        read_metrics(path)
    with pytest.raises(DataError):
        read_metrics(tmp_path / "missing.jsonl")

