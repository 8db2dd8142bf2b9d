"""Shared fixtures: a real nats-server with JetStream on a free 127.0.0.1 port (`nats_server`), and a live fleet.

Used by every integration test. `nats_server` yields a NatsHandle (url, stop(), start() on the same port and
store dir, for restart tests) and stops the server by PID in teardown. `live_fleet` adds a real `fleet server`
process (short heartbeat/grace for tests) and helpers to start real agent processes; `processes` stops every
process a test started, by PID. `port_holder` starts another program (not NATS) that holds a port. `wait_for` and
`wait_for_async` wait for a condition with a deadline (never a fixed sleep in its place). Every test's temp dir is
under a short per-run /tmp/ftXXXXXXXX (pytest_configure), so that the suite runs in parallel (pytest-xdist).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from fleet.bus.connection import Bus, connect
from fleet.bus.embedded import EmbeddedNats, PortInUse, free_port, stop_pid
from fleet.bus.enrolling import ReplyKey, enroll_inbox, enrollment_request, request_enrollment
from fleet.bus.messages import JoinReply
from fleet.bus.trust import Key, creds_text, write_secret
from fleet.bus.trustdir import TrustDir

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------ temp dirs


@pytest.hookimpl(tryfirst=True)  # before pytest's own tmp_path plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    """A short base for every test's temp dir, /tmp/ftXXXXXXXX (pytest's is /tmp/pytest-of-USER/pytest-N, and
    pytest-xdist adds popen-gwN/ below it): an agent's state dir holds its unix sockets, whose paths may not exceed
    ~100 bytes (fleet.agents.state), and tests put agents at tmp_path/agents/NAME. Made by the controlling process
    only (xdist's workers get a popen-gwN/ below it), unique per run, so that parallel runs by several people never
    share one; removed after a run that passed, kept (like pytest's) after one that failed."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="ft")
        config.stash[_SHORT_BASETEMP] = config.option.basetemp


_SHORT_BASETEMP = pytest.StashKey[str]()
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    made = config.stash.get(_SHORT_BASETEMP, None)
    if made is not None and config.stash.get(_EXIT_STATUS, 1) == 0:
        shutil.rmtree(made, ignore_errors=True)


@dataclass
class NatsHandle:
    server: EmbeddedNats
    trust: TrustDir | None = None  # set when the server runs in operator mode (every connection authenticates)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


def _started(make: Callable[[int], EmbeddedNats], attempts: int = 3) -> EmbeddedNats:
    """A started nats-server on a free port. free_port's port is free only when it answers: another test's process
    (tests run in parallel) may bind it, or use it as the source port of a connection, before nats-server does; then
    nats-server fails with PortInUse, and another port is tried."""
    for attempt in range(attempts):
        server = make(free_port())
        try:
            server.start()
            return server
        except PortInUse:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsHandle]:
    """A nats-server without auth (for tests of the bus itself and of commands that run without a fleet)."""
    store = Path(tmp_path_factory.mktemp("nats"))
    server = _started(lambda port: EmbeddedNats(store_dir=store, port=port))
    try:
        yield NatsHandle(server)
    finally:
        server.stop()


@pytest.fixture
def trusted_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsHandle]:
    """A nats-server as `fleet up` runs it: operator mode with a fresh trust directory (fleet.bus.trustdir); anonymous
    connections are refused and every identity has its own permissions (fleet.bus.identities)."""
    root = Path(tmp_path_factory.mktemp("fleet"))
    trust = TrustDir.create(root / "trust")
    server = _started(lambda port: EmbeddedNats(store_dir=root / "nats", port=port, extra_args=[
        "-c", str(trust.write_nats_conf(root, "127.0.0.1", port))]))
    try:
        yield NatsHandle(server, trust)
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ live fleet



FAST_HEARTBEAT = 0.2
FAST_GRACE = 1.0


def fleet_yaml(keys: list[dict[str, Any]], hosts: dict[str, str], pool_slots: int = 4,
               hosts_max: int | None = None, layout: dict[str, Any] | None = None) -> str:
    """The fleet the live-fleet tests run: two tenants, a local pool each, one project, and the given keys; `layout`
    replaces any of the top-level sections (tenants, projects, pools)."""
    doc = {
        "version": 1,
        "org": {"id": "test"},
        "tenants": [{"id": "fin-prod"}, {"id": "health-prod"}],
        "projects": [{"id": "app", "tenant": "fin-prod",
                      "routing": {"mode": "preferred-only", "preferred_pool": "pool-local-main"}}],
        "pools": [
            {"id": "pool-local-main", "tenant": "fin-prod", "backend": "local", "mode": "persistent",
             "capacity": {"max_concurrent_sessions": pool_slots}, "labels": ["tier=dev"],
             **({"hosts": {"min": 0, "max": hosts_max}} if hosts_max is not None else {})},
            {"id": "pool-health-local", "tenant": "health-prod", "backend": "local", "mode": "persistent",
             "capacity": {"max_concurrent_sessions": 2}},
        ],
        "keys": keys,
    }
    doc.update(layout or {})
    if hosts:
        doc["hosts"] = [{"id": mid, "status": status} for mid, status in hosts.items()]
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


def fleet_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleet.cli.main", *args]


def run_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run a fleet command in-process (click's CliRunner); returns the click Result."""
    from fleet.cli.main import cli

    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def wait_for_async(fetch: Callable[[], Awaitable[T]], ok: Callable[[T], Any] = bool, timeout: float = 10.0,
                interval: float = 0.05, what: str = "condition") -> T:
    """The asyncio form of wait_for: await `fetch()` until `ok(value)` holds and return that value, or fail after
    `timeout` seconds with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


@dataclass
class Proc:
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


class ProcessSet:
    """Processes a test started; all stopped by PID in teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.root / f"{name}.out"
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                stop_pid(proc.pid, timeout=5)
            proc.stop(signal.SIGKILL, timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessSet]:
    procs = ProcessSet(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


class LiveFleet:
    """A real nats-server in operator mode + a real `fleet server` process, as `fleet up` runs them; helpers to
    start agents, enroll hosts, connect as any identity and read the inventory. In-process CLI calls run as the
    admin (FLEET_NATS_CREDS is set for the test)."""

    def __init__(self, nats: NatsHandle, procs: ProcessSet, root: Path) -> None:
        assert nats.trust is not None
        self.nats = nats
        self.trust = nats.trust
        self.procs = procs
        self.root = root
        self.server: Proc | None = None
        self.fleet_file = root / "fleet.yaml"
        self.keys: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, str] = {}
        self.layout: dict[str, Any] | None = None  # tenants/projects/pools instead of fleet_yaml's (apply() writes it)

    @property
    def url(self) -> str:
        return self.nats.url

    def creds(self, role: str) -> str:
        """The creds file of `role`: server, sys, admin, viewer or enroll."""
        return str(self.trust.path(f"{role}.creds"))

    def issue(self, name: str, role: str, tenant: str | None = None) -> str:
        """A creds file of a new identity of `role` (as `fleet creds create` issues one)."""
        path = self.root / "creds" / f"{name}.creds"
        write_secret(path, self.trust.issue_role(role, name=name, tenant=tenant))
        return str(path)

    async def bus(self, role: str = "server", *, creds: str | None = None, **kw: Any) -> Bus:
        return await connect(self.url, creds=creds or self.creds(role), **kw)

    async def enroll(self, secret: str, hostname: str, *, user: Key | None = None,
                     **kw: Any) -> tuple[JoinReply, str | None]:
        """Enroll a host as an agent does (its own nkey, or `user`, over the enrollment identity: a proof that it
        holds the nkey, the inbox of that nkey, a reply sealed to a one-time key); the reply and the path of the
        host's creds file (None when refused)."""
        user = user or Key.generate("user")
        box = ReplyKey.generate()
        req = enrollment_request(user, box, key=secret, hostname=hostname, version="0.1.0", **kw)
        async with await self.bus("enroll", inbox_prefix=enroll_inbox(user.public)) as bus:
            reply = await request_enrollment(bus, req, box, timeout=10)
        if not reply.ok or not reply.jwt:
            return reply, None
        path = self.root / "hosts" / f"{hostname}.creds"
        write_secret(path, creds_text(reply.jwt, user.seed))
        return reply, str(path)

    def start_server(self, *extra: str) -> Proc:
        self.server = self.procs.spawn("server", fleet_argv(
            "server", "--nats", self.url, "--offline-after", str(FAST_GRACE), "--monitor-interval", "0.1",
            "--heartbeat-interval", str(FAST_HEARTBEAT), "--creds", self.creds("server"),
            "--trust-dir", str(self.trust.root), *extra))
        wait_for(lambda: run_cli("list", "--json", "--nats", self.url).exit_code == 0, 20, 0.2, "fleet server")
        return self.server

    def key(self, key_id: str, *, tenant: str = "fin-prod", pools: tuple[str, ...] = ("pool-local-main",),
            max_uses: int | None = None, labels: tuple[str, ...] = (), models: tuple[str, ...] | None = None,
            expires: str | None = None) -> str:
        """Declare enrollment key `key_id` in the test fleet's fleet.yaml and apply it; returns its secret."""
        secret = secrets.token_urlsafe(24)
        var = "FLEET_TEST_KEY_" + key_id.upper().replace("-", "_")
        self.secrets[var] = secret
        self.keys[key_id] = {"id": key_id, "tenant": tenant, "pools": list(pools), "labels": list(labels),
                             "secret": {"from_env": var}, **({"max_uses": max_uses} if max_uses else {}),
                             **({"models": list(models)} if models is not None else {}),
                             **({"expires": expires} if expires else {})}
        self.apply()
        return secret

    def apply(self, *, hosts: dict[str, str] | None = None, pool_slots: int = 4, hosts_max: int | None = None) -> Any:
        """Write the test fleet's fleet.yaml (its pools, the keys declared so far, `hosts:` statuses) and apply it."""
        self.fleet_file.write_text(fleet_yaml(list(self.keys.values()), hosts or {}, pool_slots, hosts_max,
                                              self.layout))
        result = run_cli("apply", "--auto-approve", "--no-wait", "-f", str(self.fleet_file), "--nats", self.url,
                         env=self.secrets)
        assert result.exit_code == 0, result.output
        return result

    @property
    def shared(self) -> Path:
        """A directory every test agent's sessions may write (fleet agent run --sandbox-bind)."""
        path = self.root / "shared"
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o777)
        return path

    def shared_file(self, name: str) -> Path:
        """An empty file in `shared` that sessions of any uid may append to."""
        path = self.shared / name
        path.touch()
        os.chmod(path, 0o666)
        return path

    def agent_dir(self, name: str) -> Path:
        return self.root / "agents" / name

    def agent(self, name: str, *args: str, key: str | None = None, expose_tmp: bool = True) -> Proc:
        """A real agent process; the key goes through FLEET_ENROLL_KEY, as it should (never the command line).
        Its sessions are sandboxed (fleet.agents.sandbox); with `expose_tmp` they see the test's temporary
        directory read-only (the markers tests write for them; the agents' state dirs in it are hidden from them,
        and the trust dir stays 0700)."""
        expose: tuple[str, ...] = ()
        if expose_tmp:
            os.chmod(self.root, 0o755)  # pytest makes it 0700: the sessions' uids could not look in
            expose = ("--sandbox-expose", str(self.root), "--sandbox-bind", str(self.shared))
        argv = fleet_argv("agent", "run", "--nats", self.url, "--state-dir", str(self.agent_dir(name)),
                          "--hostname", name, "--heartbeat-interval", str(FAST_HEARTBEAT), "--join-timeout", "20",
                          "--creds", self.creds("enroll"), *expose, *args)
        return self.procs.spawn(f"agent-{name}", argv, env={"FLEET_ENROLL_KEY": key} if key is not None else None)

    def hosts(self) -> list[dict[str, Any]]:
        result = run_cli("list", "--json", "--nats", self.url)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {h["hostname"]: h for h in self.hosts()}

    def wait_status(self, name: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
        return wait_for(lambda: (h := self.by_name().get(name)) and h["status"] == status and h, timeout,
                        what=f"{name} {status}")

    def machine_id(self, name: str) -> str:
        return json.loads((self.agent_dir(name) / "identity.json").read_text())["machine_id"]


@pytest.fixture
def live_fleet(trusted_nats: NatsHandle, processes: ProcessSet, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> LiveFleet:
    fleet = LiveFleet(trusted_nats, processes, tmp_path)
    monkeypatch.setenv("FLEET_NATS_CREDS", fleet.creds("admin"))  # the CLI calls of the test run as the admin
    fleet.start_server()
    return fleet


# ------------------------------------------------------------------------------------------- a port held by another program

_HOLDER = """
import socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", port))
srv.listen(16)
print("listening", flush=True)
held = []
while True:
    conn, _ = srv.accept()
    if mode == "close":
        conn.close()  # closes every connection at once
    else:
        held.append(conn)  # accepts and never says a word
"""


@dataclass
class PortHolder:
    port: int
    proc: Proc

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def port_holder(processes: ProcessSet) -> Callable[[str], PortHolder]:
    """Start a real TCP listener on a free 127.0.0.1 port in its own process (a program that is not a NATS server):
    mode "silent" accepts and never speaks, "close" closes each connection at once. Stopped by PID in teardown."""

    def start(mode: str) -> PortHolder:
        port = free_port()
        proc = processes.spawn(f"holder-{mode}-{port}", [sys.executable, "-c", _HOLDER, mode, str(port)])
        wait_for(lambda: "listening" in proc.output() or proc.popen.poll() is not None, 10, 0.02, "port holder")
        assert proc.popen.poll() is None, proc.output()
        return PortHolder(port, proc)

    return start
