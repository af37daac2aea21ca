"""One agent per run directory.

`soar run` (a new run or a resume) and `soar eval-pq` write the run's store and checkpoints as its agent; two
of them on one run directory would redo the same units (duplicate datasets, then an IntegrityError on the
second's trainings). Each holds an exclusive flock on RUN_DIR/soar.lock while it works; a second is refused
in one line naming the live process. flock, not a pid file: the kernel drops the lock when its process ends,
however it ends (kill -9, a reboot), so the file a killed process leaves never blocks a resume. Commands that
only read the run or leave it a message (status, the TUI, export) take no lock and work beside a live run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "soar.lock"
_HOLDER_WAIT_S = 1.0  # a holder writes its pid just after taking the lock


class RunDirInUse(ValueError):
    """Another live process holds the run directory; the message is one line naming it."""


def _holder(fd: int) -> str:
    """The holder's "pid N (command)" as it wrote it into the lock file."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text or time.monotonic() >= deadline:
            return text or "another process"
        time.sleep(0.05)


def _lock_file(run_dir: Path, lock: Path) -> int:
    """An fd of `lock` holding its flock, or RunDirInUse."""
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _holder(fd)
            os.close(fd)
            raise RunDirInUse(f"{run_dir}: {holder} is already working on this run; wait for it to end, or"
                              " stop it first") from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        # the holder removed the file as it ended, after this process opened it: lock the one there now
        os.close(fd)


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, command: str):
    """Hold `run_dir` for `command` (e.g. "soar run") until the block ends. The directory is created if
    needed; the lock file goes when the block ends, and so does a directory this call created that holds
    nothing else (a command refused before it wrote anything leaves the disk as it found it)."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    lock = run_dir / LOCK_NAME
    fd = _lock_file(run_dir, lock)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command})\n".encode(), 0)
        yield
    finally:
        try:
            # while still held: a process that opened the file meanwhile finds it gone once it gets the lock,
            # and starts over on a new one
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            if created:
                with contextlib.suppress(OSError):  # not empty: the command wrote a run there
                    run_dir.rmdir()
        finally:
            os.close(fd)
