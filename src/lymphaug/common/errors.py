"""Errors that the CLI turns into one clear message instead of a traceback."""

import re


class LymphaugError(Exception):
    """A problem the user can fix: bad input, bad config, missing files."""


class ConfigError(LymphaugError):
    """params.yaml (or a profile) is invalid."""


class DataError(LymphaugError):
    """An input image, folder, archive or manifest is unusable."""


class LeakageError(LymphaugError):
    """A test-split image was handed to a stage that must never see it."""


class DiskFullError(LymphaugError):
    """The disk filled up while a stage wrote ``path`` (see ``files.disk_full``)."""

    def __init__(self, message: str, path: object) -> None:
        super().__init__(message)
        self.path = path


class LockedError(LymphaugError):
    """Another process is already running the same work."""


_STACKTRACE = re.compile(r"\s*Please check out the root cause in the stacktrace above\.?")


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's error as one short line for our message (its type and first line).

    torch's refusal to unpickle code (``weights_only=True``) is several paragraphs ending
    in advice to load with ``weights_only=False``; it becomes what was refused instead.
    """
    # diffusers points at "the stacktrace above", which a stage never prints: drop the
    # pointer (loading.cause_chain names the cause instead)
    text = _STACKTRACE.sub("", str(err))
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed|\.|$)", text)
        what = f": {found.group(1)}" if found else ""
        return f"{type(err).__name__}: not plain weights (refused, nothing run{what})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= limit else first[:limit] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
