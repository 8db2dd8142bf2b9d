"""`fleet agent run|pause|resume|drain|status|logs`: run the worker agent and control it locally.

`run` enrolls (first start) or re-registers, then heartbeats until SIGTERM (fleet.agents.agent). The other
commands talk to the running agent through the control socket in its state dir (fleet.agents.control);
`logs` prints the end of the agent's log file (bounded: a log of any size is tailed from its end).
Every option is checked while parsing (fleet.cli.options); `run` refuses before connecting when it has nothing to
join with (no identity and no key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import BinaryIO

import click

from fleet.agents.agent import Agent, AgentSettings
from fleet.agents.control import request
from fleet.agents.sandbox import parse_uid_range
from fleet.agents.state import AGENT_PROCESS_MARK, AgentPaths, load_identity
from fleet.bus.embedded import read_pid, write_pid
from fleet.cli.options import (
    HOSTNAME,
    ID,
    LABEL,
    MODEL,
    SECRET,
    Count,
    InputFile,
    NameList,
    NatsSettings,
    Number,
    Seconds,
    agent_nats_options,
    agent_state_dir_option,
    json_option,
)
from fleet.cli.shared import read_bounded
from fleet.errors import FleetError, UsageError

MAX_SECRET_FILE = 4096
#: most pools, labels and models one host may ask for (fleet.bus.messages.EnrollRequest)
MAX_POOLS, MAX_LABELS, MAX_MODELS = 32, 64, 64
MAX_LOG_LINES = 1_000_000
MAX_TAIL_BYTES = 16 * 1024 * 1024  # `fleet agent logs` reads at most this much of the end of the log


def read_secret_file(path: Path) -> str:
    """The secret in `path` (its first line, stripped): refused when empty, binary or larger than a secret can be."""
    raw = read_bounded(path, MAX_SECRET_FILE, "--enroll-key-file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--enroll-key-file {path}: not UTF-8 text; not a key file") from exc
    lines = text.strip().splitlines()
    secret = lines[0].strip() if lines else ""
    if not secret or "\0" in secret:
        raise UsageError(f"--enroll-key-file {path}: no key in the file")
    problem = SECRET.problem(secret)
    if problem is not None:
        raise UsageError(f"--enroll-key-file {path}: {problem}")
    return secret


def _flat(values: tuple[tuple[str, ...], ...], option: str, limit: int) -> list[str]:
    """The items of a repeatable, comma-separated option, in order, without repeats; at most `limit`."""
    out = list(dict.fromkeys(v for group in values for v in group))
    if len(out) > limit:
        raise UsageError(f"{option}: {len(out)} given, at most {limit}")
    return out


@click.group("agent")
def agent_group() -> None:
    """Run the worker agent on this machine and control it through its local socket."""


@agent_group.command("run")
@agent_nats_options
@agent_state_dir_option(create=True)
@click.option("--enroll-key", type=SECRET, envvar="FLEET_ENROLL_KEY", show_envvar=True, default=None,
              help="Enrollment key secret (needed only at first start). Prefer the environment variable or "
                   "--enroll-key-file: a value on the command line is visible to every user in `ps`.")
@click.option("--enroll-key-file", type=InputFile(max_bytes=MAX_SECRET_FILE, fifo=True, what="key file"),
              default=None, help="Read the enrollment key secret from this file.")
@click.option("--pool", "pools", type=NameList(ID), multiple=True,
              help="Pool to serve (repeatable or comma-separated; default: every pool of the key).")
@click.option("--labels", "labels", type=NameList(LABEL), multiple=True,
              help="Capability labels, comma-separated: a,b=c.")
@click.option("--models", "models", type=NameList(MODEL), multiple=True, help="Models this host serves, comma-separated.")
@click.option("--max-sessions", type=Count(0, 100_000), default=None,
              help="Max concurrent sessions (default: the pool's capacity, else 4).")
@click.option("--pool-max-disk-gb", type=Number(0, 1e7), default=None, help="Disk envelope of this host (GB).")
@click.option("--heartbeat-interval", type=Seconds(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between heartbeats.")
@click.option("--hostname", type=HOSTNAME, default=None, help="Hostname to report (default: this machine's).")
@click.option("--join-timeout", type=Seconds(0, 86400), default=30.0, show_default=True,
              help="Seconds to wait for a fleet server to answer the enrollment.")
@click.option("--session-uids", default="300000-300999", show_default=True, metavar="FIRST-LAST",
              help="An agent running as root runs each session as a uid of this range of its own (agents on one "
                   "machine share the range and never the same uid).")
@click.option("--session-user", default=None, metavar="USER",
              help="Run every session as this existing unprivileged user instead (root only).")
@click.option("--sandbox-expose", "expose", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, resolve_path=True),
              help="Show this directory to sessions, read-only (repeatable). They see the system directories, "
                   "the directories of the tools on PATH and of Python, and their own scratch directory.")
@click.option("--sandbox-bind", "writable", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, resolve_path=True),
              help="Let sessions write this directory (repeatable; shared by every session of this agent, so "
                   "never one for sessions of different tenants to share). Never this agent's state dir.")
@click.option("--no-sandbox", is_flag=True,
              help="Run sessions as the agent, unisolated: accepted only when every pool of this host says "
                   "`isolation: none` in fleet.yaml (a session can then read this host's credential).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run_cmd(nats: NatsSettings, agent_state_dir: Path, enroll_key: str | None, enroll_key_file: Path | None,
            pools: tuple[tuple[str, ...], ...], labels: tuple[tuple[str, ...], ...],
            models: tuple[tuple[str, ...], ...], max_sessions: int | None, pool_max_disk_gb: float | None,
            heartbeat_interval: float, hostname: str | None, join_timeout: float, session_uids: str,
            session_user: str | None, expose: tuple[str, ...], writable: tuple[str, ...], no_sandbox: bool,
            verbose: bool) -> None:
    """Enroll this machine (first start) or re-register it, then heartbeat until stopped (SIGTERM: clean exit).

    Sessions run sandboxed (bubblewrap): as another uid than the agent's, in PID, mount and IPC namespaces of their
    own, seeing none of the agent's state; when a session ends, every process it started ends. A host that cannot
    sandbox exits with the reason, unless every pool it serves says `isolation: none`."""
    ctx = click.get_current_context()
    try:
        uid_range = parse_uid_range(session_uids)
    except FleetError as exc:
        raise UsageError(f"--session-uids: {exc.message}", hint=exc.hint) from exc
    if enroll_key and ctx.get_parameter_source("enroll_key") == click.core.ParameterSource.COMMANDLINE:
        click.secho("warning: --enroll-key puts the secret on the command line, where every user of this machine "
                    "can read it (`ps`); use FLEET_ENROLL_KEY or --enroll-key-file", fg="yellow", err=True)
    if enroll_key_file is not None:
        enroll_key = read_secret_file(enroll_key_file)
    pool_ids = _flat(pools, "--pool", MAX_POOLS)
    label_list = _flat(labels, "--labels", MAX_LABELS)
    model_list = _flat(models, "--models", MAX_MODELS)
    paths = AgentPaths.of(agent_state_dir)
    if not enroll_key and load_identity(paths) is None:  # before connecting: nothing to join with
        raise UsageError(f"this host has not enrolled yet (no identity in {paths.root}) and no enrollment key "
                         "was given", hint="pass --enroll-key-file FILE or set FLEET_ENROLL_KEY (first start only)")
    try:
        paths.ensure()
        running = read_pid(paths.pid, AGENT_PROCESS_MARK)
        if running is not None and running != os.getpid():
            raise UsageError(f"an agent already runs with state dir {paths.root} (pid {running})",
                             hint="stop it first (SIGTERM, or `fleet down` for agents under .fleet/agents), "
                                  "or use another --state-dir")
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(paths.log)]
        os.chmod(paths.log, 0o600)
        write_pid(paths.pid)
    except OSError as exc:
        raise UsageError(f"cannot use state dir {paths.root}: {exc.strerror or exc}",
                         hint="choose another --state-dir (or FLEET_AGENT_STATE_DIR)") from exc
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # an agent waits longer for NATS by default than a one-shot command; a timeout given explicitly is obeyed
    explicit = ctx.get_parameter_source("nats_timeout") != click.core.ParameterSource.DEFAULT
    settings = AgentSettings(
        state_dir=paths.root, nats_url=nats.url, creds=nats.creds, tls=nats.tls,
        connect_timeout=nats.connect_timeout if explicit else max(nats.connect_timeout, 5.0),
        enroll_key=enroll_key, pools=pool_ids, labels=label_list, models=model_list,
        max_sessions=max_sessions, pool_max_disk_gb=pool_max_disk_gb, heartbeat_interval=heartbeat_interval,
        join_timeout=join_timeout, session_uids=uid_range, session_user=session_user, sandbox_expose=expose,
        sandbox_writable=writable, sandbox=not no_sandbox,
    )
    if hostname:
        settings.hostname = hostname
    try:
        # asyncio's own loop, not uvloop (fleet.cli.shared.run_service): an agent spawns a process per session, and
        # uvloop's spawn (fork) cost 2.5x the CPU of asyncio's (vfork) per `true` session in bench/dispatch.py
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
    @agent_state_dir_option(create=False)
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


def tail(fh: BinaryIO, lines: int, max_bytes: int = MAX_TAIL_BYTES) -> list[bytes]:
    """The last `lines` lines of the open file `fh` (none for 0), reading at most `max_bytes` from its end, so
    that a log of any size is tailed in bounded time and memory; leaves `fh` at its end."""
    end = fh.seek(0, os.SEEK_END)
    if lines <= 0:
        return []
    start = max(0, end - max_bytes)
    block, pos, data = 64 * 1024, end, b""
    while pos > start and data.count(b"\n") <= lines:
        step = min(block, pos - start)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
    fh.seek(end)
    found = data.splitlines(keepends=True)
    if pos > 0 and found and len(found) > lines:  # the first line found may be cut: drop it when it is not needed
        found = found[1:]
    return found[-lines:]


@agent_group.command("logs")
@agent_state_dir_option(create=False)
@click.option("-n", "--lines", type=Count(0, MAX_LOG_LINES), default=50, show_default=True,
              help="How many last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs_cmd(agent_state_dir: Path, lines: int, follow: bool) -> None:
    """Print the local agent's log."""
    log = AgentPaths.of(agent_state_dir).log
    if not log.exists():
        raise UsageError(f"no agent log at {log}", hint="start the agent with `fleet agent run --state-dir …`")
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read {log}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{log} is not a regular file")
        os.set_blocking(fd, True)
        for line in tail(fh, lines):
            click.echo(line.decode("utf-8", "replace"), nl=False)
        while follow:
            line = fh.readline(1024 * 1024)
            if line:
                click.echo(line.decode("utf-8", "replace"), nl=False)
                continue
            if os.stat(log).st_size < fh.tell():  # truncated or replaced: start again from its beginning
                fh.seek(0)
            time.sleep(0.2)
