"""Progress bars that also work in a log: rates and ETA on a terminal, in CI and under tee.

Why: tqdm's usual ``disable=None`` hides the bar whenever stderr is not a terminal, so a
``dvc repro | tee log`` or a CI run printed nothing for minutes; and a bar written to a
file is one endless line of carriage returns. :func:`progress` is a tqdm everywhere: on a
terminal the ordinary live bar; elsewhere the same text as whole lines, one every
``LOG_INTERVAL_S`` seconds and one at the end, each with count, rate and ETA. Inner bars
(``inner=True``: the batches of one epoch, the images of one decode) show on a terminal
only, so a log gets one line per interval from the outer loop, not a line per epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + text) into one whole line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """In a log, a new postfix waits for the next timed line instead of printing one now."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    initial: int = 0,
    inner: bool = False,
    main_process: bool = True,
    stream: TextIO | None = None,
    **options: Any,
) -> tqdm:
    """A tqdm bar for ``desc``; see the module docstring for where it shows and how.

    ``main_process=False`` (other ranks of torchrun or accelerate) shows nothing, so a
    distributed run prints one bar, not one per process. ``options`` go to tqdm as they are
    (``unit_scale=True`` for bytes).
    """
    stream = stream if stream is not None else sys.stderr
    terminal = _is_terminal(stream)
    common: dict[str, Any] = dict(desc=desc, unit=unit, total=total, initial=initial, **options)
    if terminal:
        return tqdm(iterable, file=stream, leave=not inner, disable=not main_process, **common)
    return _LogBar(
        iterable,
        file=_Lines(stream),
        disable=inner or not main_process,
        mininterval=LOG_INTERVAL_S,
        # a fixed miniters keeps tqdm's monitor thread from forcing a redraw of a stale
        # count between two timed lines (it only touches bars with dynamic miniters > 1)
        miniters=1,
        ncols=80,
        ascii=True,
        **common,
    )
