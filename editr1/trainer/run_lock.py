"""One job per run folder: the main process of a job holds an OS lock on the folder for its whole life.

A scheduler may requeue a job while the old one still runs; two jobs writing one folder would interleave
checkpoints and logs. The lock is `flock` on `.<name>.lock` beside the folder (not in it: a new run's
folder must not exist until its inputs are validated, and a file inside would count as the folder's
content). The kernel releases it when the process ends, however it ends (SIGKILL included), so a lock
left by a dead job never blocks. The file records the holder's host, process id and start time, for the
refusal to name; a process that exits normally deletes it, and a killed one leaves it behind, unlocked.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from editr1.errors import EditR1Error
from editr1.trainer.progress import console

#: Lock file -> the descriptor that holds it, for the rest of this process's life.
_held: dict[Path, int] = {}


def lock_file(folder: str | Path) -> Path:
    """Where the lock of run folder `folder` lives: beside it, under its real path (a symlink or a relative
    path to the same folder names the same lock)."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


def hold_folder(folder: str | Path) -> None:
    """Lock run folder `folder` for this process, or raise a one-line EditR1Error naming the job that holds
    it. Writes nothing in the folder; the folder's parent is created if missing, to hold the lock file."""
    path = lock_file(folder)
    if path in _held:  # a run resumed within one interpreter (a notebook, a test): still this job
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EditR1Error(f"{folder}: cannot create {path.parent} to hold the folder's lock "
                          f"({error.strerror})") from error
    while True:
        try:
            # O_CLOEXEC (os.open's default, made explicit): a program this process starts must not keep the
            # lock after the job ends.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise EditR1Error(f"{folder}: cannot create its lock file {path} ({error.strerror}); choose an "
                              "output_dir in a folder you can write") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise EditR1Error(f"{folder}: another job is running in this folder ({holder}); stop it or wait for "
                              f"it to end (its lock, {path}, ends with that process)") from None
        except OSError as error:
            # A filesystem without locks (e.g. Lustre mounted without `flock`): refusing would make it
            # unusable for training, so the run goes on unguarded and says so.
            os.close(fd)
            console.print(f"warning: {path}: cannot lock this run folder ({error.strerror}); nothing stops a second "
                          "job from writing to it at the same time", soft_wrap=True, markup=False)
            return
        if _same_file(fd, path):
            break
        # The holder deleted the file as it ended, after this process opened it: lock the one at the path now.
        os.close(fd)
    # The lock alone decides, whatever host the previous record names. NFS sends flock to the server as a
    # whole-file lock, which every host sees; where flock is local to a host (NFS with local_lock=flock,
    # Lustre with localflock), another host's live job cannot be told from a dead one without heartbeats,
    # and a crashed node's record must not block its requeued job.
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    if not _held:
        atexit.register(release_all)
    _held[path] = fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> str:
    """The holder's record, as words; a holder that has just taken the lock writes it a moment later."""
    for _ in range(20):
        try:
            record = json.loads(os.pread(fd, 4096, 0))
            return f"host {record['host']}, process {record['pid']}, since {record['since']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "its host and process are not recorded"


def release_folder(folder: str | Path) -> None:
    """End this process's hold on run folder `folder` (its run ended): a later job, or a resume in another
    process, may take it while this interpreter goes on (a notebook)."""
    path = lock_file(folder)
    if path in _held:
        _release(path, _held.pop(path))


def release_all() -> None:
    """End every hold of this process: at exit, which `os._exit` skips (`job._exit` calls this)."""
    for path, fd in list(_held.items()):
        _release(path, fd)
    _held.clear()


def _release(path: Path, fd: int) -> None:
    # Deleted while still locked, so no other job can have locked this file in between.
    if _same_file(fd, path):
        path.unlink()
    os.close(fd)


def _forget_in_child() -> None:
    # A forked child (no exec) shares the parent's open lock: closing its copy leaves the parent holding
    # it, and the lock ends with the parent rather than with the child.
    for fd in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)
