"""The root `fleet` command: version, error handling, and the registry of command modules.

Every command module in COMMAND_MODULES exposes `register(group)`. FleetGroup turns FleetError into a
one-line `error: …` (+ hint) on stderr with the error's exit code, so no traceback reaches a user; click's
own usage errors exit 2. Called by the `fleet` console script and by tests through click's CliRunner.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from fleet import __version__
from fleet.errors import FleetError

COMMAND_MODULES = [
    "fleet.cli.config_cmds",
    "fleet.cli.runtime_cmds",
    "fleet.cli.agent_cmds",
    "fleet.cli.inventory_cmds",
    "fleet.cli.keys_cmds",
    "fleet.cli.plan_cmds",
    "fleet.cli.route_cmds",
]


def echo_error(message: str, hint: str | None = None) -> None:
    """Print `error: message` (and `hint: …`) on stderr."""
    click.secho(f"error: {message}", fg="red", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)


class FleetGroup(click.Group):
    """A click group that reports FleetError (and Ctrl-C) in one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            echo_error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", "-V", prog_name="fleet")
def cli() -> None:
    """fleet: a declarative control plane for fleets of AI-agent worker hosts.

    Describe tenants, projects, pools, routing and enrollment keys in fleet.yaml; `fleet validate` checks it,
    `fleet plan` shows what would change in the live fleet, `fleet apply` makes it so.

    Every command takes --help. Environment: FLEET_FILE, FLEET_NATS_URL, FLEET_STATE_DIR.
    """


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(cli)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fleet")


if __name__ == "__main__":  # pragma: no cover
    main()
