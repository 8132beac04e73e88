"""One job per run folder: a second job (a requeued one while the first still runs) is refused with one line
naming the holder's host and process and writes nothing; the lock of a killed job does not block."""

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from tiny_runs import tiny_nft_overrides

from editr1.config import TrainConfig, SFTConfig, load_config, package_path, save_config
from editr1.errors import EditR1Error
from editr1.rewards.base import Reward, RewardBatch
from editr1.trainer import run_lock
from editr1.trainer.metrics_log import read_metrics
from editr1.trainer.run_folder import RunFolder

TESTS = Path(__file__).parent
SHIPPED_DDP = TESTS.parent / "configs" / "accelerate" / "ddp_1node.yaml"
BUSY = "another job is running in this folder"

# Takes the lock of a folder in a process of its own, says so, and lives until it is killed.
HOLDER = """
import sys, time
from editr1.trainer.run_lock import hold_folder
hold_folder(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


class Gated(Reward):
    """Scores brightness; once `hold_from` exists, a score call writes `reached` and waits until `until`
    exists: a launch held mid-run for as long as a test needs, whatever the machine's speed."""

    name = "test_gated"

    def __init__(self, hold_from: str, until: str, reached: str):
        self.hold_from, self.until, self.reached = Path(hold_from), Path(until), Path(reached)

    def score(self, sources, edited, prompts, requirements):
        if self.hold_from.exists() and not self.until.exists():
            self.reached.touch()
            while not self.until.exists():
                time.sleep(0.1)
        return RewardBatch(torch.stack([e.float().mean() for e in edited]), torch.ones(len(edited), dtype=torch.bool))


def _hold(folder):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.communicate()


def _snapshot(*roots):
    """Every file and folder under `roots`, with its size, time and (files) bytes."""
    entries = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            stat = path.stat()
            entries[str(path)] = (stat.st_size, stat.st_mtime_ns, path.read_bytes() if path.is_file() else None)
    return entries


def _record(folder):
    return json.loads(run_lock.lock_file(folder).read_text())


def test_a_live_jobs_folder_is_refused_without_a_trace_and_a_killed_jobs_lock_does_not_block(shapes_data, tmp_path):
    out = tmp_path / "run"
    config = load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, out))
    out.mkdir()
    save_config(config, out / "config.yaml")  # a run that stopped before its first checkpoint
    holder = _hold(out)
    try:
        before = _snapshot(tmp_path)
        with pytest.raises(EditR1Error) as refused:
            RunFolder(out, ("metrics.jsonl",), (), ()).prepare(config, resume=True)
        message = str(refused.value)
        assert message.startswith(f"{out}: {BUSY} (host {socket.gethostname()}, process {holder.pid}, since ")
        assert "\n" not in message
        assert _snapshot(tmp_path) == before
    finally:
        _kill(holder)
    assert _record(out)["pid"] == holder.pid  # the dead job's record is still there: it does not block
    assert RunFolder(out, ("metrics.jsonl",), (), ()).prepare(config, resume=True) is None
    record = _record(out)
    assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
    # Another rank of a job never takes the lock: it reads the folder the main process holds.
    assert RunFolder(tmp_path / "other", (), (), (), main=False).prepare(config, resume=True) is None
    assert not run_lock.lock_file(tmp_path / "other").exists()


def test_train_sft_and_judge_distillation_refuse_a_held_folder_before_writing(shapes_data, tmp_path):
    from editr1.tasks.shapes.config import JudgeDistillConfig
    from editr1.tasks.shapes.judge_distill import run_judge_distill
    from editr1.trainer.rl_trainer import RLTrainer
    from editr1.trainer.sft import run_sft

    out = tmp_path / "run"
    train = f"data.train={shapes_data / 'train.jsonl'}"
    holder = _hold(out)
    try:
        with pytest.raises(EditR1Error, match=f"{BUSY} \\(host .*, process {holder.pid},"):
            RLTrainer(load_config(TrainConfig, None, tiny_nft_overrides(shapes_data, out)), resume=True)
        with pytest.raises(EditR1Error, match=f"{BUSY} \\(host .*, process {holder.pid},"):
            run_sft(load_config(SFTConfig, None, [train, "data.heldout=null", f"output_dir={out}"]), resume=True)
        with pytest.raises(EditR1Error, match=f"{BUSY} \\(host .*, process {holder.pid},"):
            run_judge_distill(load_config(JudgeDistillConfig, None, [
                train, "data.heldout=null", f"output_dir={out}",
                f"policy.path={package_path('tasks/shapes/assets/shapes_base')}"]))
        assert not out.exists()
    finally:
        _kill(holder)


def test_children_of_a_killed_job_do_not_keep_its_lock(tmp_path):
    out = tmp_path / "run"
    # The job forks one child (as multiprocessing does) and starts a program (as subprocess does), then dies.
    script = HOLDER.replace('print("held", flush=True)', """
import os, subprocess
if os.fork() == 0:
    time.sleep(600)
    os._exit(0)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], close_fds=False)
print("held", flush=True)""")
    job = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    children = []
    try:
        assert job.stdout.readline() == "held\n"
        children = psutil.Process(job.pid).children()
        assert len(children) == 2
        job.kill()
        job.wait()  # not communicate: the children hold its output open
        config = load_config(TrainConfig, None, [f"output_dir={out}"])
        assert RunFolder(out, (), (), ()).prepare(config, resume=True) is None
    finally:
        job.kill()
        job.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def test_a_lock_file_deleted_by_its_ending_holder_is_not_taken(tmp_path, monkeypatch):
    """The holder ends (deleting its file) after this process opened the file but before it locked it: this
    process must lock the file at the path, not the deleted one."""
    out, flock, calls = tmp_path / "run", run_lock.fcntl.flock, []

    def holder_ends_first(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            run_lock.lock_file(out).unlink()
        return flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", holder_ends_first)
    run_lock.lock_file(out).write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}))
    assert RunFolder(out, (), (), ()).prepare(load_config(TrainConfig, None, [f"output_dir={out}"]), resume=True) is None
    assert len(calls) == 2 and _record(out)["pid"] == os.getpid()


def test_a_filesystem_without_locks_warns_and_runs(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    assert RunFolder(out, (), (), ()).prepare(load_config(TrainConfig, None, [f"output_dir={out}"]), resume=True) is None
    assert "cannot lock this run folder (No locks available); nothing stops a second job" in capsys.readouterr().out


# ---- launches: `editr1 train` on 2 CPU processes through the shipped DDP config ----------------------


def _overrides(data, out, tmp_path, iterations, hold_from):
    """A tiny run whose score calls wait at `tmp_path/gate` once `hold_from` exists."""
    gate = {"hold_from": str(hold_from), "until": str(tmp_path / "gate"), "reached": str(tmp_path / "reached")}
    return tiny_nft_overrides(data, out, iterations=iterations) + [
        "data.heldout=null", "eval.every=0", "logging.checkpoint_every=1", "reward.name=test_run_lock:Gated",
        f"reward.options={json.dumps(gate)}",
    ]


def _start(overrides, log):
    """`editr1 train --resume` under `accelerate launch` (gloo, one thread per process, a port of its own),
    its output in the file `log` (a pipe could fill while a test waits)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--main_process_port", str(port),
               "--config_file", str(SHIPPED_DDP), "--num_processes", "2", "-m", "editr1.cli.main", "train", "--resume"]
    for override in overrides:
        command += ["--set", override]
    # PYTHONPATH: the processes import the Gated reward from this file.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(log, "w") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_launch(launch):
    """SIGKILL the launcher and its training processes (torch starts each in a session of its own)."""
    for process in [*psutil.Process(launch.pid).children(recursive=True), launch]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    launch.wait()


def _finish(launch, timeout):
    try:
        return launch.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_launch(launch)
        raise


def _wait_for(path, launch, log, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert launch.poll() is None, f"the launch ended with {launch.returncode}\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.2)


def test_a_second_launch_is_refused_and_a_killed_launch_is_requeued_and_resumes(shapes_data, tmp_path):
    """What a scheduler does: requeue a job while the old one still runs (refused, nothing changed), then,
    the old one killed, requeue it again (it resumes from its checkpoint, its dead lock no obstacle)."""
    out, first_log, second_log, requeued_log = (tmp_path / name for name in ("run", "first.log", "second.log",
                                                                             "requeued.log"))
    # Held in its second iteration, after the checkpoint of the first.
    overrides = _overrides(shapes_data, out, tmp_path, iterations=3, hold_from=out / "checkpoints" / "latest")
    first = _start(overrides, first_log)
    try:
        _wait_for(tmp_path / "reached", first, first_log)
        before = _snapshot(out, run_lock.lock_file(out))
        assert _finish(_start(overrides, second_log), timeout=240) != 0
        output = second_log.read_text()
        errors = [line for line in output.splitlines() if line.startswith("editr1: error:")]
        assert len(errors) == 1, output[-4000:]
        assert errors[0].startswith(f"editr1: error: {out}: {BUSY} (host {socket.gethostname()}, process ")
        holder = int(re.search(r"process (\d+),", errors[0])[1])
        assert holder in [p.pid for p in psutil.Process(first.pid).children(recursive=True)]
        assert _snapshot(out, run_lock.lock_file(out)) == before
        assert first.poll() is None  # the holder runs on
    finally:
        if first.poll() is None:
            _kill_launch(first)
    assert run_lock.lock_file(out).exists()  # the killed job's record stays behind
    (tmp_path / "gate").touch()
    assert _finish(_start(overrides, requeued_log), timeout=300) == 0, requeued_log.read_text()[-4000:]
    assert "resumed from" in requeued_log.read_text() and "at iteration 1" in requeued_log.read_text()
    assert [r["step"] for r in read_metrics(out) if "reward_mean" in r] == [1, 2, 3]
    assert (out / "summary.json").is_file() and (out / "final").is_dir()
    assert not run_lock.lock_file(out).exists()  # released as the job ended
