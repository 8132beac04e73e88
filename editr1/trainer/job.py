"""One job of several processes (`accelerate launch`): one voice, and one fate.

- One voice: the processes other than the main one print nothing (their stdout and stderr, Python's and
  the C++ libraries', go to /dev/null), so a message meant once per job (a judge's wait line, a
  truncation summary, a download bar) is printed once. Errors are written to the process's real stderr,
  whichever process has them.
- One fate: a process that fails records it in the job's key-value store (the rendezvous store every
  process reaches, torchrun's or the main process's) before it exits, and every process watches that
  store. A process waiting in a collective for one that failed would otherwise wait for the collective
  timeout (hours: the main process alone scores held-out edits and writes checkpoints); a launcher ends
  only the processes of its own node. So every process of every node ends within seconds of the first
  failure, and only the first to fail prints its error (every process may raise the same one at once).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from datetime import timedelta
from typing import TextIO

import torch.distributed as dist

#: The store's key for the first failure: "process R on HOST: message". torchrun's store outlives its
#: workers, so an elastic restart (`--max_restarts`) gets a key of its own.
FAILED_KEY = f"editr1/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
#: How often each process looks for another's failure.
WATCH_INTERVAL_S = 2.0

_job: "Job | None" = None
#: Whether this process joined a job of several processes (it stays True once the job has ended).
_joined = False
#: A quieted process's stderr as it was, where its errors still go.
_errors: TextIO | None = None


class Job:
    def __init__(self, rank: int, store: dist.Store):
        self.rank, self.store = rank, store
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="editr1-job-watch", daemon=True)
        self._watcher.start()

    def failure(self) -> str | None:
        """Another process's recorded failure; a store that no longer answers counts as one (the process
        that held it is gone)."""
        try:
            if not self.store.check([FAILED_KEY]):
                return None
            return self.store.get(FAILED_KEY).decode()
        except Exception as error:  # noqa: BLE001 - any store error means the job is broken
            return f"the job's store stopped answering ({error})"

    def record_failure(self, message: str) -> bool:
        """Tell the other processes; True when this is the job's first failure (a store already gone cannot
        be told, and the others then see it gone)."""
        self._stop.set()  # before the record: this process's watcher must not take it for another's
        mine = f"process {self.rank} on {os.uname().nodename}: {message}"
        try:
            return self.store.compare_set(FAILED_KEY, "", mine) == mine.encode()
        except Exception:  # noqa: BLE001
            return True

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            if self.failure() is not None and not self._stop.is_set():
                # The process that failed first prints its error; this one has nothing to add.
                _exit(1)

    def close(self) -> None:
        self._stop.set()


def start(rank: int, world: int, is_main: bool) -> None:
    """Join the job (a no-op for one process): watch for others' failures in the rendezvous store named by
    MASTER_ADDR/MASTER_PORT (a launcher that names none gets no watch), and go quiet unless `is_main`.
    Call it once the process group is up."""
    global _job, _errors, _joined
    if world <= 1 or _job is not None:
        return
    _joined = True
    if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=60))
        _job = Job(rank, store)
    if not is_main:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _errors = os.fdopen(os.dup(2), "w")
        # A fatal signal (an abort in a C++ library) still shows where each thread was.
        faulthandler.enable(file=_errors, all_threads=True)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)


def start_from_launcher() -> None:
    """Join the job as soon as the process starts (before its config is read), when torchrun's agent holds
    the store (it exists before any process starts): an error every process raises alike, such as a
    misspelt config field, is then printed once. Elsewhere the trainer joins once its process group is up."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        rank = int(os.environ["RANK"])
        start(rank, int(os.environ["WORLD_SIZE"]), rank == 0)


def end() -> None:
    """Stop watching: the job ended normally (its processes now exit one by one)."""
    global _job
    if _job is not None:
        _job.close()
        _job = None


def leave() -> None:
    """End a process of a job that finished (after `end`, which every process passed together): at once,
    without tearing the process group down. Gloo can abort a process (SIGABRT) whose peer closes its connections
    first, which would turn a finished job into a failed launch. Outside a job: return."""
    if _joined:
        _exit(0)


def fail(message: str, code: int) -> None:
    """In a job: unless this failure is the consequence of another's (a collective whose peer is gone),
    record it and, if it is the job's first, print `message`; then end the process now. Outside a job:
    return (the caller prints)."""
    if _job is None:
        if _errors is not None:  # a quieted process after the job ended: its error still shows
            print(message, file=_errors, flush=True)
            _exit(code)
        return
    if _job.failure() is None and _job.record_failure(message.strip().splitlines()[-1] if message.strip() else "failed"):
        print(message, file=_errors or sys.stderr, flush=True)
    _exit(code)


def _exit(code: int) -> None:
    """End the process at once: interpreter shutdown could wait on a dead peer (process-group teardown).
    The run folder's lock file is removed first, as a normal exit removes it."""
    from editr1.trainer.run_lock import release_all

    release_all()
    for stream in (sys.stdout, sys.stderr, _errors or sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def refuse_launcher(command: str) -> None:
    """A command that trains in one process, started by a launcher: each launched process would run its own
    copy of the run, into the same folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from editr1.errors import EditR1Error

        raise EditR1Error(f"{command} trains in one process: start it without a launcher such as `accelerate launch` "
                          "or torchrun")
