"""`fleet submit` and `fleet sessions list|show|cancel|logs`: run commands on the fleet and follow them.

Built on the Python client (fleet.sessions.client.Client), which talks to the session API of the `fleet server`
replica that dispatches. `fleet submit` prints the session ID once the session is durably stored; with `--wait` it
streams the session's output, then exits with the command's exit code (124 when it timed out, 1 when it failed
without one or was cancelled; the final line on stderr says which). `session_json` is the one public JSON form of a
session (`--json` of every command here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import Counter
from typing import Any

import click

from fleet.bus.messages import FINAL_PHASES, MAX_SUBMIT_BATCH, SessionPage, SessionView
from fleet.cli.inventory_cmds import ago, aligned, duration
from fleet.cli.options import (
    ID,
    LABEL,
    MODEL,
    Count,
    Name,
    NatsSettings,
    Seconds,
    format_option,
    nats_options,
    shown,
)
from fleet.cli.shared import iso_time, run_async
from fleet.errors import EXIT_ERROR, FleetError, NotFound, UsageError
from fleet.sessions.client import Client

SESSION_ID = Name("session ID", pattern=r"^[0-9a-fA-F]{1,20}$", max_length=20, strip=True, lower=True,
                  rule="20 hex characters or a unique prefix", hint="`fleet sessions list` shows them",
                  metavar="SESSION_ID")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class EnvItem(click.ParamType):
    """`NAME=VALUE` (any value up to 8 KiB but a NUL byte) or `NAME` (this shell's value)."""

    name = "NAME[=VALUE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        name, _, val = text.partition("=")
        if not ENV_NAME.match(name):
            self.fail(f"malformed environment variable name {shown(name)} (letters, digits and _, not first a digit)",
                      param, ctx)
        if len(val) > 8192 or "\0" in val:
            self.fail(f"the value of {name} is longer than 8192 characters or has a NUL byte", param, ctx)
        return text


PHASES = ("queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out")
HEADERS = ("ID", "PROJECT", "STATUS", "HOST", "POOL", "ATTEMPT", "AGE", "COMMAND")
EXIT_TIMED_OUT = 124  # as timeout(1)
STATUS_COLOURS = {"succeeded": "green", "running": "cyan", "assigned": "cyan", "queued": "yellow",
                  "failed": "red", "timed_out": "red", "cancelled": "magenta"}


def _client(nats: NatsSettings) -> Client:
    return Client(nats.url, creds=nats.creds, tls=nats.tls, connect_timeout=nats.connect_timeout)


def _iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def session_json(s: SessionView) -> dict[str, Any]:
    """The public JSON of a session: what the server says, every time (submitted_at, started_at, finished_at, each
    history event's `at`) in ISO 8601 with its zone, as the hosts' (fleet.cli.shared.iso_time; docs/cli.md)."""
    data = s.model_dump(mode="json", exclude={"v"})
    for key in ("submitted_at", "started_at", "finished_at"):
        data[key] = iso_time(getattr(s, key) or None)
    for event, model in zip(data.get("history") or [], s.history, strict=False):
        event["at"] = iso_time(model.at)
    return data


def ended_by(exit_code: int | None) -> str:
    """How a command ended, for people: ` (exit 3)`, ` (SIGTERM)` when a signal killed it (the agent reports
    -N for signal N, as Python's subprocess does), `` when it has not ended."""
    if exit_code is None:
        return ""
    if exit_code >= 0:
        return f" (exit {exit_code})"
    try:
        return f" ({signal.Signals(-exit_code).name})"
    except ValueError:
        return f" (signal {-exit_code})"


def exit_code_of(s: SessionView) -> int:
    """What `fleet submit --wait` exits with: 124 when it timed out, else the command's exit code (128 + N when
    signal N killed it), else 1."""
    if s.phase == "timed_out":
        return EXIT_TIMED_OUT
    if s.exit_code is not None and s.exit_code >= 0:
        return s.exit_code
    if s.exit_code is not None:  # killed by a signal: as a shell reports it
        return 128 + -s.exit_code
    return EXIT_ERROR


def summary(s: SessionView) -> str:
    """One line: `session 0195… succeeded (exit 0) on host-a in 1.2s, attempt 1 of 3`."""
    where = f" on {s.hostname or s.host}" if s.host else ""
    took = f" in {s.finished_at - s.started_at:.1f}s" if s.finished_at and s.started_at else ""
    code = ended_by(s.exit_code)
    why = f": {s.reason}" if s.reason else ""
    attempt = f", attempt {s.attempt} of {s.max_attempts}" if s.attempt > 1 else ""
    if s.phase == "queued":
        return f"session {s.id} queued{why}"
    return f"session {s.id} {s.phase}{code}{where}{took}{attempt}{why}"


def row(s: SessionView, now: float) -> tuple[str, ...]:
    command = " ".join(s.command)
    host = (s.hostname or s.host[:8]) if s.host else "-"
    return (s.id, s.project, s.phase, host, s.pool or "-",
            f"{s.attempt}/{s.max_attempts}", ago(now - s.submitted_at),
            command if len(command) <= 40 else command[:39] + "…")


def render_table(rows: list[tuple[str, ...]], colour: bool = False) -> str:
    """`fleet sessions list`'s table."""
    return aligned(HEADERS, rows, colours=STATUS_COLOURS, colour=colour)


def render_show(s: SessionView) -> str:
    took = duration(s.finished_at - s.started_at) if s.finished_at and s.started_at else "-"
    rows = [
        ("ID", s.id),
        ("Project", f"{s.project} (tenant {s.tenant})"),
        ("Status", s.phase + ended_by(s.exit_code)),
        ("Command", " ".join(s.command)),
        ("Host", f"{s.hostname} ({s.host})" if s.hostname and s.host else s.host or "-"),
        ("Pool", s.pool or "-"),
        ("Attempt", f"{s.attempt} of {s.max_attempts}"),
        ("Fencing token", str(s.fence) if s.fence is not None else "-"),
        ("Labels", ", ".join(s.labels + [f"{label} (the route's)" for label in s.route_labels]) or "-"),
        ("Model", s.model or (f"{s.route_model} (the route's)" if s.route_model else "-")),
        ("Priority", str(s.priority)),
        ("Timeout", f"{s.timeout_s:g}s" if s.timeout_s else "-"),
        ("Environment", ", ".join(s.env) or "-"),
        ("Submitted", _iso(s.submitted_at) or "-"),
        ("Ran for", took),
    ]
    if s.reason:
        rows.insert(3, ("Waiting because" if s.phase == "queued" else "Reason", s.reason))
    if s.phase == "queued" and s.wait_pool:
        rows.insert(4, ("Waiting for", f"pool {s.wait_pool} ({(s.wait_kind or '').replace('_', ' ')})"))
    lines = [f"{k + ':':<17}{v}" for k, v in rows]
    lines.append("History:")
    t0 = s.submitted_at
    for ev in s.history:
        host = f"  host {ev.host[:8]}" if ev.host else ""
        note = f"  {ev.note}" if ev.note else ""
        lines.append(f"  {_iso(ev.at)}  +{ev.at - t0:7.3f}s  {ev.phase:<10} attempt {ev.attempt}{host}{note}")
    tail = s.output_tail.rstrip("\n")
    lines.append("Output (tail):" + ("  (none)" if not tail else ""))
    lines += [f"  {line}" for line in tail.splitlines()[-20:]]
    return "\n".join(lines)


def _env(items: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            if name not in os.environ:
                raise UsageError(f"--env {name}: not set in this shell", hint="pass --env NAME=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


@click.command("submit", context_settings={"allow_interspersed_args": False})
@click.option("--project", "-p", required=True, type=ID, help="The project whose routing policy places the session.")
@click.option("--label", "-l", "labels", multiple=True, type=LABEL,
              help="A label the host must have (name or name=value); repeat for several.")
@click.option("--model", type=MODEL, default=None, help="A model the host must support.")
@click.option("--priority", type=Count(-1000, 1000), default=0, show_default=True,
              help="Higher runs first among queued sessions of the project's pools (FIFO within a priority).")
@click.option("--timeout", "timeout_s", type=Seconds(min=0.001, max=7 * 86400, min_open=True), default=None,
              help="Stop the command after this many seconds (status timed_out).")
@click.option("--max-attempts", type=Count(1, 20), default=3, show_default=True,
              help="Runs allowed when hosts die under it (a lost session is queued again until then).")
@click.option("--env", "-e", "env", multiple=True, type=EnvItem(),
              help="NAME=VALUE for the command's environment (NAME alone passes this shell's value); repeatable. "
                   "Values are stored with the session and only names are ever shown.")
@click.option("--wait", "-w", is_flag=True,
              help="Follow the session: stream its output, then exit with the command's exit code.")
@click.option("--count", "-n", type=Count(1, MAX_SUBMIT_BATCH), default=1, show_default=True,
              help=f"Submit this many sessions of COMMAND in one request (at most {MAX_SUBMIT_BATCH}); "
                   "prints one ID per line.")
@click.argument("command", nargs=-1, required=True)
@nats_options
@format_option("human", "json", default="human")
def submit_cmd(project: str, labels: tuple[str, ...], model: str | None, priority: int, timeout_s: float | None,
               max_attempts: int, env: tuple[str, ...], wait: bool, count: int, command: tuple[str, ...],
               nats: NatsSettings, fmt: str) -> None:
    """Run COMMAND on a host of the fleet, placed by PROJECT's routing policy.

    Prints the session ID once the session is durably stored (queued or already assigned to a host). Put `--`
    before the command when it has options of its own:

        fleet submit --project my-fintech-app --model claude-3-5-sonnet -- python3 -c 'print("hello")'

    With --wait the output streams as it comes and the exit code is the command's (124: timed out, 1: failed
    without an exit code or cancelled).
    """
    env_map = _env(env)
    if count > 1:
        if wait:
            raise UsageError("--wait follows one session, --count submits many", hint="drop one of them")
        many = run_async(lambda: _submit_count(nats, project, list(command), count, labels=labels, model=model,
                                               priority=priority, timeout=timeout_s, max_attempts=max_attempts,
                                               env=env_map))
        if fmt == "json":
            click.echo(json.dumps([session_json(x) for x in many], indent=2))
            return
        click.echo("\n".join(x.id for x in many))
        placed = sum(1 for x in many if x.phase != "queued")
        waits = Counter(x.reason or "waiting for a free slot" for x in many if x.phase == "queued")
        click.echo(f"{len(many)} sessions stored: {placed} assigned to hosts, {len(many) - placed} queued", err=True)
        for why, n in waits.most_common(5):
            click.echo(f"queued ({n}): {why}", err=True)
        return
    submitted: list[str] = []

    async def run() -> SessionView:
        async with _client(nats) as client:
            try:
                s = await client.submit(project, list(command), labels=labels, model=model, priority=priority,
                                        timeout=timeout_s, max_attempts=max_attempts, env=env_map)
            except NotFound as exc:
                raise await _unknown_project(nats, project, exc) from None
            submitted.append(s.id)
            if fmt != "json":
                click.echo(s.id)
                if s.phase == "queued":
                    click.echo(f"queued: {s.reason or 'waiting for a free slot'}", err=True)
                else:
                    click.echo(f"assigned to {s.hostname or s.host} (pool {s.pool})", err=True)
            if not wait:
                return s
            if fmt != "json":
                async for text in client.logs(s.id, follow=True):
                    sys.stdout.write(text)
                    sys.stdout.flush()
            return await client.wait(s.id)

    def interrupted() -> tuple[str, str | None]:
        if not submitted:
            return ("the session may or may not have been stored",
                    f"`fleet sessions list --project {project}` shows it if it was")
        sid = submitted[0]
        if not wait:
            return f"session {sid} is stored and runs", f"`fleet sessions show {sid}` shows it"
        return (f"stopped waiting for session {sid}, which keeps running on the fleet",
                f"follow it again with `fleet sessions logs {sid} --follow`; stop it with `fleet sessions cancel {sid}`")

    s = run_async(run, interrupted)
    if fmt == "json":
        click.echo(json.dumps(session_json(s), indent=2))
    elif wait:
        click.secho(summary(s), err=True, fg="green" if s.phase == "succeeded" else "red")
    if wait and s.phase in FINAL_PHASES:
        sys.exit(exit_code_of(s))


async def _submit_count(nats: NatsSettings, project: str, command: list[str], count: int, **kw: Any
                        ) -> list[SessionView]:
    async with _client(nats) as client:
        return await client.submit_many(project, [command] * count, **kw)


@click.group("sessions")
def sessions_group() -> None:
    """Sessions: list them, show one, cancel one, read its output."""


@sessions_group.command("list")
@click.option("--project", "-p", type=ID, default=None, help="Only this project's sessions.")
@click.option("--status", "phase", type=click.Choice(PHASES), default=None, help="Only sessions in this phase.")
@click.option("--limit", type=Count(1, 10_000), default=1000, show_default=True, help="At most this many (newest).")
@click.option("--all", "every", is_flag=True, help="Every session the server holds (page after page), not only the "
              "newest --limit.")
@nats_options
@format_option("table", "json", default="table")
def list_cmd(project: str | None, phase: str | None, limit: int, every: bool, nats: NatsSettings, fmt: str) -> None:
    """List sessions, oldest first (ID, PROJECT, STATUS, HOST, POOL, ATTEMPT, AGE, COMMAND); `--json` for scripts:
    `{"sessions": […], "total": M, "truncated": …, "next": …}`, where `truncated` says the list is not every session
    that matches (the newest --limit of `total`; --all for every one). A submitter sees its tenant's sessions
    only."""

    async def run() -> SessionPage:
        async with _client(nats) as client:
            return await client.list_page(project=project, phase=phase, limit=limit, every=every)

    page = run_async(run)
    sessions = page.sessions
    if fmt == "json":
        click.echo(json.dumps({"sessions": [session_json(s) for s in sessions], "total": page.total,
                               "truncated": page.truncated, "next": page.next}, indent=2))
        return
    now = time.time()
    click.echo(render_table([row(s, now) for s in sessions], colour=sys.stdout.isatty()))
    if page.truncated:
        click.echo(f"showing {len(sessions)} of {page.total} sessions (the newest); --limit N for more, --all for "
                   "every one")
    queued = [s for s in sessions if s.phase == "queued" and s.reason]
    for s in queued[:10]:
        click.echo(f"{s.id} waits: {s.reason}", err=True)


@sessions_group.command("show")
@click.argument("session_id", type=SESSION_ID)
@nats_options
@format_option("human", "json", default="human")
def show_cmd(session_id: str, nats: NatsSettings, fmt: str) -> None:
    """Show one session: phase history with times, host, attempt, fencing token, exit code, output tail."""

    async def run() -> SessionView:
        async with _client(nats) as client:
            return await client.get(session_id)

    s = run_async(run)
    click.echo(json.dumps(session_json(s), indent=2) if fmt == "json" else render_show(s))


@sessions_group.command("cancel")
@click.argument("session_id", type=SESSION_ID)
@nats_options
@format_option("human", "json", default="human")
def cancel_cmd(session_id: str, nats: NatsSettings, fmt: str) -> None:
    """Cancel a session: a queued one at once, a running one by stopping its command on its host."""

    async def run() -> SessionView:
        async with _client(nats) as client:
            s = await client.cancel(session_id)
            return s if s.final else await client.wait(s.id, timeout=15)

    s = run_async(run)
    if fmt == "json":
        click.echo(json.dumps(session_json(s), indent=2))
    elif s.final:
        click.echo(summary(s))
    else:
        click.echo(f"session {s.id}: asked its host to stop it; still {s.phase}", err=True)


@sessions_group.command("logs")
@click.argument("session_id", type=SESSION_ID)
@click.option("--follow", "-f", is_flag=True, help="Keep printing output as it comes, until the session ends.")
@nats_options
@format_option("text", "json", default="text")
def logs_cmd(session_id: str, follow: bool, nats: NatsSettings, fmt: str) -> None:
    """Print a session's output (the bounded tail the server keeps; with --follow, the rest as it comes).

    `--json`: one JSON object per line, `{"session", "text"}` for each piece of output as it arrives, then
    `{"session", "end", "phase", "exit_code"}` (`end`: the session is over and its output complete).
    """

    async def run() -> None:
        async with _client(nats) as client:
            async for text in client.logs(session_id, follow=follow):
                if fmt == "json":
                    sys.stdout.write(json.dumps({"session": session_id, "text": text}) + "\n")
                else:
                    sys.stdout.write(text)
                sys.stdout.flush()
            if fmt == "json":
                s = await client.get(session_id)
                sys.stdout.write(json.dumps({"session": s.id, "end": s.final, "phase": s.phase,
                                             "exit_code": s.exit_code}) + "\n")

    def interrupted() -> tuple[str, str | None]:
        return ("stopped following the output; the session keeps running",
                f"resume with `fleet sessions logs {session_id} --follow` (it prints the kept output again first)")

    run_async(run, interrupted)


async def _unknown_project(nats: NatsSettings, project: str, exc: NotFound) -> FleetError:
    """The server's "no project" refusal, with a 'did you mean' among the applied projects when this identity may
    read them (an operator's; a submitter is told only that the project is not its tenant's)."""
    if not exc.message.startswith("no project"):
        return exc
    from fleet.bus.connection import connect
    from fleet.cli.route_cmds import read_applied, unknown_project_hint

    try:
        async with await connect(**nats.kwargs(), name="fleet-cli") as bus:
            applied = await read_applied(bus)
    except FleetError:
        return exc
    return NotFound(exc.message, hint=unknown_project_hint(project, applied.routes))
