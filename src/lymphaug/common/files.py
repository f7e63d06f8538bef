"""Atomic file and folder writes: an interrupted stage never leaves half an output."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lymphaug.common.errors import DiskFullError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Works for a file or a folder written at the yielded path. On an exception
    the temporary path is removed and ``target`` is left as it was; a full disk
    becomes one :class:`DiskFullError` naming ``target`` (or the file below it).
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.rmdir()
        yield tmp
        if tmp.is_dir() and target.exists():
            old = target.with_name(f".{target.name}.old")
            remove(old)
            target.rename(old)
            tmp.rename(target)
            remove(old)
        else:
            os.replace(tmp, target)
    except Exception as err:
        if tmp is not None:
            remove(tmp)  # first, so the free space reported is what is really left
        if is_disk_full(err):
            raise disk_full(_as_target(err, tmp, target)) from None
        raise
    finally:
        if tmp is not None:
            remove(tmp)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in one :class:`DiskFullError` if the disk fills up while the block writes it.

    For writes that are not inside :func:`atomic_path`, or to name the very file inside one.
    """
    try:
        yield
    except Exception as err:
        if isinstance(err, DiskFullError) or not is_disk_full(err):
            raise
        raise disk_full(path) from None


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library (safetensors, C++) only says it in its message."""
    if isinstance(err, DiskFullError):
        return True
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    return isinstance(err, Exception) and "No space left on device" in str(err)


def disk_full(path: str | Path) -> DiskFullError:
    """The one message for a full disk: the path being written and the space left there."""
    free = free_bytes(Path(path))
    shown = f"{human_bytes(free)} free there" if free is not None else "free space unknown"
    return DiskFullError(
        f"no space left on device writing {path} ({shown}); the partial output was removed. "
        "Free some space (or move work/ and the DVC cache to a bigger disk) and rerun",
        path,
    )


def _as_target(err: BaseException, tmp: Path | None, target: Path) -> Path:
    """The file that failed, named as it would have been published (not its temporary name)."""
    failed = getattr(err, "path", None) or getattr(err, "filename", None)
    if not failed:
        return target
    failed = Path(failed)
    if tmp is not None and failed.is_relative_to(tmp):
        return target / failed.relative_to(tmp)
    return failed


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk holding ``path`` (its nearest existing ancestor)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages a person reads."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Remove what an interrupted :func:`atomic_path` (``kill -9``) left beside ``target``.

    Only call it while holding the stage's lock (:mod:`lymphaug.common.locks`): a
    temporary path of a live writer would otherwise go too.
    """
    target = Path(target)
    name = glob.escape(target.name)
    stale = [*target.parent.glob(f".{name}.*.tmp"), target.with_name(f".{target.name}.old")]
    found = [p for p in stale if p.exists() or p.is_symlink()]
    for path in found:
        remove(path)
    return found


def prune(folder: Path, keep: Iterable[Path]) -> list[Path]:
    """Remove every entry of ``folder`` but ``keep``: the resumable work of other params.

    A stage's work folder only serves resuming the current params (a change means a fresh
    run anyway), so this keeps work/ to one run per stage. Call it holding the lock.
    """
    if not folder.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    gone = [p for p in folder.iterdir() if p.resolve() not in kept]
    for path in gone:
        remove(path)
    return gone


def remove(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def umask_modes(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open()`` gives (0666 less the
    umask): safetensors writes its files owner-only, unlike every other output."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | Path, text: str) -> None:
    write_bytes_atomic(target, text.encode())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    return _file_digest(path, hashlib.sha256(), chunk)


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The key DVC 3 stores a file under in its cache and remotes (.dvc/cache/files/md5/)."""
    return _file_digest(path, hashlib.md5(), chunk)


def _file_digest(path: str | Path, h, chunk: int) -> str:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def short_digest(obj: object) -> str:
    """16 hex digits identifying a JSON-able value (keys sorted): names resumable work dirs."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
