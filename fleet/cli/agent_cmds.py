"""`fleet agent run|pause|resume|drain|status|logs`: run the worker agent and control it locally.

`run` enrolls (first start) or re-registers, then heartbeats until SIGTERM (fleet.agents.agent). The other
commands talk to the running agent through the control socket in its state dir (fleet.agents.control);
`logs` prints the agent's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from fleet.agents.agent import Agent, AgentSettings
from fleet.agents.control import request
from fleet.agents.state import AGENT_PROCESS_MARK, AgentPaths
from fleet.bus.embedded import read_pid, write_pid
from fleet.cli.options import NatsSettings, agent_state_dir_option, json_option, nats_options
from fleet.errors import UsageError

MAX_SECRET_FILE = 4096


def read_secret_file(path: Path) -> str:
    """The secret in `path` (its first line, stripped): refused when empty, binary or larger than a secret can be."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise UsageError(f"--enroll-key-file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_SECRET_FILE:
        raise UsageError(f"--enroll-key-file {path}: larger than {MAX_SECRET_FILE} bytes; not a key file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--enroll-key-file {path}: not UTF-8 text; not a key file") from exc
    lines = text.strip().splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret or "\0" in secret:
        raise UsageError(f"--enroll-key-file {path}: no key in the file")
    return secret


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


@click.group("agent")
def agent_group() -> None:
    """Run the worker agent on this machine and control it through its local socket."""


@agent_group.command("run")
@nats_options
@agent_state_dir_option
@click.option("--enroll-key", envvar="FLEET_ENROLL_KEY", show_envvar=True, default=None,
              help="Enrollment key secret (needed only at first start). Prefer the environment variable or "
                   "--enroll-key-file: a value on the command line is visible to every user in `ps`.")
@click.option("--enroll-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the enrollment key secret from this file.")
@click.option("--pool", "pools", multiple=True, help="Pool to serve (repeatable; default: every pool of the key).")
@click.option("--labels", "labels", multiple=True, help="Capability labels, comma-separated: a,b=c.")
@click.option("--models", "models", multiple=True, help="Models this host serves, comma-separated.")
@click.option("--max-sessions", type=click.IntRange(min=0), default=None,
              help="Max concurrent sessions (default: the pool's capacity, else 4).")
@click.option("--pool-max-disk-gb", type=float, default=None, help="Disk envelope of this host (GB).")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds between heartbeats.")
@click.option("--hostname", default=None, help="Hostname to report (default: this machine's).")
@click.option("--join-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a fleet server to answer the enrollment.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run_cmd(nats: NatsSettings, agent_state_dir: Path, enroll_key: str | None, enroll_key_file: Path | None,
            pools: tuple[str, ...], labels: tuple[str, ...], models: tuple[str, ...], max_sessions: int | None,
            pool_max_disk_gb: float | None, heartbeat_interval: float, hostname: str | None, join_timeout: float,
            verbose: bool) -> None:
    """Enroll this machine (first start) or re-register it, then heartbeat until stopped (SIGTERM: clean exit)."""
    ctx = click.get_current_context()
    if enroll_key and ctx.get_parameter_source("enroll_key") == click.core.ParameterSource.COMMANDLINE:
        click.secho("warning: --enroll-key puts the secret on the command line, where every user of this machine "
                    "can read it (`ps`); use FLEET_ENROLL_KEY or --enroll-key-file", fg="yellow", err=True)
    if enroll_key_file is not None:
        enroll_key = read_secret_file(enroll_key_file)
    paths = AgentPaths.of(agent_state_dir)
    paths.ensure()
    running = read_pid(paths.pid, AGENT_PROCESS_MARK)
    if running is not None and running != os.getpid():
        raise UsageError(f"an agent already runs with state dir {paths.root} (pid {running})",
                         hint="stop it first (SIGTERM, or `fleet down` for agents under .fleet/agents), "
                              "or use another --state-dir")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(paths.log)]
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AgentSettings(
        state_dir=paths.root, nats_url=nats.url, creds=nats.creds, connect_timeout=max(nats.connect_timeout, 5.0),
        enroll_key=enroll_key, pools=_split(pools), labels=_split(labels), models=_split(models),
        max_sessions=max_sessions, pool_max_disk_gb=pool_max_disk_gb, heartbeat_interval=heartbeat_interval,
        join_timeout=join_timeout,
    )
    if hostname:
        settings.hostname = hostname
    write_pid(paths.pid)
    try:
        asyncio.run(Agent(settings).run())
    finally:
        with contextlib.suppress(OSError, ValueError):
            if int(paths.pid.read_text().strip()) == os.getpid():
                paths.pid.unlink()


def _control(state_dir: Path, cmd: str) -> dict:
    reply = request(AgentPaths.of(state_dir).control_socket, {"cmd": cmd})
    if not reply.get("ok"):
        raise UsageError(reply.get("error") or f"{cmd} failed")
    return reply["status"]


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    pools = ", ".join(f"{p['id']} ({p['mode']})" for p in status.get("pools", []))
    rows = [
        ("Machine ID", status.get("machine_id")),
        ("Hostname", status.get("hostname")),
        ("Status", f"{status.get('status')}{' (drained: no running sessions)' if status.get('drained') else ''}"),
        ("Tenant", status.get("tenant")),
        ("Connected", f"{'yes' if status.get('connected') else 'no'} ({status.get('nats')})"),
        ("Pools", pools or "-"),
        ("Sessions", f"{status['sessions']['running']}/{status['sessions']['max']}"),
        ("Uptime", f"{status.get('uptime_s')}s (started {status.get('started_at')})"),
        ("State dir", status.get("state_dir")),
    ]
    for label, value in rows:
        click.echo(f"{label + ':':<13} {value}")


def _simple(cmd: str, doc: str) -> click.Command:
    @click.command(cmd, help=doc)
    @agent_state_dir_option
    @json_option
    def command(agent_state_dir: Path, as_json: bool) -> None:
        status = _control(agent_state_dir, cmd)
        if as_json or cmd == "status":
            _print_status(status, as_json)
        else:
            drained = " (drained: no running sessions)" if status.get("drained") else ""
            click.echo(f"agent {status.get('machine_id')} is now {status.get('status')}{drained}")

    return command


agent_group.add_command(_simple("status", "Show the local agent's status."))
agent_group.add_command(_simple("pause", "Pause the local agent: it stays connected but takes no new sessions."))
agent_group.add_command(_simple("resume", "Resume a paused or draining local agent."))
agent_group.add_command(_simple("drain", "Drain the local agent: finish running sessions, take no new ones, then idle."))


@agent_group.command("logs")
@agent_state_dir_option
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="How many last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs_cmd(agent_state_dir: Path, lines: int, follow: bool) -> None:
    """Print the local agent's log."""
    log = AgentPaths.of(agent_state_dir).log
    if not log.exists():
        raise UsageError(f"no agent log at {log}", hint="start the agent with `fleet agent run --state-dir …`")
    with open(log, errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)
