"""The lock that keeps two processes off the same work: real processes, real flock."""

from __future__ import annotations

import os
import signal

import pytest
from fixtures.processes import hold

from lymphaug.common.errors import LockedError
from lymphaug.common.locks import exclusive


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
