"""One process at a time per piece of work: a lock file holding the owner's PID.

``fcntl.flock`` is released by the kernel when its process dies, even by ``kill -9``,
so a lock never outlives its owner and needs no stale-lock clean-up. The PID in the
file is only for the message: it names the process to wait for or stop. The owner
removes the file when it is done (so no lock files pile up); a process that locked a
file just removed checks the inode and takes the new one.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lymphaug.common.errors import LockedError

LOCK_NAME = ".lock"


def lock_path(folder: str | Path) -> Path:
    """Where the lock of the work in ``folder`` lives."""
    return Path(folder) / LOCK_NAME


@contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock file ``path`` while the block runs; refuse at once if another process does.

    ``what`` says what is locked ("lymphaug train base seed=0") in the refusal.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding it, so no one locks a removed file
        os.close(fd)  # closing releases the flock


def _acquire(path: Path, what: str) -> int:
    """An open descriptor of ``path`` holding its flock, or LockedError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{what} is already running: process {holder} holds the lock {path}. Wait "
                "for it to finish (or stop it), then rerun"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the owner removed this file as we opened it: lock the new one
