"""`fleet ping`: ask the control plane whether it answers, and what the answering `fleet server` replica runs.

One request on `fleet.v1.api.ping` (answered by one replica of the queue group): its version and ID, the hosts it
knows and how many are live, whether it leads (holds the dispatch lease), and the state of each runnable of its
manager (fleet.service.manager: running, restarting, stopped, standby; restarts; last error; since). `--json`
prints the reply as it came. The reply is read as untrusted input: every field is checked and bounded before it is
printed (`ping_lines`, pure, tested). Registered in fleet.cli.main.
"""

from __future__ import annotations

import json
from typing import Any

import click

from fleet.cli.inventory_cmds import aligned
from fleet.cli.main import one_line
from fleet.cli.options import NatsSettings, format_option, nats_options
from fleet.cli.shared import run_async
from fleet.hosts.client import ControlPlaneClient

RUNNABLE_HEADERS = ("RUNNABLE", "STATE", "RESTARTS", "SINCE", "LAST ERROR")
MAX_RUNNABLES = 64



def _text(value: Any, limit: int = 80) -> str:
    text = one_line(str(value)) if value is not None else "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ping_lines(data: Any) -> list[str]:
    """The human view of a ping reply: a summary line, the role, and the runnables' table (when there are any)."""
    if not isinstance(data, dict):
        return ["fleet server answered with a reply this client does not understand"]
    hosts, live = _int(data.get("hosts")), _int(data.get("live"))
    counted = f": {hosts} host(s) known, {live} live" if hosts is not None and live is not None else ""
    lines = [f"fleet server {_text(data.get('server'), 40)} (fleet {_text(data.get('version'), 40)}) answers{counted}"]
    leader = data.get("leader")
    if isinstance(leader, bool):
        lines.append("role: leader (holds the dispatch lease)" if leader else
                     "role: standby (another replica holds the dispatch lease, or none does yet)")
    runnables = data.get("runnables")
    if isinstance(runnables, list) and runnables:
        rows: list[tuple[str, ...]] = []
        for r in runnables[:MAX_RUNNABLES]:
            if not isinstance(r, dict):
                continue
            restarts = _int(r.get("restarts"))
            rows.append((_text(r.get("name"), 40), _text(r.get("state"), 20),
                         str(restarts) if restarts is not None else "-", _text(r.get("since"), 32),
                         _text(r.get("last_error"), 120)))
        lines.append("")
        lines.append(aligned(RUNNABLE_HEADERS, rows))
    return lines


@click.command("ping")
@nats_options
@format_option("text", "json", default="text")
def ping_cmd(nats: NatsSettings, fmt: str) -> None:
    """Ask the control plane whether it answers: version, hosts, leader or standby, and its runnables.

    One replica answers: the state of each supervised loop (runnable) of its manager, with its restarts, last
    error and since when; `--json` for scripts."""

    async def run() -> Any:
        async with ControlPlaneClient(nats.url, nats.creds, nats.connect_timeout, tls=nats.tls) as client:
            return await client.ping()

    data = run_async(run)
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo("\n".join(ping_lines(data)))
