"""Fetching, verifying and safely unpacking a data set archive (.tar.gz/.tgz/.tar/.zip).

The archive may be a local path (relative to the repository root), a
``file://`` URL or an ``http(s)://`` URL; its sha256 must be given in params, so
the same params always mean the same bytes. Downloads go to a temporary
``.part`` file under ``work/ingest`` that is deleted on any failure (a dropped
connection, a short body, a checksum mismatch): nothing half-downloaded is ever
kept or unpacked. A verified download is kept as ``work/ingest/archives/<sha256>``
so a rerun does not fetch it again.

Unpacking refuses, before writing anything, every member that could land outside
the target folder: absolute paths, ``..`` components, drive letters, links whose
target escapes, device files. Python's ``data`` extraction filter runs on top as
a second guard.

It also refuses archives that would fill the disk (zip bombs), from the headers before
writing anything: more than ``ingest.archive.max_unpacked_bytes`` in all, or a zip member
(a whole compressed tar) compressed more than ``ingest.archive.max_ratio`` to one. While
unpacking, the bytes actually written are counted against the same limit and against
each member's header, so an archive whose headers lie is stopped too.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lymphaug.common.errors import DataError
from lymphaug.common.files import (
    disk_full,
    human_bytes,
    is_disk_full,
    remove,
    sha256_file,
    writing,
)
from lymphaug.common.progress import progress

CHUNK = 1 << 20
TIMEOUT_S = 60
# Below this size a member's compression ratio is not checked: a small text file of
# repeats compresses 100:1 harmlessly, and the total limit still bounds many of them.
RATIO_MIN_BYTES = 1 << 20


def is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https")


def resolve_local(location: str, root: Path) -> Path | None:
    """A local path for a plain path or a file:// URL, else None (a remote URL)."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"{location}: file:// URLs must be local (file:///path)")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    if len(parts.scheme) > 1:  # a one-letter scheme is a Windows drive letter
        raise DataError(f"{location}: unsupported URL scheme {parts.scheme!r} (http, https, file)")
    path = Path(location).expanduser()
    return path if path.is_absolute() else root / path


def archive_name(location: str) -> str:
    """The archive's file name, for messages and the manifest's source column."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
    return posixpath.basename(path.rstrip("/")) or "archive"


DOWNLOAD_PREFIX, UNPACK_PREFIX = ".download-", ".unpack-"


def unpack_folder(work: Path) -> Path:
    """A fresh folder in ``work`` to unpack into (removed by the caller, or at the next start)."""
    work.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=UNPACK_PREFIX, dir=work))


def clean_work(work: Path, keep: str | None) -> list[Path]:
    """Remove what killed runs left in ``work`` (partial downloads, unpacked copies) and the
    cached archives of other checksums than ``keep``, so work/ingest never grows unbounded.

    Call it under ingest's lock only: another live ingest's files would go too.
    """
    if not work.is_dir():
        return []
    stale = [*work.glob(f"{DOWNLOAD_PREFIX}*.part"), *work.glob(f"{UNPACK_PREFIX}*")]
    cache = work / "archives"
    if cache.is_dir():
        stale += [p for p in cache.iterdir() if p.name != (keep or "").lower()]
    for path in stale:
        remove(path)
    return stale


def download(url: str, folder: Path) -> tuple[Path, str]:
    """Download ``url`` into a temporary file in ``folder``; return it and its sha256.

    The temporary file is removed on any failure, including a body shorter than
    the announced Content-Length (urllib does not raise for that by itself).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, suffix=".part", dir=folder)
    part = Path(name)
    digest = hashlib.sha256()
    got = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "lymphaug"})
        with (
            os.fdopen(fd, "wb") as out,
            urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp,
        ):
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress(total=total, unit="B", unit_scale=True, desc=archive_name(url)) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise DataError(
                f"{url}: download incomplete: got {got} of {total} bytes "
                "(connection dropped?); nothing was kept"
            )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        remove(part)
        if is_disk_full(err):
            raise disk_full(part) from None
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        else:
            reason = getattr(err, "reason", None) or err
        raise DataError(
            f"{url}: download failed after {got} bytes ({reason}); nothing was kept"
        ) from None
    except BaseException:
        remove(part)
        raise
    return part, digest.hexdigest()


def fetch(location: str, expected: str | None, root: Path, work: Path) -> Path:
    """A verified local copy of the archive (the file itself when it is local)."""
    expected = expected.lower() if expected else None
    local = resolve_local(location, root)
    if local is not None:
        if not local.is_file():
            raise DataError(f"{location}: archive not found ({local})")
        _verify(location, expected, sha256_file(local))
        return local
    cache = work / "archives"
    if expected and (cached := cache / expected).is_file():
        if sha256_file(cached) == expected:
            return cached
        remove(cached)
    part, actual = download(location, work)
    try:
        _verify(location, expected, actual)
    except DataError:
        remove(part)
        raise
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / actual
    os.replace(part, target)
    return target


def _verify(location: str, expected: str | None, actual: str) -> None:
    if expected is None:
        raise DataError(
            f"{location}: ingest.archive.sha256 is not set; this file's sha256 is {actual}. "
            "Check it against the publisher's checksum, then set it in params.yaml"
        )
    if actual != expected:
        raise DataError(
            f"{location}: sha256 mismatch: expected {expected}, got {actual} "
            "(a corrupt or changed file, or a wrong ingest.archive.sha256); nothing was kept"
        )


_DRIVE = re.compile(r"^[A-Za-z]:")


def _escapes(name: str) -> bool:
    """True if an archive member name could resolve outside the target folder."""
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return True
    return ".." in name.split("/")


def _link_escapes(member_name: str, target: str) -> bool:
    target = target.replace("\\", "/")
    if target.startswith("/") or _DRIVE.match(target):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(member_name), target))
    return joined == ".." or joined.startswith("../")


@dataclass(frozen=True)
class Limits:
    """How much an archive may unpack to (``ingest.archive.max_unpacked_bytes``, ``max_ratio``)."""

    max_bytes: int
    max_ratio: float


def unpack(archive: Path, dest: Path, label: str, *, limits: Limits) -> None:
    """Unpack a zip or tar (any compression) into ``dest`` after checking every member."""
    try:
        if zipfile.is_zipfile(archive):
            _unzip(archive, dest, label, limits=limits)
        elif tarfile.is_tarfile(archive):
            _untar(archive, dest, label, limits=limits)
        else:
            raise DataError(f"{label}: not a .tar.gz, .tgz, .tar or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        if is_disk_full(err):
            raise disk_full(getattr(err, "filename", None) or dest) from None
        raise DataError(f"{label}: corrupt archive ({err})") from None


def _refuse(label: str, bad: list[str]) -> None:
    if bad:
        shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(f"{label}: refusing to unpack unsafe member(s): {shown}")


def _too_big(label: str, name: str, *, total: int, limits: Limits) -> DataError:
    return DataError(
        f"{label}: refusing to unpack: it would write more than {human_bytes(limits.max_bytes)} "
        f"(ingest.archive.max_unpacked_bytes = {limits.max_bytes}), {human_bytes(total)} by "
        f"member {name!r}; raise the limit if this archive is trusted"
    )


def _too_compressed(label: str, what: str, *, size: int, packed: int, limits: Limits) -> DataError:
    return DataError(
        f"{label}: refusing to unpack: {what} unpacks {human_bytes(size)} from "
        f"{human_bytes(packed)} ({size / max(packed, 1):.0f}:1, more than "
        f"ingest.archive.max_ratio = {limits.max_ratio:g}), which is how zip bombs look; "
        "raise the limit if this archive is trusted"
    )


def _check_sizes(label: str, members: list[tuple[str, int, int | None]], limits: Limits) -> None:
    """From the headers: (name, size, compressed size or None) per member, before any write."""
    total = 0
    for name, size, packed in members:
        if packed is not None and size > RATIO_MIN_BYTES and size > limits.max_ratio * packed:
            raise _too_compressed(
                label, f"member {name!r}", size=size, packed=packed, limits=limits
            )
        total += size
        if total > limits.max_bytes:
            raise _too_big(label, name, total=total, limits=limits)


class _Budget:
    """Counts the bytes really written, against each member's header and the total limit."""

    def __init__(self, label: str, limits: Limits) -> None:
        self.label, self.limits, self.written = label, limits, 0

    def copy(self, src: BinaryIO, out: Path, *, name: str, declared: int) -> None:
        """Copy one member's bytes from ``src`` to the new file ``out``."""
        got = 0
        remove(out)  # a repeated member replaces the earlier one, never writes through a link
        with writing(out), open(out, "xb") as dst:
            while block := src.read(CHUNK):
                got += len(block)
                self.written += len(block)
                if got > declared:
                    raise DataError(
                        f"{self.label}: refusing to unpack: member {name!r} holds more "
                        f"than the {declared} bytes its header says (a forged archive?)"
                    )
                if self.written > self.limits.max_bytes:
                    raise _too_big(self.label, name, total=self.written, limits=self.limits)
                dst.write(block)


def _untar(archive: Path, dest: Path, label: str, *, limits: Limits) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        bad = []
        for m in members:
            if _escapes(m.name):
                bad.append(f"{m.name!r} escapes the target folder")
            elif (m.issym() or m.islnk()) and _link_escapes(
                m.name if m.issym() else "", m.linkname
            ):
                bad.append(f"{m.name!r} links outside the target folder ({m.linkname!r})")
            elif not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                bad.append(f"{m.name!r} is a device or special file")
            elif m.issparse():
                bad.append(f"{m.name!r} is a sparse file (its real size is not in the header)")
        _refuse(label, bad)
        files = [m for m in members if m.isfile()]
        _check_sizes(label, [(m.name, m.size, None) for m in files], limits)
        total, packed = sum(m.size for m in files), archive.stat().st_size
        if total > RATIO_MIN_BYTES and total > limits.max_ratio * packed:
            raise _too_compressed(label, "the archive", size=total, packed=packed, limits=limits)
        budget = _Budget(label, limits)
        for m in members:
            if m.isfile():
                # Python's data filter as a second guard on the name; the bytes are counted
                safe = tarfile.data_filter(m, str(dest))
                out = dest / safe.name
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src:
                    budget.copy(src, out, name=m.name, declared=m.size)
            else:
                tar.extract(m, dest, filter="data")


def _unzip(archive: Path, dest: Path, label: str, *, limits: Limits) -> None:
    with zipfile.ZipFile(archive) as zf:
        bad = []
        for info in zf.infolist():
            if _escapes(info.filename):
                bad.append(f"{info.filename!r} escapes the target folder")
            elif stat.S_ISLNK(info.external_attr >> 16):
                # zipfile writes a link as a small file holding its target, never a real link
                target = zf.read(info).decode("utf-8", "replace")
                if _link_escapes(info.filename, target):
                    bad.append(f"{info.filename!r} links outside the target folder ({target!r})")
        _refuse(label, bad)
        infos = zf.infolist()
        _check_sizes(label, [(i.filename, i.file_size, i.compress_size) for i in infos], limits)
        budget = _Budget(label, limits)
        for info in infos:
            out = dest.joinpath(*(p for p in info.filename.split("/") if p not in ("", ".")))
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src:
                budget.copy(src, out, name=info.filename, declared=info.file_size)
