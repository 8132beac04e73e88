"""One job of several processes (`accelerate launch`): one voice, and one fate.

- One voice: the processes other than the main one print nothing (their stdout and stderr go to
  /dev/null), so a message meant once per job (a judge's wait line, a truncation summary, a download
  bar) is printed once. Errors are written to the process's real stderr, whichever process has them.
- One fate: a process that fails records it in the job's key-value store (the rendezvous store every
  process reaches, torchrun's or the main process's) before it exits, and every process watches that
  store. A process waiting in a collective for one that failed would otherwise wait for the collective
  timeout (hours: the main process alone scores held-out edits and writes checkpoints); a launcher ends
  only the processes of its own node. So every process of every node ends within seconds of the first
  failure, and only the failing one prints its error.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta

import torch.distributed as dist

#: The store's key for the first failure: "process R on HOST: message".
FAILED_KEY = "editr1/failed"
#: How often each process looks for another's failure.
WATCH_INTERVAL_S = 2.0

_job: "Job | None" = None


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

    def record_failure(self, message: str) -> None:
        """Tell the other processes (the first failure wins; a store already gone cannot be told)."""
        self._stop.set()
        try:
            self.store.compare_set(FAILED_KEY, "", f"process {self.rank} on {os.uname().nodename}: {message}")
        except Exception:  # noqa: BLE001 - the others then see the store gone
            pass

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            if self.failure() is not None:
                # Its own error is printed by the process that failed; this one has nothing to add.
                _exit(1)

    def close(self) -> None:
        self._stop.set()


def start(rank: int, world: int, is_main: bool) -> None:
    """Join the job (a no-op for one process): quiet unless `is_main`, and watch for others' failures.
    Call it once the process group is up."""
    global _job
    if world <= 1 or _job is not None:
        return
    if not is_main:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        sys.stdout = sys.stderr = devnull
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))
    _job = Job(rank, store)


def end() -> None:
    """Stop watching: the job ended normally (its processes now exit one by one)."""
    global _job
    if _job is not None:
        _job.close()
        _job = None


def fail(message: str, code: int) -> None:
    """In a job: report this process's failure unless it is the consequence of another's (a collective
    whose peer is gone), print `message` once, and end the process now. Outside one: return."""
    if _job is None:
        return
    if _job.failure() is None:
        _job.record_failure(message.splitlines()[-1] if message.strip() else "failed")
        print(message, file=sys.__stderr__)
    _exit(code)


def _exit(code: int) -> None:
    """End the process at once: interpreter shutdown could wait on a dead peer (process-group teardown)."""
    for stream in (sys.__stdout__, sys.__stderr__):
        stream.flush()
    os._exit(code)
