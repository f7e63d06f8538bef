"""The lock that keeps two processes off the same work: real processes, real flock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lymphaug.common.errors import LockedError
from lymphaug.common.locks import exclusive

SRC = Path(__file__).resolve().parents[2] / "src"


def hold(lock: Path) -> subprocess.Popen:
    """Another process that takes the lock with the project's code and keeps it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from lymphaug.common.locks import exclusive
        with exclusive({str(lock)!r}, "test"):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_with_the_lock_and_the_holder(tmp_path):
    lock = tmp_path / "work" / ".lock"
    proc = hold(lock)
    try:
        with (
            pytest.raises(
                LockedError,
                match=rf"x is already running: process {proc.pid} holds "
                rf"the lock {lock}",
            ),
            exclusive(lock, "x"),
        ):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # kill -9 released it (the kernel drops a dead process's flock): no stale lock
    with exclusive(lock, "x") as held:
        assert held.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()  # removed when released: nothing piles up in work/


def test_a_lock_is_not_reentrant_across_descriptors(tmp_path):
    """flock is per open file: the same process taking it twice is refused too (no silent share)."""
    lock = tmp_path / ".lock"
    with (
        exclusive(lock, "outer"),
        pytest.raises(LockedError, match="inner is already running"),
        exclusive(lock, "inner"),
    ):
        pass
