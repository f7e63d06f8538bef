"""progress(): whole lines with count, rate and ETA in a log; nothing from inner bars there."""

from __future__ import annotations

import io
import re

from lymphaug.common import progress as progress_mod
from lymphaug.common.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_with_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress_mod, "LOG_INTERVAL_S", 0.0)  # a line per update
    log = io.StringIO()
    with progress(total=3, desc="train", unit="epoch", stream=log) as bar:
        for epoch in range(3):
            bar.set_postfix(val_acc=f"0.{epoch}")  # waits for the next line, prints none
            bar.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("train:   0%") and lines[-1].startswith("train: 100%")
    assert re.search(r"3/3 \[\d\d:\d\d<00:00, +[\d.]+(epoch/s|s/epoch), val_acc=0\.2\]", lines[-1])
    assert len(lines) == len(set(lines))  # no line printed twice (the close repeats nothing)


def test_inner_and_other_ranks_stay_silent_in_a_log():
    log = io.StringIO()
    for bar in (
        progress(range(5), desc="epoch 1/2", stream=log, inner=True),
        progress(range(5), desc="train", stream=log, main_process=False),
    ):
        assert list(bar) == list(range(5))
    assert log.getvalue() == ""


def test_a_terminal_gets_the_live_bar():
    tty = Terminal()
    assert list(progress(range(4), desc="decode", unit="img", stream=tty)) == [0, 1, 2, 3]
    assert tty.getvalue().startswith("\rdecode:") and "4/4" in tty.getvalue()  # redrawn in place
