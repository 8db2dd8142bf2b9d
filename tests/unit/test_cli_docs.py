"""docs/cli.md is generated from the click tree: this fails when a command's help changed and the doc was not
regenerated (`python -m fleet.cli.docgen > docs/cli.md`). Also: every command answers --help with exit 0; the
one-line helps that `fleet --help` shows without loading the commands are the commands' own; `fleet --help` and
`fleet list` load no module they do not need; the exit codes documented are the ones fleet uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fleet.cli.docgen import render
from fleet.cli.main import COMMANDS, HIDDEN, cli
from fleet.errors import EXIT_CODES

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m fleet.cli.docgen > docs/cli.md"


def _commands(group: click.Group, path: list[str]):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
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


def test_the_lazy_command_table_says_what_the_commands_say():
    ctx = click.Context(cli)
    for name, (_, _, short) in COMMANDS.items():
        cmd = cli.get_command(ctx, name)
        assert cmd is not None and cmd.name == name, name
        assert cmd.hidden == (name in HIDDEN), name
        if not cmd.hidden:
            first = " ".join((cmd.help or "").split("\n\n")[0].split())
            assert short == first, f"COMMANDS[{name!r}] help differs from the command's: {first!r}"


HEAVY = ("jsonschema", "networkx", "ruamel", "nats", "pydantic", "rich", "fleet.schema", "fleet.reconciler")


def _loaded_by(argv: list[str]) -> set[str]:
    code = ("import sys, json\nfrom fleet.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"FLEET_NATS_URL": "nats://127.0.0.1:9", "FLEET_NATS_TIMEOUT": "0.2", "PATH": ""})
    return set(json.loads(out.stderr.rsplit("MODULES ", 1)[1]))


def test_fleet_help_loads_no_command_module():
    loaded = _loaded_by(["--help"])
    assert not [m for m in loaded if m.startswith("fleet.cli.") and m != "fleet.cli.main"]
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)]


def test_fleet_list_loads_only_what_it_needs():
    loaded = _loaded_by(["list"])  # fails to connect (nothing listens on port 9): what did it load to get there?
    cli_modules = {m for m in loaded if m.startswith("fleet.cli.")}
    assert cli_modules <= {"fleet.cli.main", "fleet.cli.inventory_cmds", "fleet.cli.options", "fleet.cli.shared"}
    # of fleet.schema only its vocabulary (the names' patterns and limits, the enums: pure constants)
    assert not [m for m in loaded if m.startswith(("jsonschema", "networkx", "ruamel", "rich", "fleet.schema",
                                                   "fleet.reconciler", "fleet.plugins"))
                and m not in ("fleet.schema", "fleet.schema.vocabulary")]


@pytest.mark.parametrize("code", sorted(EXIT_CODES))
def test_every_exit_code_is_documented(code):
    assert f"| {code} | {EXIT_CODES[code]} |" in DOC.read_text(encoding="utf-8")
