"""The README is the user's door: its commands and column reference must match the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite.commands.cli import build_parser
from suite.store.schema import TABLES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("table", ["runs", "comm", "rank_steps"])
def test_every_column_documented_with_the_schema_text(table):
    for column in TABLES[table]:
        assert f"| `{column.name}` | {column.doc} |" in README, column.name


@pytest.mark.parametrize("table", ["fidelity", "projection"])
def test_later_tables_columns_listed(table):
    for column in TABLES[table]:
        assert f"| `{column.name}` |" in README, column.name


def test_quick_start_is_the_two_make_commands():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick


def test_every_cli_command_is_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:
        assert f"`diffscale {command}" in README, command
