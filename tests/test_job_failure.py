"""An error on one process of a launch ends the whole job, and is printed once (`editr1.trainer.job`)."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from tiny_runs import run_launch, tiny_nft_overrides

ROOT = Path(__file__).parent.parent
LAUNCHER = str(Path(sys.executable).parent / "accelerate")
DDP = ["--config_file", str(ROOT / "configs" / "accelerate" / "ddp_1node.yaml"), "--num_processes", "2", "-m",
       "editr1.cli.main", "train"]
FSDP = ["--config_file", str(ROOT / "configs" / "accelerate" / "fsdp_1node.yaml"), "--num_processes", "2",
        str(Path(__file__).parent / "fsdp_on_cpu.py"), "train"]
#: Far longer than a failing tiny launch takes (seconds), far shorter than the collective timeout (2 hours).
HANG = 240


def _launch(launch, overrides):
    command = [LAUNCHER, "launch", *launch]
    for override in overrides:
        command += ["--set", override]
    return run_launch(command, timeout=HANG, check=False)


@pytest.mark.parametrize("launch", [DDP, FSDP], ids=["ddp", "fsdp"])
def test_the_judge_failing_on_the_main_process_alone_ends_every_process(shapes_data, tmp_path, launch):
    """The main process alone scores the held-out edits: its judge going down there leaves the others waiting
    in a collective. The job ends (a hang would time out), with the error printed once; so is each line meant
    once per job (here the truncation summaries of the training and held-out data)."""
    overrides = tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=3) + [
        "eval.every=1", "eval.reward.name=toy_plugin:DownJudge", "reward.name=toy_plugin:Brightness",
        "data.max_prompt_tokens=6", "data.prompt_overflow=truncate"]
    launched = _launch(launch, overrides)
    assert launched.returncode != 0
    output = launched.stdout + launched.stderr
    assert output.count("editr1: error: the judge at http://127.0.0.1:9/v1 is down") == 1, output[-4000:]
    assert output.count("cut to fit") == 2, output[-4000:]
    assert "[rank1]" not in output and "Connection closed by peer" not in output, output[-4000:]


def test_a_bug_on_another_process_alone_ends_every_process(shapes_data, tmp_path):
    """Process 1's reward raises (a bug, so a traceback): printed once, by process 1; the main process, which
    would wait for its rewards, ends too."""
    overrides = tiny_nft_overrides(shapes_data, tmp_path / "run", iterations=3) + [
        "data.heldout=null", "eval.every=0", "reward.name=toy_plugin:FailsOnProcess"]
    launched = _launch(DDP, overrides)
    assert launched.returncode != 0
    output = launched.stdout + launched.stderr
    assert output.count("RuntimeError: toy_plugin:FailsOnProcess: a bug on process 1") == 1, output[-4000:]
    assert "Connection closed by peer" not in output, output[-4000:]


def _job_store():
    """A job's store on a free port, as a launcher holds it: (store, the environment that names it)."""
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
    return store, {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_a_process_outside_any_collective_ends_when_another_fails(tmp_path):
    """Another node's process, busy where no collective would fail it (its launcher knows nothing of the first
    node): it watches the job's store and ends, silently, once a failure is recorded there."""
    from editr1.trainer.job import FAILED_KEY

    store, env = _job_store()
    busy = textwrap.dedent("""
        import time
        from editr1.trainer import job
        job.start(rank=1, world=2, is_main=False)
        print("joined", file=open("joined", "w"))
        time.sleep(600)
    """)
    with subprocess.Popen([sys.executable, "-c", busy], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as process:
        try:
            for _ in range(600):
                if (tmp_path / "joined").exists() or process.poll() is not None:
                    break
                time.sleep(0.1)
            assert process.poll() is None, process.communicate()
            store.set(FAILED_KEY, "process 0 on node-a: editr1: error: the judge is down")
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 1
    assert stdout == stderr == ""


def test_a_quiet_process_that_finished_leaves_at_once_and_one_that_aborts_shows_where():
    """A finished job's process ends with `job.leave()`: exit status 0, without waiting for what would hold an
    interpreter's exit (here a thread that never ends; in a launch, the process group's teardown). A quiet
    process (not the main one) that a library aborts still prints where each thread was."""
    _store, env = _job_store()
    start = "import os, threading, time\nfrom editr1.trainer import job\njob.start(rank=1, world=2, is_main=False)\n"
    leaves = start + "threading.Thread(target=time.sleep, args=(600,)).start()\njob.end()\njob.leave()\n"
    finished = subprocess.run([sys.executable, "-c", leaves], env=env, capture_output=True, text=True, timeout=120)
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "", "")

    aborts = start + "def in_a_library():\n    os.abort()\nin_a_library()\n"
    aborted = subprocess.run([sys.executable, "-c", aborts], env=env, capture_output=True, text=True, timeout=120)
    assert aborted.returncode == -6 and aborted.stdout == ""
    assert "Fatal Python error: Aborted" in aborted.stderr and "in_a_library" in aborted.stderr, aborted.stderr
