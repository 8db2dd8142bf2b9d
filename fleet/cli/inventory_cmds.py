"""`fleet list`, `fleet show` and `fleet hosts pause|resume|drain|revoke|rm`: the live inventory (formats of the seed).

They ask the control plane (`fleet server`) over NATS through fleet.hosts.client and get fleet.hosts.model.Host
objects; `host_json` is the one public JSON form of a host (`--json` / `--format json` of every command here).
`fleet list` is sorted by hostname, then machine ID; `aligned` draws its table and `fleet sessions list`'s. `fleet machine …` is the hidden, deprecated alias of all of
them: it works, and prints a deprecation notice on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from fleet.cli.options import MACHINE_ID, NatsSettings, format_option, nats_options
from fleet.cli.shared import iso_time, run_async
from fleet.hosts.client import ControlPlaneClient
from fleet.hosts.model import LIVE_STATUSES, Host

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


def host_json(h: Host, now: float | None = None) -> dict[str, Any]:
    """The public JSON of a host (`fleet list --json` items, `fleet show --json`): seed column names first; keys in
    snake_case (as fleet.yaml's and `fleet agent status --json`'s), times in ISO 8601 with their zone (docs/cli.md)."""
    now = time.time() if now is None else now
    live = h.status in LIVE_STATUSES
    return {
        "id": h.machine_id,
        "hostname": h.hostname,
        "status": h.status,
        "drained": h.drained,
        "tenant": h.tenant,
        "pools": list(h.pools),
        "pool_modes": dict(zip(h.pools, h.pool_modes, strict=False)),
        "sessions": {"running": h.running, "max": h.max_sessions},
        "active_sessions": [{"id": s.session_id, "phase": s.phase} for s in h.sessions],
        "last_seen": iso_time(h.last_seen),
        "last_seen_s_ago": round(now - h.last_seen, 3) if h.last_seen else None,
        "platform_version": h.version,
        "started_at": iso_time(h.started_at),
        "uptime_s": round(now - h.started_at, 1) if h.started_at and live else None,
        "capacity": {"max_concurrent_sessions": h.max_sessions, "pool_max_disk_gb": h.max_disk_gb},
        "labels": list(h.labels),
        "models": list(h.models),
        "credential_socket": h.credential_socket,
        "sandbox": h.isolation,
        "key_id": h.key_id,
        "enrolled_at": h.enrolled_at,
        "revoked_at": h.revoked_at,
        "declared_status": h.declared,
    }


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


def aligned(headers: tuple[str, ...], rows: list[tuple[str, ...]], *, min_widths: tuple[int, ...] = (),
            colours: dict[str, str] | None = None, colour: bool = False) -> str:
    """Plain aligned columns like the seed's example output (two spaces at least between columns); with `colour`,
    the third column (the status) in its colour from `colours`. `fleet list` and `fleet sessions list` use it."""
    widths = [max([min_widths[i] if i < len(min_widths) else 0, len(headers[i])] + [len(r[i]) for r in rows])
              for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = []
        for i, cell in enumerate(row):
            text = cell.ljust(widths[i] + 2) if i < len(row) - 1 else cell
            if colour and colours and i == 2 and row is not headers:
                text = click.style(text, fg=colours.get(cell))
            cells.append(text)
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def render_table(rows: list[tuple[str, ...]], colour: bool = False) -> str:
    """`fleet list`'s table."""
    return aligned(HEADERS, rows, min_widths=MIN_WIDTHS, colours=STATUS_COLOURS, colour=colour)


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
        ("Capacity", f"max_concurrent_sessions={cap.get('max_concurrent_sessions')}  "
                     f"pool_max_disk_gb={cap.get('pool_max_disk_gb') if cap.get('pool_max_disk_gb') is not None else '-'}"),
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
        ("Sandbox", host.get("sandbox") or "- (not reported: an agent older than the session sandbox)"),
        ("Credential socket", host.get("credential_socket") or "-"),
        ("Enrolled", f"{host.get('enrolled_at')} with key {host.get('key_id')}"),
    ]
    if host.get("revoked_at"):
        tail.append(("Revoked", host["revoked_at"]))
    lines += [f"{k + ':':<19}{v}" for k, v in tail]
    return "\n".join(lines)


def _client(nats: NatsSettings) -> ControlPlaneClient:
    return ControlPlaneClient(nats.url, nats.creds, nats.connect_timeout, tls=nats.tls)


def sorted_hosts(hosts: list[Host]) -> list[Host]:
    """The order of `fleet list`: by hostname, then machine ID (stable whatever the server sends)."""
    return sorted(hosts, key=lambda h: (h.hostname, h.machine_id))


@click.command("list")
@click.option("--quiet", "-q", is_flag=True, help="Only the machine IDs, one per line (for scripts).")
@nats_options
@format_option("table", "json", default="table")
def list_cmd(quiet: bool, nats: NatsSettings, fmt: str) -> None:
    """List every host registered to the fleet (ID, HOSTNAME, STATUS, POOLS, SESSIONS, LAST SEEN), sorted by
    hostname; `--json` for scripts: `fleet list --json | jq '[.[] | select(.status == "active")]'`."""

    async def run() -> list[Host]:
        async with _client(nats) as client:
            return await client.hosts()

    hosts = [host_json(h) for h in sorted_hosts(run_async(run))]
    if quiet:
        for h in hosts:
            click.echo(h["id"])
        return
    if fmt == "json":
        click.echo(json.dumps(hosts, indent=2))
        return
    click.echo(render_table([host_row(h) for h in hosts], colour=sys.stdout.isatty()))


@click.command("show")
@click.argument("machine_id", type=MACHINE_ID)
@nats_options
@format_option("table", "json", default="table")
def show_cmd(machine_id: str, nats: NatsSettings, fmt: str) -> None:
    """Show one host in detail (MACHINE_ID: a full ID or a unique prefix)."""

    async def run() -> Host:
        async with _client(nats) as client:
            return await client.host(machine_id)

    host = host_json(run_async(run))
    click.echo(json.dumps(host, indent=2) if fmt == "json" else render_show(host))


def _status_words(host: dict[str, Any]) -> str:
    return host["status"] + (" (drained: no running sessions)" if host.get("drained") else "")


def _host_command(action: str, doc: str) -> click.Command:
    @click.command(action, help=doc)
    @click.argument("machine_id", type=MACHINE_ID)
    @nats_options
    @format_option("table", "json", default="table")
    def command(machine_id: str, nats: NatsSettings, fmt: str) -> None:
        async def run() -> Host:
            async with _client(nats) as client:
                return await client.command(machine_id, action)

        host = host_json(run_async(run))
        if fmt == "json":
            click.echo(json.dumps(host, indent=2))
        else:
            click.echo(f"host {host['id']} ({host.get('hostname')}) is now {_status_words(host)}")

    return command


HOST_ACTIONS = {
    "pause": "Pause a host: it stays connected but takes no new sessions.",
    "resume": "Resume a paused or draining host.",
    "drain": "Drain a host: it finishes its running sessions and takes no new ones (drained once none run).",
    "revoke": "Revoke a host: its credential stops working and its agent exits.",
}


@click.command("rm")
@click.argument("machine_id", type=MACHINE_ID)
@click.option("--force", is_flag=True, help="Also forget a host that is still live (its agent is told to stop).")
@nats_options
@format_option("table", "json", default="table")
def rm_cmd(machine_id: str, force: bool, nats: NatsSettings, fmt: str) -> None:
    """Forget a host: remove its record from the registry (offline or revoked hosts; --force for a live one).

    Its enrollment key use is not given back; its place in a pool with hosts.max is. A removed host that comes back
    is refused (unknown host) and must enroll again.
    """

    async def run() -> Host:
        async with _client(nats) as client:
            return await client.command(machine_id, "rm", force=force)

    host = host_json(run_async(run))
    if fmt == "json":
        click.echo(json.dumps({**host, "removed": True}, indent=2))
    else:
        click.echo(f"removed host {host['id']} ({host.get('hostname')}, was {host['status']})")


@click.group("hosts")
def hosts_group() -> None:
    """Control hosts remotely through the control plane (pause, resume, drain, revoke, rm)."""


for _action, _doc in HOST_ACTIONS.items():
    hosts_group.add_command(_host_command(_action, _doc))
hosts_group.add_command(rm_cmd)


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
machine_group.add_command(rm_cmd)
