"""`python -m cxrbench list` describes every registered item in one line; every command-line flag has help text."""

import argparse

import pytest

from cxrbench import cli
from cxrbench.registry import BACKBONES, DATASETS, METHODS, TASKS


@pytest.mark.parametrize("registry", [DATASETS, METHODS, TASKS, BACKBONES], ids=lambda r: r.kind)
def test_every_registered_item_has_a_one_line_description(registry):
    for name, obj in registry.items():
        text = cli._describe(name, obj)
        assert text and "\n" not in text and len(text) <= 110, (registry.kind, name, text)
        assert not text.startswith("params:"), (name, text)  # a sentence about the item, not its parameter list


def test_every_flag_of_every_command_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in commands.choices.items():
        assert sub.description, f"command {name} has no description"
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
