"""Finding the images of a data set laid out as class folders.

A data set root holds one sub-folder per class. Files directly in the root
(README.md, SHA256SUMS, a licence) are documentation and ignored. Inside a class
folder every file, in any sub-folder, is an image candidate; the only files
skipped silently are ones no person put there on purpose: hidden files
(``.DS_Store``, ``._x`` AppleDouble forks, anything starting with a dot),
``Thumbs.db`` and ``desktop.ini``, and ``__MACOSX`` folders. Anything else that
does not decode (``notes.txt``, a truncated TIFF) is an unreadable file and goes
through the ``on_unreadable`` policy, so it is never silently dropped.

Folder names are compared with the configured classes in Unicode NFC: macOS writes
``é`` as ``e`` + a combining accent (NFD), which looks the same but is another string.
A name that still does not match is shown with its escapes when it is not plain ASCII.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from lymphaug.common.errors import DataError

IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


def ignorable(name: str) -> bool:
    """Hidden or OS-generated entries that are never data."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def shown(name: str) -> str:
    """A name as the user should read it: escapes when it is not plain ASCII (look-alikes)."""
    return repr(name) if name.isascii() else f"{name!r} (written {ascii(name)})"


def class_folders(root: Path, classes: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Configured class -> its folder under ``root`` (matched in NFC), and the other folders.

    Raises DataError if two folders are the same class in different Unicode forms.
    """
    wanted = {nfc(c): c for c in classes}
    found: dict[str, Path] = {}
    others = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not ignorable(p.name)):
        cls = wanted.get(nfc(d.name))
        if cls is None:
            others.append(d.name)
        elif cls in found:
            raise DataError(
                f"{root}: folders {shown(found[cls].name)} and {shown(d.name)} are both class "
                f"{cls} (the same name in two Unicode forms); merge them"
            )
        else:
            found[cls] = d
    return found, others


@dataclass(frozen=True)
class SourceFile:
    cls: str
    path: Path
    rel: str  # path relative to the class folder, POSIX separators


def scan_class_folders(
    root: Path, classes: list[str], label: str | None = None
) -> dict[str, list[SourceFile]]:
    """Image candidates per configured class, sorted by path.

    Raises one DataError listing every layout problem at once: a folder that is
    not a configured class, a configured class with no folder or no files.
    """
    if not root.is_dir():
        raise DataError(f"{label or root}: data folder not found")
    folders, unknown = class_folders(root, classes)
    label = label or str(root)
    problems = []
    if unknown:
        problems.append(
            f"folder(s) [{', '.join(shown(u) for u in unknown)}] are not configured classes "
            f"[{', '.join(shown(c) for c in classes)}] "
            "(add them to `classes` in params.yaml, or move them out)"
        )
    found: dict[str, list[SourceFile]] = {}
    for cls in classes:
        folder = folders.get(cls)
        if folder is None:
            problems.append(f"class {cls}: no folder {cls}/")
            continue
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(ignorable(part) for part in p.relative_to(folder).parts)
        )
        if not files:
            problems.append(f"class {cls}: folder {cls}/ holds no images")
        found[cls] = [SourceFile(cls, p, p.relative_to(folder).as_posix()) for p in files]
    if problems:
        raise DataError(f"{label}: " + "; ".join(problems))
    return found


def find_class_root(top: Path, classes: list[str], max_depth: int = 4) -> Path:
    """The folder holding the class folders: ``top`` or a chain of single sub-folders.

    Archives often wrap the data set in one top-level folder (``lymphoma/CLL/...``).
    """
    cur = top
    for _ in range(max_depth + 1):
        dirs = sorted(p for p in cur.iterdir() if p.is_dir() and not ignorable(p.name))
        if class_folders(cur, classes)[0]:
            return cur
        if len(dirs) != 1:
            break
        cur = dirs[0]
    shown = sorted(p.name for p in cur.iterdir() if not ignorable(p.name))[:10]
    raise DataError(
        f"no class folders {classes} found (looked in {cur.relative_to(top).as_posix()}/, "
        f"which holds {shown})"
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_names(rels: list[str]) -> list[str]:
    """Deterministic, unique PNG file names for the sources of one class.

    The source's stem is kept when it is unique (``000.tif`` -> ``000.png``), so a
    person can trace an image back by eye; sub-folders join with ``__``; characters
    outside ``[A-Za-z0-9._-]`` become ``_``. Stems shared by several sources
    (``a.png`` and ``a.jpg``) keep their extension (``a_png.png``, ``a_jpg.png``).
    """

    def stem(rel: str) -> str:
        p = Path(rel)
        return _UNSAFE.sub("_", "__".join([*p.parent.parts, p.stem])) or "image"

    stems = [stem(r) for r in rels]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names, used = [], set()
    for rel, s in zip(rels, stems, strict=True):
        base = s if counts[s] == 1 else f"{s}_{_UNSAFE.sub('_', Path(rel).suffix.lstrip('.'))}"
        name, n = base, 2
        while name.lower() in used:  # case-insensitive file systems
            name, n = f"{base}-{n}", n + 1
        used.add(name.lower())
        names.append(f"{name}.png")
    return names
