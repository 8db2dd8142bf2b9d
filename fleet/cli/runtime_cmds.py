"""`fleet up`, `fleet down` and `fleet server`: run the control plane, embedded or in the foreground.

`fleet up` starts, in the background, a nats-server with JetStream (data, PID file and log under the state
dir) and a `fleet server` process, and returns once both answer; it is idempotent and replaces stale PID files.
`fleet down` stops, by PID, the local agents started under `<state-dir>/agents/`, the server and nats-server.
`fleet server` runs the control-plane service (fleet.service.server) in the foreground against any NATS URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import click

from fleet.agents.state import AGENT_PROCESS_MARK
from fleet.bus.embedded import EmbeddedNats, pid_alive, read_pid, stop_pid, wait_tcp, write_pid
from fleet.cli.options import NatsSettings, nats_options, state_dir_option
from fleet.errors import FleetError, UsageError
from fleet.service.client import ControlPlaneClient
from fleet.service.server import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MONITOR_INTERVAL,
    DEFAULT_OFFLINE_AFTER,
    ControlPlane,
    ServerSettings,
)

SERVER_MARK = "fleet.cli.main server"


def _local_endpoint(url: str) -> tuple[str, int]:
    first = url.split(",")[0].strip()
    parsed = urlparse(first if "://" in first else f"nats://{first}")
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        raise UsageError(f"`fleet up` runs an embedded NATS on this machine only, not at {url}",
                         hint="use --nats nats://127.0.0.1:PORT, or run `fleet server --nats URL` against your cluster")
    return "127.0.0.1", parsed.port or 4222


def _embedded(state_dir: Path, port: int) -> EmbeddedNats:
    return EmbeddedNats(store_dir=state_dir / "nats", port=port, pid_file=state_dir / "nats-server.pid",
                        log_file=state_dir / "nats-server.log")


async def _ping(nats: NatsSettings, timeout: float) -> dict | None:
    try:
        async with ControlPlaneClient(nats.url, nats.creds, connect_timeout=min(timeout, 2.0)) as client:
            return await client.ping(timeout=min(timeout, 1.0))
    except FleetError:
        return None


def _wait_server(nats: NatsSettings, alive: Callable[[], bool], log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(_ping(nats, 1.5)) is not None:
            return
        if not alive():
            break
        time.sleep(0.1)
    tail = " | ".join(log_file.read_text(errors="replace").strip().splitlines()[-3:]) if log_file.exists() else ""
    raise FleetError(f"fleet server did not become ready within {timeout:g}s" + (f": {tail}" if tail else ""),
                     hint=f"see {log_file}")


@click.command("up")
@nats_options
@state_dir_option
@click.option("--timeout", type=float, default=20.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--offline-after", type=float, default=DEFAULT_OFFLINE_AFTER, show_default=True,
              help="Grace period (s) of the server's liveness monitor.")
def up_cmd(nats: NatsSettings, state_dir: Path, timeout: float, offline_after: float) -> None:
    """Start the embedded fleet in the background: nats-server (JetStream) + `fleet server`.

    Idempotent: what already runs is left alone. Data, logs and PID files live in the state dir.
    """
    host, port = _local_endpoint(nats.url)
    state_dir = state_dir.absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    nats_proc = _embedded(state_dir, port)
    pid = nats_proc.running_pid()
    if pid is not None:
        click.echo(f"nats-server already running (pid {pid}) at {nats_proc.url}")
    elif wait_tcp(host, port, 0.3):
        click.echo(f"a NATS server not started by fleet already answers at {nats_proc.url}; using it")
    else:
        pid = nats_proc.start(timeout=timeout)
        click.echo(f"started nats-server (pid {pid}) at {nats_proc.url}, data in {nats_proc.store_dir}")
    url = nats_proc.url
    server_settings = NatsSettings(url, nats.creds, nats.connect_timeout)
    server_pid_file = state_dir / "server.pid"
    server_log = state_dir / "server.log"
    spid = read_pid(server_pid_file, SERVER_MARK)
    if spid is not None:
        click.echo(f"fleet server already running (pid {spid})")
    else:
        with contextlib.suppress(FileNotFoundError):
            server_pid_file.unlink()  # stale
        args = [sys.executable, "-m", "fleet.cli.main", "server", "--nats", url, "--pid-file", str(server_pid_file),
                "--offline-after", str(offline_after)]
        if nats.creds:
            args += ["--creds", nats.creds]
        with open(server_log, "ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, close_fds=True)
        write_pid(server_pid_file, proc.pid)
        spid = proc.pid
        _wait_server(server_settings, lambda: proc.poll() is None, server_log, timeout)
        click.echo(f"started fleet server (pid {spid}), log {server_log}")
    if asyncio.run(_ping(server_settings, 3.0)) is None:
        _wait_server(server_settings, lambda: pid_alive(spid, SERVER_MARK), server_log, timeout)
    click.echo(f"fleet is up at {url}; stop it with `fleet down`")


@click.command("down")
@state_dir_option
def down_cmd(state_dir: Path) -> None:
    """Stop what `fleet up` started (and local agents under <state-dir>/agents/), by PID. Harmless if idle."""
    state_dir = state_dir.absolute()
    targets = [(f, AGENT_PROCESS_MARK, f"agent {f.parent.name}") for f in sorted(state_dir.glob("agents/*/agent.pid"))]
    targets += [(state_dir / "server.pid", SERVER_MARK, "fleet server"),
                (state_dir / "nats-server.pid", "nats-server", "nats-server")]  # agents first, NATS last
    stopped = []
    for pid_file, mark, label in targets:
        pid = read_pid(pid_file, mark)
        if pid is not None and stop_pid(pid, expect=mark):
            stopped.append(f"{label} (pid {pid})")
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    if stopped:
        for what in stopped:
            click.echo(f"stopped {what}")
    else:
        click.echo(f"nothing to stop (no fleet running from {state_dir})")


@click.command("server")
@nats_options
@click.option("--offline-after", type=click.FloatRange(min=0.1), default=DEFAULT_OFFLINE_AFTER, show_default=True,
              envvar="FLEET_OFFLINE_AFTER", help="Seconds without a heartbeat before a host is offline "
              "(a pool's disconnect_grace overrides).")
@click.option("--monitor-interval", type=click.FloatRange(min=0.01, max=0.5), default=DEFAULT_MONITOR_INTERVAL,
              show_default=True, help="Seconds between liveness checks.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0.05), default=DEFAULT_HEARTBEAT_INTERVAL,
              show_default=True, help="Heartbeat interval advertised to agents.")
@click.option("--pid-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the server's PID here.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def server_cmd(nats: NatsSettings, offline_after: float, monitor_interval: float, heartbeat_interval: float,
               pid_file: Path | None, verbose: bool) -> None:
    """Run the control-plane service in the foreground (enrollment, registry, liveness, host API)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if pid_file is not None:
        write_pid(pid_file)
    settings = ServerSettings(url=nats.url, creds=nats.creds, connect_timeout=nats.connect_timeout,
                              offline_after=offline_after, monitor_interval=monitor_interval,
                              heartbeat_interval=heartbeat_interval)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await ControlPlane(settings).serve_forever(stop)

    try:
        asyncio.run(main())
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text().strip()) == os.getpid():
                    pid_file.unlink()
    logging.getLogger(__name__).info("fleet server stopped")


def register(group: click.Group) -> None:
    group.add_command(up_cmd)
    group.add_command(down_cmd)
    group.add_command(server_cmd)
