"""Atomic writes under faults: a full disk is one message, and nothing half-written stays."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lymphaug.common.errors import DiskFullError
from lymphaug.common.files import atomic_path, human_bytes, remove_stale_temps, writing

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


def fill(path: Path) -> None:
    """Create ``path``, then write to /dev/full: the kernel answers ENOSPC, as a full disk does."""
    path.write_bytes(b"")
    with open("/dev/full", "wb") as full:
        full.write(b"x" * 10)


@needs_dev_full
def test_full_disk_in_an_atomic_folder_names_the_published_path(tmp_path):
    target = tmp_path / "data" / "raw"
    with pytest.raises(DiskFullError) as err, atomic_path(target) as tmp:
        (tmp / "CLL").mkdir(parents=True)
        with writing(tmp / "CLL" / "0.png"):
            fill(tmp / "CLL" / "0.png")
    message = str(err.value)
    assert re.match(
        rf"no space left on device writing {target}/CLL/0.png \(\d+\.\d [KMGT]iB free there\)",
        message,
    ), message
    assert err.value.path == target / "CLL" / "0.png"
    assert list((tmp_path / "data").iterdir()) == []  # the temporary folder is gone


@needs_dev_full
def test_full_disk_in_an_atomic_file_names_the_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(DiskFullError, match=rf"writing {target} \("), atomic_path(target) as tmp:
        fill(tmp)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("half")
        raise PermissionError("not a full disk")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_one_target_only(tmp_path):
    for name in (".raw.abc.tmp", ".raw.old", ".raw_other.x.tmp", ".rawx.tmp", "raw", ".dct.1.tmp"):
        (tmp_path / name).mkdir()
    removed = remove_stale_temps(tmp_path / "raw")
    assert sorted(p.name for p in removed) == [".raw.abc.tmp", ".raw.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".dct.1.tmp",
        ".raw_other.x.tmp",
        ".rawx.tmp",
        "raw",
    ]


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1536, 8 * 2**30, 3 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "8.0 GiB",
        "3.0 TiB",
    ]
