"""Errors that the CLI turns into one clear message instead of a traceback."""


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
