"""`fleet backends list [--json]`: the capacity backends installed (the `fleet.backends` entry points), their
package and version, and why one failed to load. Listed in fleet.cli.main.COMMANDS (loaded when called).
"""

from __future__ import annotations

import json

import click

from fleet.cli.inventory_cmds import aligned
from fleet.cli.options import format_option
from fleet.plugins.registry import load_registry

HEADERS = ("NAME", "STATUS", "PACKAGE", "VERSION", "DESCRIPTION")


@click.group("backends")
def backends_group() -> None:
    """The capacity backends installed (entry points), their versions, and why one failed to load."""


@backends_group.command("list")
@format_option("human", "json")
def list_cmd(fmt: str) -> None:
    """List the installed backends: where each comes from and whether it loads.

    A backend is a Python package that declares an entry point in the `fleet.backends` group (docs/plugins.md).
    One that fails to load is listed as `failed` with the reason, and never stops fleet: pools of that backend
    cannot get capacity until it is fixed. Exits 1 when one failed, so that a deployment check can catch it.
    """
    reg = load_registry()
    rows = [{"name": i.name, "status": "ok" if i.error is None else "failed", "package": i.package,
             "version": i.version, "target": i.target, "description": i.description, "error": i.error}
            for i in reg.installed]
    if fmt == "json":  # a list, one object per backend
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no backend installed (is fleet installed as a package? `pip install -e .`)")
    else:
        click.echo(aligned(HEADERS, [(str(r["name"]), str(r["status"]), str(r["package"] or "-"),
                                      str(r["version"] or "-"), str(r["error"] or r["description"])) for r in rows]))
    if any(r["error"] for r in rows):
        raise SystemExit(1)
