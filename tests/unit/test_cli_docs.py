"""docs/cli.md is generated from the click tree: this fails when a command's help changed and the doc was not
regenerated (`python -m fleet.cli.docgen > docs/cli.md`). Also: every command answers --help with exit 0."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from fleet.cli.docgen import render
from fleet.cli.main import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m fleet.cli.docgen > docs/cli.md"


def _commands(group: click.Group, path: list[str]):
    for name, cmd in group.commands.items():
        if cmd.hidden:  # deprecated aliases have tests of their own
            continue
        yield [*path, name]
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, [*path, name])


def test_every_command_has_help():
    paths = list(_commands(cli, []))
    assert len(paths) > 25
    for path in paths:
        r = CliRunner().invoke(cli, [*path, "--help"], prog_name="fleet")
        assert r.exit_code == 0, (path, r.output)
        assert "Usage: fleet " + " ".join(path) in r.output
