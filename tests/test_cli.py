"""``lymphaug <stage> --help``: every option of every stage says what it does."""

from __future__ import annotations

import argparse

import pytest

from lymphaug.cli import STAGES, build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"lymphaug": parser, **sub.choices}


@pytest.mark.parametrize("name", ["lymphaug", *STAGES])
def test_every_option_has_help(name):
    parser = subcommands()[name]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"lymphaug {name}: {action.option_strings or action.dest} has no help"


def test_train_help_explains_condition_and_seed(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--condition {base,dct,synthetic} training set:" in text
    assert "--seed SEED seed of the initial weights" in text
