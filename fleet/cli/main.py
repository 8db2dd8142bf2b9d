"""The root `fleet` command: version, the exit-code policy, no tracebacks, and lazily loaded commands.

`COMMANDS` names every top-level command, the module that defines it and its one-line help, so that `fleet
--help` lists them and `fleet list` runs without importing the other command modules (or jsonschema, networkx,
pydantic models of fleet.yaml, …): a command's module is imported when the command is called. A test keeps the
one-line helps here equal to the commands' own.

`FleetGroup.main` is the one place where the process ends: a FleetError prints `error: …` and `hint: …` on
stderr and exits with the error's code (fleet.errors: EXIT_CODES, documented in docs/cli.md); click's own usage
errors exit EXIT_USAGE (64, not click's 2, which `fleet plan --detailed-exitcode` uses for "changes") and are
printed the same way (one `error:` line and a hint; the values of fleet.cli.options' types are checked while
parsing); every error line is one line, whatever the user typed (`one_line`; an error that lists several findings
is printed as its heading and one line per item, `error_lines`); Ctrl-C
exits 130; anything unexpected is reported in one line as an internal error (FLEET_DEBUG=1 shows the traceback).
Called by the `fleet` console script and by tests through click's CliRunner.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from typing import Any

import click

from fleet import __version__
from fleet.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, FleetError

#: name -> (module, attribute, one-line help as `fleet --help` shows it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("fleet.cli.config_cmds", "validate_cmd",
                 "Check a fleet.yaml: schema, references, tenant boundaries, backend settings."),
    "schema": ("fleet.cli.config_cmds", "schema_cmd", "Print the JSON Schema of fleet.yaml (draft 2020-12)."),
    "plan": ("fleet.cli.plan_cmds", "plan_cmd",
             "Show what `fleet apply` would change in the live fleet, and what that does to dispatch."),
    "apply": ("fleet.cli.plan_cmds", "apply_cmd",
              "Make the live fleet match fleet.yaml (or apply a saved plan: `fleet apply plan.json`)."),
    "force-unlock": ("fleet.cli.plan_cmds", "force_unlock_cmd",
                     "Remove the apply lock LOCK_ID left by a process that is gone."),
    "route": ("fleet.cli.route_cmds", "route_group",
              "Show, change and test a project's routing policy (preferred pool, fallback pool, mode)."),
    "execution": ("fleet.cli.route_cmds", "execution_group", ""),
    "list": ("fleet.cli.inventory_cmds", "list_cmd",
             "List every host registered to the fleet (ID, HOSTNAME, STATUS, POOLS, SESSIONS, LAST SEEN), sorted by "
             "hostname; `--json` for scripts: `fleet list --json | jq '[.[] | select(.status == \"active\")]'`."),
    "show": ("fleet.cli.inventory_cmds", "show_cmd", "Show one host in detail (MACHINE_ID: a full ID or a unique prefix)."),
    "hosts": ("fleet.cli.inventory_cmds", "hosts_group",
              "Control hosts remotely through the control plane (pause, resume, drain, revoke, rm)."),
    "machine": ("fleet.cli.inventory_cmds", "machine_group", ""),
    "creds": ("fleet.cli.creds_cmds", "creds_group",
              "NATS identities of the fleet: issue more (admin, viewer, a tenant's submitter, enroll)."),
    "keys": ("fleet.cli.keys_cmds", "keys_group",
             "Enrollment keys: declared in fleet.yaml (`keys:`), applied by `fleet apply`; list the applied ones here."),
    "submit": ("fleet.cli.session_cmds", "submit_cmd", "Run COMMAND on a host of the fleet, placed by PROJECT's routing policy."),
    "sessions": ("fleet.cli.session_cmds", "sessions_group", "Sessions: list them, show one, cancel one, read its output."),
    "up": ("fleet.cli.runtime_cmds", "up_cmd",
           "Start the embedded fleet in the background: nats-server (JetStream) + `fleet server`."),
    "down": ("fleet.cli.runtime_cmds", "down_cmd",
             "Stop what `fleet up` started (and local agents under <state-dir>/agents/), by PID. Harmless if idle."),
    "server": ("fleet.cli.runtime_cmds", "server_cmd",
               "Run the control-plane service in the foreground (enrollment, registry, liveness, host API)."),
    "ping": ("fleet.cli.ping_cmds", "ping_cmd",
             "Ask the control plane whether it answers: version, hosts, leader or standby, and its runnables."),
    "ci": ("fleet.cli.ci_cmds", "ci_group", "CI/CD helpers: the pull-request comment with the plan (docs/ci.md)."),
    "backends": ("fleet.cli.backend_cmds", "backends_group",
                 "The capacity backends installed (entry points), their versions, and why one failed to load."),
    "agent": ("fleet.cli.agent_cmds", "agent_group",
              "Run the worker agent on this machine and control it through its local socket."),
}
HIDDEN = {"execution", "machine"}


def one_line(text: str) -> str:
    """`text` with line breaks, control and invisible (bidi, zero-width) characters escaped: a message that
    quotes what the user typed stays one line and shows what is really there."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace").decode()
                   for ch in text)


_LIST_ITEM = re.compile(r"^  (- |… )")


def error_lines(message: str) -> list[str]:
    """The lines an error message is printed on: one, unless it is a heading that ends with `:` followed by list
    items (`  - item`, and a closing `  … and N more`), as fleet's own errors of several findings are made (the hosts
    that did not converge, the keys refused, what moved since a saved plan); each line escaped by `one_line`. Any
    other newline (in a value the user typed) stays escaped, so that nobody can forge a line of output."""
    head, *items = message.split("\n")
    if items and head.endswith(":") and all(_LIST_ITEM.match(item) for item in items):
        return [one_line(head), *(one_line(item) for item in items)]
    return [one_line(message)]


def echo_error(message: str, hint: str | None = None) -> None:
    """Print `error: message` (and `hint: …`) on stderr: one line each, or the heading and its list items
    (`error_lines`)."""
    first, *rest = error_lines(message)
    click.secho(f"error: {first}", fg="red", err=True)
    for line in rest:
        click.echo(line, err=True)
    if hint:
        click.echo(f"hint: {one_line(hint)}", err=True)


def echo_usage_error(exc: click.UsageError) -> None:
    """A usage error of click's (bad value, unknown option, missing argument) in fleet's form: one `error:` line
    and a hint; a group called without a command shows its help instead."""
    if isinstance(exc, _NO_ARGS_IS_HELP):
        exc.show()
        return
    path = exc.ctx.command_path if exc.ctx is not None else "fleet"
    echo_error(exc.format_message(), f"`{path} --help` shows the usage")


_NO_ARGS_IS_HELP: tuple[type[click.UsageError], ...] = tuple(
    t for t in [getattr(click.exceptions, "NoArgsIsHelpError", None)] if t is not None)


def _never_unencodable() -> None:
    """Print what cannot be encoded (a path with undecodable bytes) as escapes instead of failing on it."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def _short(text: str, limit: int) -> str:
    """The first sentence of `text`, cut at a word to fit `limit` characters (with `...` when cut)."""
    first = text.split(". ")[0].rstrip(".")
    if len(first) <= limit:
        return first
    return first[: max(0, limit - 3)].rsplit(" ", 1)[0] + "..."


class FleetGroup(click.Group):
    """The root group: commands loaded on first use, and every way a command can fail ended in one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        module, attr, _ = found
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, from COMMANDS, without importing any command module."""
        names = [n for n in self.list_commands(ctx) if n not in HIDDEN]
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(name, _short(COMMANDS[name][2], limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            echo_error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        _never_unencodable()
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.UsageError as exc:
            echo_usage_error(exc)
            code = EXIT_USAGE
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code if exc.exit_code != 2 else EXIT_USAGE
        except click.Abort:
            click.echo("interrupted", err=True)
            code = EXIT_INTERRUPTED
        except FleetError as exc:  # raised outside a command (e.g. while loading one)
            echo_error(exc.message, exc.hint)
            code = exc.exit_code
        except BrokenPipeError:  # `fleet list | head`
            code = 0
        except Exception as exc:
            if os.environ.get("FLEET_DEBUG"):
                raise
            echo_error(f"internal error: {type(exc).__name__}: {exc}",
                       "this is a bug in fleet; run again with FLEET_DEBUG=1 for the traceback and report it")
            code = EXIT_ERROR
        sys.exit(code)


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", "-V", prog_name="fleet")
def cli() -> None:
    """fleet: a declarative control plane for fleets of AI-agent worker hosts.

    Describe tenants, projects, pools, routing and enrollment keys in fleet.yaml; `fleet validate` checks it,
    `fleet plan` shows what would change in the live fleet, `fleet apply` makes it so.

    Every command takes --help. Environment: FLEET_FILE, FLEET_NATS_URL, FLEET_STATE_DIR. Exit codes: 0 success,
    1 failed, 2 plan has changes (--detailed-exitcode), 4 stale plan, 5 apply lock held, 6 not converged,
    64 usage error, 69 unavailable, 130 interrupted (docs/cli.md).
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fleet")


if __name__ == "__main__":  # pragma: no cover
    main()
