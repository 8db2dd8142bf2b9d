"""The worker agent: enroll (or re-register), heartbeat, obey control commands, serve its local sockets.

Run by `fleet agent run` (fleet.cli.agent_cmds). Lifecycle: connect to NATS (reconnecting forever once
connected), enroll with the key on first start (the server assigns the machine ID and a host credential, saved
in the state dir) or register with machine ID + credential afterwards, then publish a heartbeat every interval
on its own subject. A heartbeat carries dynamic state only (status, running sessions, uptime, version): what the
host may serve comes from its enrollment record and the applied pools, which the server resolves; the join reply
tells the agent its envelope and the status fleet.yaml declares for it, and the server's controllers send control
commands on the host's own subject when that changes. The agent never reads the control-plane store.
After a NATS reconnect it registers again. SIGTERM/SIGINT: report draining, say goodbye (so the server marks it
offline at once), exit 0. A revoke from the control plane stops it with exit code 3.
Sessions run in the host's sandbox (fleet.agents.sandbox), probed once at start and reported at registration; an
agent that cannot isolate its sessions exits with the reason unless every pool it serves says `isolation: none`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import __version__
from fleet.agents.control import serve_json_socket
from fleet.agents.sandbox import DEFAULT_UID_RANGE, SESSION_SOCKET, CannotIsolate, Probe, Sandbox, probe
from fleet.agents.sessions import Runner
from fleet.agents.state import AgentPaths, load_identity, load_status, save_identity, save_status
from fleet.bus import subjects
from fleet.bus.connection import Bus, NoResponders, RequestTimeout, connect
from fleet.bus.enrolling import ReplyKey, enroll_inbox, enrollment_request, request_enrollment
from fleet.bus.messages import (
    Bye,
    Capacity,
    ControlCommand,
    ControlReply,
    Heartbeat,
    Isolation,
    JoinReply,
    PoolMembership,
    ProtocolError,
    RegisterRequest,
    decode,
)
from fleet.bus.settings import TlsSettings
from fleet.bus.trust import Key, creds_text
from fleet.errors import EXIT_REVOKED, AuthRefused, FleetError, HostRevoked, Refused, TransientError
from fleet.retry import Backoff, retrying

log = logging.getLogger(__name__)

#: between the attempts to enroll or join while no fleet server answers yet: 0.25 s doubling up to 1 s
SERVER_WAIT = Backoff(0.25, 1.0, floor=0.5)


def _waiting(attempt: int, exc: BaseException, delay: float) -> None:
    log.info("waiting for the fleet server: %s", exc)

__all__ = ["EXIT_REVOKED", "Agent", "AgentSettings", "Revoked"]


class Revoked(HostRevoked):
    """The control plane revoked this host (the agent exits with EXIT_REVOKED)."""

    exit_code = EXIT_REVOKED


@dataclass
class AgentSettings:
    state_dir: Path
    nats_url: str = "nats://127.0.0.1:4222"
    creds: str | None = None  # the enrollment identity (only the first start needs it)
    tls: TlsSettings | None = None
    connect_timeout: float = 10.0
    enroll_key: str | None = None
    pools: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    max_sessions: int | None = None
    pool_max_disk_gb: float | None = None
    heartbeat_interval: float = 2.0
    hostname: str = field(default_factory=socket.gethostname)
    join_timeout: float = 30.0
    session_user: str | None = None  # run sessions as this user instead of a uid of session_uids (root only)
    session_uids: tuple[int, int] = DEFAULT_UID_RANGE
    sandbox_expose: tuple[str, ...] = ()  # more read-only paths in the sessions' view
    sandbox_writable: tuple[str, ...] = ()  # paths all sessions of this agent may write
    sandbox: bool = True  # False: run sessions unisolated (accepted only when every pool says isolation: none)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.paths = AgentPaths.of(settings.state_dir)
        self.bus: Bus | None = None
        self.machine_id: str | None = None
        self.tenant: str | None = None
        self.pools: list[PoolMembership] = []
        self.labels: list[str] = []
        self.models: list[str] = []
        self.capacity = Capacity(max_concurrent_sessions=settings.max_sessions or 0)
        self.status = "active"
        self.runner: Runner | None = None
        self.lease_s = 5.0  # how long the server keeps this host's sessions without news (the join reply says)
        self._disconnected_at: float | None = None
        self.started_at = time.time()
        self.seq = 0
        self._stop = asyncio.Event()
        self._exit: FleetError | None = None
        self._wake = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []
        self._reregister: asyncio.Task | None = None
        self.sandbox: Sandbox | None = None
        self._warming: asyncio.Task[None] | None = None  # sandbox slots made ahead

    # ------------------------------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until SIGTERM/SIGINT (returns) or a revoke / refusal (raises a FleetError)."""
        self.paths.ensure()
        self.status = load_status(self.paths)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        s = self.settings
        identity = load_identity(self.paths)
        if identity is None:
            identity = await self._enroll()
        self.machine_id = identity["machine_id"]
        try:
            self.bus = await connect(s.nats_url, creds=str(self.paths.host_creds), tls=s.tls,
                                     connect_timeout=s.connect_timeout, name=f"fleet-agent {s.hostname}",
                                     persistent=True, on_reconnect=self._on_reconnect, on_closed=self._on_closed)
        except AuthRefused as exc:
            raise Revoked(f"NATS refuses this host's identity ({exc.message}): it was revoked or removed",
                          hint=f"to enroll it again: remove {self.paths.identity} and {self.paths.host_creds}, and "
                               "run with a valid enrollment key") from exc
        try:
            await self._probe_sandbox()  # once connected: the registration reports it
            await self._join()
            self._check_isolation()
            assert self.sandbox is not None
            self.runner = Runner(self.bus, self.machine_id or "", self.paths.root, self.sandbox, self._wake.set,
                                 tenant=self.tenant)
            if self.sandbox.isolated:  # a slot for each session it may run, made ahead, one after the other
                self._warming = asyncio.get_running_loop().create_task(
                    self.sandbox.warm(self.capacity.max_concurrent_sessions))
            mid = self.machine_id or ""
            for subject, handler in ((subjects.host_control(mid), self._on_control),
                                     (subjects.host_assign(mid), self.runner.on_assign),
                                     (subjects.host_cancel(mid), self.runner.on_cancel)):
                await self.bus.subscribe(subject, self._from_server(subject, handler))
            self.runner.resume()  # the reports an earlier run kept (fleet.agents.outbox): listed, and sent again
            self._servers.append(await serve_json_socket(self.paths.control_socket, self._on_local))
            log.info("agent %s (%s) running: tenant %s, pools %s, status %s", self.machine_id, s.hostname,
                     self.tenant, ", ".join(p.id for p in self.pools), self.status)
            await self._heartbeat_loop()
            if self._exit is not None:
                raise self._exit
            await self._goodbye()
        finally:
            if self._warming is not None:
                self._warming.cancel()
            if self.runner is not None:
                await self.runner.close()
            if self.sandbox is not None:
                self.sandbox.stop()
            for server in self._servers:
                server.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.control_socket.unlink()
            await self.bus.close()

    async def _enroll(self) -> dict[str, Any]:
        """First start: generate this host's own nkey, enroll with the key over the enrollment identity (which may
        reach `fleet.v1.enroll` and nothing else), and save the identity the server signed for the nkey."""
        s = self.settings
        if not s.enroll_key:
            raise Refused(f"no identity in {self.paths.root} and no enrollment key",
                          hint="pass FLEET_ENROLL_KEY or --enroll-key-file (or --enroll-key)")
        nkey = Key.generate("user")
        box = ReplyKey.generate()  # the reply is sealed to it: other agents sharing the enroll identity read nothing
        req = enrollment_request(nkey, box, key=s.enroll_key, hostname=s.hostname, version=__version__, pools=s.pools,
                                 labels=s.labels, models=s.models, max_sessions=s.max_sessions,
                                 pool_max_disk_gb=s.pool_max_disk_gb,
                                 credential_socket=self._socket_shown(), isolation=self._isolation())
        async with await connect(s.nats_url, creds=s.creds, tls=s.tls, connect_timeout=s.connect_timeout,
                                 name=f"fleet-agent {s.hostname} (enrolling)",
                                 inbox_prefix=enroll_inbox(nkey.public)) as bus:
            try:
                async for attempt in retrying(retry_on=TransientError, within=s.join_timeout, wait=SERVER_WAIT,
                                              on_retry=_waiting):
                    with attempt:
                        reply = await request_enrollment(bus, req, box, timeout=10.0)
                        if not reply.ok and reply.reason in (None, "rate_limited", "unavailable"):
                            raise TransientError(f"enrollment failed: {reply.message}")
            except TransientError as exc:
                raise TransientError(f"could not enroll: {exc}",
                                     hint="is `fleet server` running (`fleet up` starts one), and of the same "
                                          "version? (it does not answer a request it cannot verify)") from exc
        if not reply.ok:
            raise Refused(f"enrollment refused ({reply.reason}): {reply.message}")
        if not reply.machine_id or not reply.jwt:
            raise Refused("the enrollment reply carries no machine ID or identity")
        identity = {"machine_id": reply.machine_id, "tenant": reply.tenant, "key_id": reply.key_id,
                    "pools": [p.id for p in reply.pools], "enrolled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        save_identity(self.paths, identity, creds_text(reply.jwt, nkey.seed))
        log.info("enrolled as %s", reply.machine_id)
        return identity

    async def _join(self) -> None:
        """Register on this host's own subject (after a restart or a reconnect); retry while no server answers."""
        try:
            async for attempt in retrying(retry_on=(NoResponders, RequestTimeout, TransientError),
                                          within=self.settings.join_timeout, wait=SERVER_WAIT, on_retry=_waiting):
                with attempt:
                    reply = await self._register_once()
        except (NoResponders, RequestTimeout, TransientError) as exc:
            raise TransientError(f"could not join the fleet: {exc}",
                                 hint="is `fleet server` running? (`fleet up` starts one)") from exc
        self._apply(reply)

    async def _register_once(self) -> JoinReply:
        assert self.bus is not None and self.machine_id is not None
        s = self.settings
        req = RegisterRequest(hostname=s.hostname, version=__version__, credential_socket=self._socket_shown(),
                              isolation=self._isolation())
        reply = decode(JoinReply, await self.bus.request(subjects.register(self.machine_id), req.encode(),
                                                         timeout=5.0, what="fleet server"))
        if not reply.ok:
            if reply.reason is None:  # the server failed (e.g. its store is still recovering): retry
                raise TransientError(f"registration failed: {reply.message}")
            cls = Revoked if reply.reason == "revoked" else Refused
            raise cls(f"registration refused ({reply.reason}): {reply.message}")
        return reply

    async def _probe_sandbox(self) -> None:
        s = self.settings
        os.umask(0o077)  # what the agent writes is its own; its sessions' files are theirs alone too
        found = probe() if s.sandbox else Probe("none", reason="fleet agent run --no-sandbox")
        self.sandbox = Sandbox.create(found, self.paths.root, uid_range=s.session_uids, user=s.session_user,
                                      expose=s.sandbox_expose, writable=s.sandbox_writable)
        if self.sandbox.isolated:
            try:
                await self.sandbox.check()  # a real session (`true`) in a real slot, once
            except FleetError as exc:
                self.sandbox.stop()
                self.sandbox = Sandbox.create(Probe("none", reason=exc.message), self.paths.root)
        if not self.sandbox.isolated:
            log.warning("this host cannot isolate sessions: %s", self.sandbox.probe.reason)

    def _isolation(self) -> Isolation | None:
        return Isolation.model_validate(self.sandbox.describe()) if self.sandbox is not None else None

    def _socket_shown(self) -> str:
        """Where a session finds its own credential socket (each session has its own)."""
        sandboxed = self.sandbox is not None and self.sandbox.isolated
        return SESSION_SOCKET if sandboxed else f"{self.paths.root}/s/<n>.sock (per session)"

    def _check_isolation(self) -> None:
        """A host that cannot isolate its sessions takes none, unless every pool it serves allows it."""
        if self.sandbox is None or self.sandbox.isolated:
            return
        strict = [p.id for p in self.pools if p.isolation != "none"]
        if strict or not self.pools:
            raise CannotIsolate(
                f"this host cannot run sessions isolated from the agent ({self.sandbox.probe.reason}), and pool(s) "
                f"{', '.join(strict) or '-'} require it",
                hint="install bubblewrap (apt-get install bubblewrap) and run the agent as root or where user "
                     "namespaces are allowed; or set `isolation: none` on the pool in fleet.yaml (not recommended: "
                     "a session can then read this host's credential)")
        log.warning("sessions run WITHOUT isolation: every pool of this host says isolation: none")

    async def _on_closed(self) -> None:
        """NATS closed the connection for good: when it was the server revoking this identity, exit as revoked."""
        if self.bus is None or self._stop.is_set():
            return
        said = str(getattr(self.bus.nc, "last_error", "") or "").lower()
        if "revoked" in said or "authorization" in said or "authentication" in said:
            log.warning("NATS closed this host's connection: %s", said or "revoked")
            self._exit = Revoked(f"host {self.machine_id} was revoked: NATS refuses its identity")
            self._stop.set()

    def _apply(self, reply: JoinReply) -> None:
        self.machine_id = reply.machine_id
        self.tenant = reply.tenant
        self.pools = reply.pools
        self.labels = reply.labels
        self.models = reply.models
        if reply.capacity is not None:
            self.capacity = reply.capacity
        if reply.lease_s:
            self.lease_s = reply.lease_s
        if reply.status is not None and reply.status != self.status:
            log.info("fleet.yaml declares this host %s", reply.status)
            self.set_status({"active": "resume", "paused": "pause", "draining": "drain"}[reply.status])

    async def _on_reconnect(self) -> None:
        if self._reregister is None or self._reregister.done():
            self._reregister = asyncio.get_running_loop().create_task(self._register_again())

    async def _register_again(self) -> None:
        try:
            await self._join()
            log.info("re-registered as %s after reconnect", self.machine_id)
            self._wake.set()
        except Revoked as exc:
            self._exit = exc
            self._stop.set()
        except FleetError as exc:
            log.warning("re-registration failed: %s", exc)

    # ------------------------------------------------------------------------------------------ heartbeats
    def running(self) -> int:
        return self.runner.running() if self.runner is not None else 0

    def heartbeat(self) -> Heartbeat:
        self.seq += 1
        sessions = self.runner.infos() if self.runner is not None else []
        return Heartbeat(seq=self.seq, sent_at=time.time(), started_at=self.started_at, status=self.status,  # type: ignore[arg-type]
                         running=self.running(), sessions=sessions, version=__version__)

    async def _heartbeat_loop(self) -> None:
        assert self.bus is not None
        subject = subjects.heartbeat(self.machine_id or "")
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            await self._check_lease(now - last, now)
            last = now
            if self.bus.is_connected:
                with contextlib.suppress(FleetError):
                    await self.bus.publish(subject, self.heartbeat().encode())
            self._wake.clear()
            stop = asyncio.ensure_future(self._stop.wait())
            wake = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({stop, wake}, timeout=self.settings.heartbeat_interval,
                               return_when=asyncio.FIRST_COMPLETED)
            for fut in (stop, wake):
                fut.cancel()

    async def _check_lease(self, since_last: float, now: float) -> None:
        """Self-fencing: the server re-queues this host's sessions once it has heard nothing for the lease; past that,
        they may run elsewhere, so stop them here (they are not reported: their fencing tokens are dead)."""
        if self.runner is None:
            return
        if since_last > self.lease_s:
            await self.runner.kill_all(f"the agent was stopped for {since_last:.1f}s, longer than its lease")
        if self.bus is not None and not self.bus.is_connected:
            self._disconnected_at = self._disconnected_at or now
            if now - self._disconnected_at > self.lease_s:
                await self.runner.kill_all(f"cut off from NATS for longer than its lease ({self.lease_s:g}s)")
        else:
            self._disconnected_at = None

    async def _goodbye(self) -> None:
        """Clean shutdown: one heartbeat saying draining, then the goodbye (the server marks us offline)."""
        assert self.bus is not None
        self.status = "draining" if self.status != "paused" else self.status
        with contextlib.suppress(FleetError):
            if self.bus.is_connected and self.machine_id:
                hb = self.heartbeat()
                hb.status = "draining"
                await self.bus.publish(subjects.heartbeat(self.machine_id), hb.encode())
                await self.bus.publish(subjects.bye(self.machine_id), Bye().encode())
                await self.bus.flush(timeout=2.0)
        log.info("agent %s stopped (said goodbye)", self.machine_id)

    # ------------------------------------------------------------------------------------------ control
    def set_status(self, action: str) -> str:
        new = {"pause": "paused", "resume": "active", "drain": "draining"}[action]
        self.status = new
        save_status(self.paths, new)
        self._wake.set()  # report the change at once
        log.info("status -> %s", new)
        return new

    def _from_server(self, subject: str, handler: Any) -> Any:
        """Only what the server itself sends on this host's subjects reaches `handler`. Nobody but the server may
        publish there, but a JetStream push consumer delivers to whatever subject its creator names, and admins and
        viewers may create consumers on the buckets they read: an admin could deliver `{"action": "revoke"}` (or an
        assignment) here. Such a delivery is recognisable (checked against nats-server 2.15): it arrives with the
        subject of the stored message (`$KV.<bucket>.<key>`), not the one subscribed, and a `$JS.ACK.…` reply
        subject, whatever its ack policy; its idle heartbeats and flow control carry headers. The server's own
        messages come on the subject itself, without headers, with no reply or an `_INBOX.` one."""
        dropped = [0]

        async def on_msg(msg: Any) -> None:
            if msg.subject != subject or msg.headers or (msg.reply and not msg.reply.startswith("_INBOX.")):
                dropped[0] += 1
                if dropped[0] == 1 or dropped[0] % 1000 == 0:
                    log.warning("security: ignored %d message(s) on %s that the server did not send (a JetStream "
                                "delivery: subject %s, reply %s)", dropped[0], subject, str(msg.subject)[:80],
                                str(msg.reply)[:80])
                return
            await handler(msg)

        return on_msg

    async def _on_control(self, msg: Any) -> None:
        try:
            cmd = decode(ControlCommand, msg.data)
        except ProtocolError as exc:
            reply = ControlReply(ok=False, message=exc.message)
        else:
            if cmd.action == "revoke":
                log.warning("this host was revoked by %s", cmd.by)
                self._exit = Revoked(f"host {self.machine_id} was revoked by the control plane")
                self._stop.set()
                reply = ControlReply(ok=True, status="revoked")
            else:
                reply = ControlReply(ok=True, status=self.set_status(cmd.action))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply.encode())

    async def _on_local(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd in ("pause", "resume", "drain"):
            self.set_status(cmd)
            return {"ok": True, "status": self.local_status()}
        if cmd == "status":
            return {"ok": True, "status": self.local_status()}
        return {"ok": False, "error": f"unknown command {cmd!r} (status, pause, resume, drain)"}

    def local_status(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "hostname": self.settings.hostname,
            "tenant": self.tenant,
            "status": self.status,
            "drained": self.status == "draining" and self.running() == 0,
            "connected": bool(self.bus and self.bus.is_connected),
            "nats": self.settings.nats_url,
            "pools": [p.model_dump() for p in self.pools],
            "labels": self.labels,
            "models": self.models,
            "sessions": {"running": self.running(), "max": self.capacity.max_concurrent_sessions},
            "capacity": self.capacity.model_dump(),
            "version": __version__,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "uptime_s": round(time.time() - self.started_at, 1),
            "heartbeats_sent": self.seq,
            "state_dir": str(self.paths.root),
            "credential_socket": self._socket_shown(),
            "sandbox": self.sandbox.describe() if self.sandbox is not None else None,
        }
