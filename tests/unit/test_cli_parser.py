"""The ``driftline`` parser: every command it lists answers ``--help``, and lives in the module named after it."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator

import pytest

from driftline.streams.cli import build_parser

COMMANDS = {"up", "example", "worker", "produce", "tail", "alerts", "explain", "topics", "report", "trainer", "status",
            "model", "profile", "schemas"}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, p in action.choices.items()}


def every_command(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Each command and subcommand as its words, e.g. ("topics", "create")."""
    for name, sub in subcommands(parser).items():
        yield (*path, name)
        yield from every_command(sub, (*path, name))


def help_of(argv: list[str]) -> tuple[int | str | None, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    return exited.value.code, out.getvalue()


def test_the_top_level_commands_are_exactly_these() -> None:
    assert set(subcommands(build_parser())) == COMMANDS
    code, text = help_of(["--help"])
    assert code == 0
    listed = [set(group.split(",")) for group in re.findall(r"\{([a-z,-]+)\}", text)]
    assert COMMANDS in listed, listed  # (another brace group is --log-format's choices)


@pytest.mark.parametrize("words", sorted(every_command(build_parser())), ids=" ".join)
def test_every_command_answers_help(words: tuple[str, ...]) -> None:
    code, text = help_of([*words, "--help"])
    assert code == 0
    assert text.startswith(f"usage: driftline {' '.join(words)}")


@pytest.mark.parametrize("words", sorted(every_command(build_parser())), ids=" ".join)
def test_a_command_runs_from_the_module_named_after_it(words: tuple[str, ...]) -> None:
    parser = build_parser()
    for word in words:
        parser = subcommands(parser)[word]
    func = parser.get_default("func")
    if func is None:  # a group: its subcommands carry the function
        assert subcommands(parser)
        return
    module = func.__module__.rsplit(".", 1)[-1]
    assert module in {words[0], f"{words[0]}_command"}, f"driftline {' '.join(words)} runs from {func.__module__}"


def test_version_and_the_machine_readable_flags() -> None:
    code, text = help_of(["--version"])
    assert code == 0 and re.fullmatch(r"driftline \S+\n", text), text
    for words in (["status"], ["model", "list"], ["alerts"]):
        code, text = help_of([*words, "--help"])
        assert code == 0 and "--json" in text, words
