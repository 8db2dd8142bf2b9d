"""`fleet up`, `fleet down` and `fleet server`: run the control plane, embedded or in the foreground.

`fleet up` starts, in the background, a nats-server with JetStream (data, PID file and log under the state
dir) and a `fleet server` process, and returns once both answer; it is idempotent and replaces stale PID files.
It uses only a NATS server that it started from this state dir: a port held by anything else (another fleet's
embedded NATS, a foreign NATS server, a program that does not speak NATS) is refused at once, before anything is
started or written, with a hint how to choose another port. If it fails half-way, it stops what it started.
`fleet down` stops, by PID, the local agents started under `<state-dir>/agents/`, the server and nats-server
(a process whose PID file was lost or holds garbage is found by the PID-file path in its command line).
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
from fleet.bus.embedded import (
    NATS_BINARY,
    EmbeddedNats,
    PortInUse,
    PortProbe,
    arg_value,
    find_pids_with_arg,
    open_private_log,
    pid_alive,
    probe_port,
    process_argv,
    read_pid,
    stop_pid,
    terminate_child,
    write_pid,
)
from fleet.bus.trustdir import TrustDir
from fleet.cli.options import (
    DEFAULT_STATE_DIR,
    NatsSettings,
    OutputFile,
    Seconds,
    nats_options,
    server_nats_options,
    state_dir_option,
)
from fleet.cli.shared import run_service
from fleet.errors import FleetError, UsageError
from fleet.hosts.client import ControlPlaneClient
from fleet.service.server import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MONITOR_INTERVAL,
    DEFAULT_OFFLINE_AFTER,
    MAX_OPEN_PER_TENANT,
    SESSION_RETENTION_S,
    FleetServer,
    ServerSettings,
)

SERVER_MARK = "fleet.cli.main server"
OFFLINE_AFTER = Seconds(0.1, 7 * 86400)


def _local_endpoint(url: str) -> tuple[str, int]:
    first = url.split(",")[0].strip()
    parsed = urlparse(first if "://" in first else f"nats://{first}")
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        raise UsageError(f"`fleet up` runs an embedded NATS on this machine only, not at {url}",
                         hint="use --nats nats://127.0.0.1:PORT, or run `fleet server --nats URL` against your cluster")
    try:
        port = parsed.port
    except ValueError:  # not a number, or above 65535
        port = 0
    if port == 0:
        raise UsageError(f"`fleet up` needs a TCP port from 1 to 65535 in --nats, not {url}",
                         hint="e.g. --nats nats://127.0.0.1:4222")
    return "127.0.0.1", port or 4222


def _embedded(state_dir: Path, port: int) -> EmbeddedNats:
    return EmbeddedNats(store_dir=state_dir / "nats", port=port, pid_file=state_dir / "nats-server.pid",
                        log_file=state_dir / "nats-server.log", extra_args=["-c", str(state_dir / "nats.conf")])


def _trust(state_dir: Path, host: str, port: int) -> TrustDir:
    """The fleet's identities (created at the first `fleet up`), and nats-server's config from them (operator mode:
    every connection authenticates, anonymous is refused), both under the state dir, mode 0600."""
    try:
        trust = TrustDir.create(state_dir / "trust")
        trust.write_nats_conf(state_dir, host, port)
    except OSError as exc:
        raise UsageError(f"cannot write the fleet's identities under {state_dir}: {exc.strerror or exc}",
                         hint="choose another --state-dir (or FLEET_STATE_DIR)") from exc
    return trust


def _embedded_state_dir(argv: list[str]) -> Path | None:
    """The state dir of a nats-server that `fleet up` started (laid out as by `_embedded`), else None."""
    if not argv or Path(argv[0]).name != NATS_BINARY:
        return None
    pid_file, store = arg_value(argv, "-P"), arg_value(argv, "-sd")
    if not pid_file or not store or Path(pid_file).name != "nats-server.pid":
        return None
    state_dir = Path(pid_file).parent
    return state_dir if Path(store) == state_dir / "nats" else None


def _other_port_hint(host: str, port: int) -> str:
    """How to choose another port (one that is free right now, if one is near)."""
    free = next((p for p in range(port + 1, min(port + 50, 65536)) if probe_port(host, p).kind == "free"), port + 1)
    url = f"nats://{host}:{free}"
    return (f"choose another port, e.g. `fleet up --nats {url}`; every later command then needs the same "
            f"--nats {url} (or export FLEET_NATS_URL={url})")


def _port_taken(probe: PortProbe, state_dir: Path) -> UsageError:
    """The one-line refusal for a port that `fleet up` cannot use, saying who holds it when /proc tells."""
    where = f"port {probe.port} on {probe.host}"
    url = f"nats://{probe.host}:{probe.port}"
    hint = _other_port_hint(probe.host, probe.port)
    if probe.kind == "denied":
        return UsageError(f"not allowed to listen on {where}: {probe.error}",
                          hint=("ports below 1024 need privileges; " if probe.port < 1024 else "") + hint)
    if probe.kind == "unusable":
        return UsageError(f"cannot listen on {where}: {probe.error}", hint=hint)
    owners = [(pid, process_argv(pid) or []) for pid in probe.pids]
    if probe.kind == "nats":
        for pid, argv in owners:
            other = _embedded_state_dir(argv)
            if other is not None:
                return UsageError(f"{url} is the embedded NATS of another fleet (state dir {other}, nats-server "
                                  f"pid {pid}); `fleet up` from {state_dir} will not share it", hint=hint)
        version = (probe.info or {}).get("version")
        about = [f"nats-server {version}"] if version else []
        about += [f"pid {owners[0][0]}: {_short(owners[0][1])}"] if owners else []
        detail = f" ({', '.join(about)})" if about else ""
        what = "a foreign NATS server" if owners else "a NATS server"  # without /proc: cannot tell whose
        return UsageError(f"{url} is served by {what}{detail}, not one that `fleet up` started from "
                          f"{state_dir}; `fleet up` will not use it",
                          hint=hint + "; to run a control plane on that NATS on purpose, use `fleet server --nats URL`")
    who = f": pid {owners[0][0]} ({_short(owners[0][1])})" if owners else ""
    return UsageError(f"{where} is in use by another program (not a NATS server){who}", hint=hint)


def _short(argv: list[str], limit: int = 80) -> str:
    text = " ".join(" ".join(argv).split()) or "?"  # one line, whatever the arguments hold
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_pid(pid_file: Path) -> int | None:
    """Our `fleet server`: by its PID file, else by the PID-file path in its command line."""
    pid = read_pid(pid_file, SERVER_MARK)
    if pid is None:
        pids = find_pids_with_arg("--pid-file", pid_file, expect=SERVER_MARK)
        pid = pids[0] if pids else None
    return pid


async def _ping(nats: NatsSettings, timeout: float) -> dict | None:
    try:
        async with ControlPlaneClient(nats.url, nats.creds, connect_timeout=min(timeout, 2.0), tls=nats.tls) as client:
            return await client.ping(timeout=min(timeout, 1.0), attempts=1)
    except FleetError:
        return None


def _wait_server(nats: NatsSettings, alive: Callable[[], bool], log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    exited = False
    while time.monotonic() < deadline:
        if asyncio.run(_ping(nats, 1.5)) is not None:
            return
        if not alive():
            exited = True
            break
        time.sleep(0.1)
    lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.exists() else []
    last = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
    what = "exited before it was ready" if exited else f"did not become ready within {timeout:g}s"
    raise FleetError(f"fleet server {what}" + (f": {last.strip()}" if last else ""), hint=f"see {log_file}")


@click.command("up")
@nats_options
@state_dir_option(create=True)
@click.option("--timeout", type=Seconds(0, 3600, min_open=True), default=20.0, show_default=True,
              help="Seconds to wait for readiness.")
@click.option("--offline-after", type=OFFLINE_AFTER, default=DEFAULT_OFFLINE_AFTER, show_default=True,
              help="Grace period (s) of the server's liveness monitor.")
def up_cmd(nats: NatsSettings, state_dir: Path, timeout: float, offline_after: float) -> None:
    """Start the embedded fleet in the background: nats-server (JetStream) + `fleet server`.

    Idempotent: what already runs is left alone. Data, logs and PID files live in the state dir. A port held by
    anything it did not start from this state dir (another fleet, a foreign NATS, another program) is refused.
    """
    host, port = _local_endpoint(nats.url)
    state_dir = state_dir.absolute()  # usable: checked while parsing (fleet.cli.options.StateDir)
    nats_proc = _embedded(state_dir, port)
    started: list[Callable[[], object]] = []  # how to undo what this run started, if a later step fails
    try:
        pid = nats_proc.running_pid()
        if pid is not None:
            running_port = nats_proc.running_port(pid)
            if running_port is not None and running_port != port:
                url = f"nats://{host}:{running_port}"
                raise UsageError(f"the fleet in {state_dir} already runs its NATS at {url}, not at {nats_proc.url}",
                                 hint=f"use --nats {url} (or FLEET_NATS_URL), or `fleet down` it first")
            with contextlib.suppress(OSError):  # a state dir made by an older fleet
                os.chmod(state_dir, 0o700)
            pid = nats_proc.start(timeout=timeout)  # restores a lost PID file
            trust = TrustDir.load(state_dir / "trust")
            click.echo(f"nats-server already running (pid {pid}) at {nats_proc.url}")
        else:
            probe = probe_port(host, port)
            if probe.kind != "free":
                raise _port_taken(probe, state_dir)
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
                os.chmod(state_dir, 0o700)  # its logs, trust dir and store are the fleet's secrets
            except OSError as exc:
                raise UsageError(f"cannot create state dir {state_dir}: {exc.strerror or exc}",
                                 hint="choose another --state-dir (or FLEET_STATE_DIR)") from exc
            trust = _trust(state_dir, host, port)
            try:
                pid = nats_proc.start(timeout=timeout)
            except PortInUse as exc:  # taken between the probe and the start; a usage error (64), whatever
                # PortInUse's own exit code says (2 is `fleet plan --detailed-exitcode`'s "changes")
                raise (_port_taken(exc.probe, state_dir) if exc.probe.kind != "free"
                       else UsageError(exc.message, hint=exc.hint)) from exc
            started.append(nats_proc.stop)
            click.echo(f"started nats-server (pid {pid}) at {nats_proc.url}, data in {nats_proc.store_dir}")
        _up_server(nats_proc.url, nats, trust, state_dir, timeout, offline_after, started)
    except BaseException:
        for undo in reversed(started):
            with contextlib.suppress(Exception):
                undo()
        raise
    click.echo(f"fleet is up at {nats_proc.url}; stop it with `fleet down`")


def _up_server(url: str, nats: NatsSettings, trust: TrustDir, state_dir: Path, timeout: float, offline_after: float,
               started: list[Callable[[], object]]) -> None:
    """The `fleet server` half of `fleet up`: reuse the running one, or start one and wait until it answers.

    The server runs as the fleet server identity, with the trust dir (it signs host identities and revokes them);
    `fleet up` asks it whether it is ready as the admin."""
    server_settings = NatsSettings(url, str(trust.path("admin.creds")), nats.connect_timeout)
    server_pid_file = state_dir / "server.pid"
    server_log = state_dir / "server.log"
    spid = _server_pid(server_pid_file)
    if spid is not None:
        if read_pid(server_pid_file, SERVER_MARK) != spid:
            write_pid(server_pid_file, spid)  # found by its command line: restore the lost PID file
        click.echo(f"fleet server already running (pid {spid})")
    else:
        with contextlib.suppress(FileNotFoundError):
            server_pid_file.unlink()  # stale
        args = [sys.executable, "-m", "fleet.cli.main", "server", "--nats", url, "--pid-file", str(server_pid_file),
                "--offline-after", str(offline_after), "--creds", str(trust.path("server.creds")),
                "--trust-dir", str(trust.root)]
        try:
            with open_private_log(server_log) as log:
                proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, close_fds=True)
        except OSError as exc:
            raise FleetError(f"cannot start fleet server: {exc.strerror or exc}", hint=f"see {server_log}") from exc

        def undo() -> None:
            terminate_child(proc)
            with contextlib.suppress(FileNotFoundError):
                server_pid_file.unlink()

        started.append(undo)
        write_pid(server_pid_file, proc.pid)
        spid = proc.pid
        _wait_server(server_settings, lambda: proc.poll() is None, server_log, timeout)
        click.echo(f"started fleet server (pid {spid}), log {server_log}")
    if asyncio.run(_ping(server_settings, 3.0)) is None:
        _wait_server(server_settings, lambda: pid_alive(spid, SERVER_MARK), server_log, timeout)


@click.command("down")
@state_dir_option(create=False)
def down_cmd(state_dir: Path) -> None:
    """Stop what `fleet up` started (and local agents under <state-dir>/agents/), by PID. Harmless if idle."""
    state_dir = state_dir.absolute()
    targets = [(f, "--state-dir", AGENT_PROCESS_MARK, f"agent {f.parent.name}")
               for f in sorted(state_dir.glob("agents/*/agent.pid"))]
    targets += [(state_dir / "server.pid", "--pid-file", SERVER_MARK, "fleet server"),
                (state_dir / "nats-server.pid", "-P", NATS_BINARY, "nats-server")]  # agents first, NATS last
    stopped, unremovable = [], []
    for pid_file, flag, mark, label in targets:
        pid = read_pid(pid_file, mark)
        if pid is None:  # PID file lost, stale or garbage: find the process by the path in its command line
            path = pid_file.parent if flag == "--state-dir" else pid_file
            pids = find_pids_with_arg(flag, path, expect=mark)
            pid = pids[0] if pids else None
        if pid is not None and stop_pid(pid, expect=mark):
            stopped.append(f"{label} (pid {pid})")
        if pid_file.is_file() or pid_file.is_symlink():
            try:
                pid_file.unlink()
            except OSError as exc:
                unremovable.append(f"{pid_file} ({exc.strerror or exc})")
    for what in stopped:
        click.echo(f"stopped {what}")
    if not stopped:
        click.echo(f"nothing to stop (no fleet running from {state_dir})")
    if unremovable:  # harmless (a PID file is trusted only while its process runs), but say so
        raise FleetError(f"cannot remove PID file {unremovable[0]}", hint="check the state dir's permissions")


@click.command("server")
@server_nats_options
@click.option("--offline-after", type=OFFLINE_AFTER, default=DEFAULT_OFFLINE_AFTER, show_default=True,
              envvar="FLEET_OFFLINE_AFTER", help="Seconds without a heartbeat before a host is offline "
              "(a pool's disconnect_grace overrides).")
@click.option("--monitor-interval", type=Seconds(0.01, 0.5), default=DEFAULT_MONITOR_INTERVAL,
              show_default=True, help="Seconds between liveness checks.")
@click.option("--heartbeat-interval", type=Seconds(0.05, 3600), default=DEFAULT_HEARTBEAT_INTERVAL,
              show_default=True, help="Heartbeat interval advertised to agents.")
@click.option("--session-retention", type=Seconds(1, 10 * 365 * 86_400), default=SESSION_RETENTION_S,
              show_default=True, envvar="FLEET_SESSION_RETENTION", show_envvar=True,
              help="Seconds the sessions bucket keeps a finished session (its record, output tail and history); "
                   "sessions not yet final are kept until they are.")
@click.option("--max-open-sessions", type=click.IntRange(1, 10_000_000), default=MAX_OPEN_PER_TENANT, metavar="N",
              show_default=True, envvar="FLEET_MAX_OPEN_SESSIONS", show_envvar=True,
              help="Sessions one tenant may have queued or running at once; a submit past it is refused "
                   "(queue_full) until some end. Held exactly under concurrent submits.")
@click.option("--pid-file", type=OutputFile(), default=None, help="Write the server's PID here.")
@click.option("--trust-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), envvar="FLEET_TRUST_DIR",
              show_envvar=True, default=None,
              help="The fleet's trust directory (`fleet up` makes <state dir>/trust): the keys that sign host "
                   "identities at enrollment and revoke them. Without it the server cannot enroll hosts.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def server_cmd(nats: NatsSettings, offline_after: float, monitor_interval: float, heartbeat_interval: float,
               session_retention: float, max_open_sessions: int, pid_file: Path | None, trust_dir: Path | None,
               verbose: bool) -> None:
    """Run the control-plane service in the foreground (enrollment, registry, liveness, host API).

    Connect it with the fleet server identity (--creds …/trust/server.creds) and give it the trust directory."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if pid_file is not None:
        try:
            write_pid(pid_file)
        except OSError as exc:
            raise UsageError(f"--pid-file {pid_file}: {exc.strerror or exc}") from exc
    if trust_dir is None:  # where `fleet up` keeps it, when the server runs from there
        found = Path(os.environ.get("FLEET_STATE_DIR") or DEFAULT_STATE_DIR) / "trust"
        trust_dir = found if (found / "signing.nk").is_file() else None
    settings = ServerSettings(url=nats.url, creds=nats.creds, tls=nats.tls, connect_timeout=nats.connect_timeout,
                              offline_after=offline_after, monitor_interval=monitor_interval,
                              heartbeat_interval=heartbeat_interval, session_retention=session_retention,
                              max_open_sessions=max_open_sessions, trust_dir=str(trust_dir) if trust_dir else None)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await FleetServer(settings).serve_forever(stop)

    try:
        run_service(main)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text().strip()) == os.getpid():
                    pid_file.unlink()
    logging.getLogger(__name__).info("fleet server stopped")
