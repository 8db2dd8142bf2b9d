"""`fleet list`, `fleet show` and `fleet hosts pause|resume|drain|revoke`: the live inventory (formats of the seed).

They ask the control plane (`fleet server`) over NATS through fleet.service.client. `fleet machine …` is the
hidden, deprecated alias of all of them: it works, and prints a deprecation notice on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click

from fleet.cli.options import NatsSettings, json_option, nats_options
from fleet.service.client import ControlPlaneClient

HEADERS = ("ID", "HOSTNAME", "STATUS", "POOLS", "SESSIONS", "LAST SEEN")
MIN_WIDTHS = (36, 16, 8, 27, 9, 0)
STATUS_COLOURS = {"active": "green", "paused": "yellow", "draining": "yellow", "offline": "red", "revoked": "red"}


def ago(seconds: float | None) -> str:
    """`2s ago`, `5m ago`, `3h ago`, `2d ago`; `never` before the first heartbeat."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return " ".join(parts)


def host_row(host: dict[str, Any]) -> tuple[str, ...]:
    sessions = host.get("sessions") or {}
    return (
        host["id"],
        host.get("hostname") or "-",
        host["status"],
        ", ".join(host.get("pools") or []) or "-",
        f"{sessions.get('running', 0)}/{sessions.get('max', 0)}",
        ago(host.get("last_seen_s_ago")),
    )


def render_table(rows: list[tuple[str, ...]], colour: bool = False) -> str:
    """Plain aligned columns like the seed's example output (two spaces at least between columns)."""
    widths = [max([MIN_WIDTHS[i], len(HEADERS[i])] + [len(r[i]) for r in rows]) for i in range(len(HEADERS))]
    lines = []
    for row in [HEADERS, *rows]:
        cells = []
        for i, cell in enumerate(row):
            text = cell.ljust(widths[i] + 2) if i < len(row) - 1 else cell
            if colour and i == 2 and row is not HEADERS:
                text = click.style(text, fg=STATUS_COLOURS.get(cell))
            cells.append(text)
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def render_show(host: dict[str, Any]) -> str:
    cap = host.get("capacity") or {}
    sessions = host.get("sessions") or {}
    status = host["status"] + (" (drained: no running sessions)" if host.get("drained") else "")
    uptime = "-" if host.get("uptime_s") is None else duration(host["uptime_s"])
    active = host.get("active_sessions") or []
    modes = host.get("pool_modes") or {}
    rows = [
        ("ID", host["id"]),
        ("Hostname", host.get("hostname")),
        ("Status", status),
        ("Tenant", host.get("tenant")),
        ("Platform version", f"fleet {host['platform_version']}" if host.get("platform_version") else "-"),
        ("Uptime", f"{uptime} (last restart {host.get('started_at') or '-'})"),
        ("Last seen", ago(host.get("last_seen_s_ago"))),
        ("Capacity", f"maxConcurrentSessions={cap.get('maxConcurrentSessions')}  "
                     f"poolMaxDiskGb={cap.get('poolMaxDiskGb') if cap.get('poolMaxDiskGb') is not None else '-'}"),
        ("Sessions", f"{sessions.get('running', 0)}/{sessions.get('max', 0)}"),
    ]
    lines = [f"{k + ':':<19}{v}" for k, v in rows]
    lines.append("Active sessions:" + ("   (none)" if not active else ""))
    lines += [f"  {s['id']:<36}  {s['phase']}" for s in active]
    lines.append("Pools:")
    lines += [f"  {pid:<27}  {modes.get(pid, 'persistent')}" for pid in host.get("pools") or []]
    tail = [
        ("Labels", ", ".join(host.get("labels") or []) or "-"),
        ("Models", ", ".join(host.get("models") or []) or "-"),
        ("Credential socket", host.get("credential_socket") or "-"),
        ("Enrolled", f"{host.get('enrolled_at')} with key {host.get('key_id')}"),
    ]
    if host.get("revoked_at"):
        tail.append(("Revoked", host["revoked_at"]))
    lines += [f"{k + ':':<19}{v}" for k, v in tail]
    return "\n".join(lines)


async def _with_client(nats: NatsSettings, action: str, *args: str) -> Any:
    async with ControlPlaneClient(nats.url, nats.creds, nats.connect_timeout) as client:
        if action == "list":
            return await client.list_hosts()
        if action == "show":
            return await client.get_host(args[0])
        return await client.command(args[0], action)


@click.command("list")
@nats_options
@json_option
def list_cmd(nats: NatsSettings, as_json: bool) -> None:
    """List every host registered to the fleet (ID, HOSTNAME, STATUS, POOLS, SESSIONS, LAST SEEN)."""
    hosts = asyncio.run(_with_client(nats, "list"))
    if as_json:
        click.echo(json.dumps(hosts, indent=2))
        return
    click.echo(render_table([host_row(h) for h in hosts], colour=sys.stdout.isatty()))


@click.command("show")
@click.argument("machine_id")
@nats_options
@json_option
def show_cmd(machine_id: str, nats: NatsSettings, as_json: bool) -> None:
    """Show one host in detail (MACHINE_ID: a full ID or a unique prefix)."""
    host = asyncio.run(_with_client(nats, "show", machine_id))
    click.echo(json.dumps(host, indent=2) if as_json else render_show(host))


def _host_command(action: str, doc: str) -> click.Command:
    @click.command(action, help=doc)
    @click.argument("machine_id")
    @nats_options
    @json_option
    def command(machine_id: str, nats: NatsSettings, as_json: bool) -> None:
        host = asyncio.run(_with_client(nats, action, machine_id))
        if as_json:
            click.echo(json.dumps(host, indent=2))
        else:
            click.echo(f"host {host['id']} ({host.get('hostname')}) is now {host['status']}")

    return command


HOST_ACTIONS = {
    "pause": "Pause a host: it stays connected but takes no new sessions.",
    "resume": "Resume a paused or draining host.",
    "drain": "Drain a host: it finishes its running sessions, takes no new ones, then reports idle.",
    "revoke": "Revoke a host: its credential stops working and its agent exits.",
}


@click.group("hosts")
def hosts_group() -> None:
    """Control hosts remotely through the control plane (pause, resume, drain, revoke)."""


for _action, _doc in HOST_ACTIONS.items():
    hosts_group.add_command(_host_command(_action, _doc))


class DeprecatedGroup(click.Group):
    """`fleet machine …`: the old name; works, but says so on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        click.echo("warning: `fleet machine` is deprecated and will be removed; use `fleet list`, `fleet show` "
                   "and `fleet hosts` instead", err=True)
        return super().invoke(ctx)


@click.group("machine", cls=DeprecatedGroup, hidden=True)
def machine_group() -> None:
    """Deprecated alias of `fleet list`, `fleet show` and `fleet hosts`."""


machine_group.add_command(list_cmd)
machine_group.add_command(show_cmd)
for _action, _doc in HOST_ACTIONS.items():
    machine_group.add_command(_host_command(_action, _doc))


def register(group: click.Group) -> None:
    group.add_command(list_cmd)
    group.add_command(show_cmd)
    group.add_command(hosts_group)
    group.add_command(machine_group)
