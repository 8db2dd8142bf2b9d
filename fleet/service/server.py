"""`fleet server`: the control-plane process, a composition root. It wires, subscribes and starts; it decides nothing.

Started by `fleet server` (foreground) and `fleet up` (background) in fleet.cli.runtime_cmds, in-process by the
benches and tests. `FleetServer.start()`:

1. connects (reconnecting forever) and opens the buckets;
2. follows the applied config (fleet.hosts.config.AppliedConfig) and the host records (fleet.hosts.registry.
   Registry) through one continuous ordered KV watch each (fleet.bus.kv.Informer), both read completely before
   anything is answered, both resynced after every NATS reconnect;
3. subscribes heartbeats and goodbyes (every replica: liveness is computed in memory by each), and serves
   enrollment, registration and the host API (fleet.service.api) in the `fleet-server` queue group, bounded in
   size and concurrency by fleet.bus.connection.Bus.serve, answering only on the requester's own inbox
   (fleet.bus.replies); with a trust directory it serves through two identities it signs for itself that may
   publish nothing but replies (fleet.bus.identities.server_replies, server_enroll), so the NATS server refuses a
   reply aimed anywhere else even if fleet's own check failed;
4. hands every long-running loop to its manager (fleet.service.manager), which restarts a failed one with backoff
   and logs why: the offline monitor and the writer of transitions (fleet.hosts.liveness), the declared-status
   controller (fleet.hosts.declared), the revocation push (fleet.hosts.revocation), the metrics log;
5. lets the manager run for the dispatch lease (fleet.dispatch.leader): while this replica holds it, the manager runs
   the leader-only runnables: the dispatcher (fleet.dispatch.dispatcher, with the session API and the hosts' work
   subjects of fleet.dispatch.api) and the janitor of consumers that readers of the buckets left behind
   (fleet.service.janitor). The ping reply carries the manager's view of them (`fleet ping`).

The backend controllers of a later issue join here, as further wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleet import __version__
from fleet.bus import identities, replies, subjects
from fleet.bus.applied import ApplyLock, load_pepper
from fleet.bus.connection import Bus, connect
from fleet.bus.kv import Informer, allow_message_ttls, open_store
from fleet.bus.messages import MAX_MESSAGE_BYTES
from fleet.bus.settings import TlsSettings
from fleet.bus.trustdir import TrustDir
from fleet.dispatch.api import SessionApi
from fleet.dispatch.dispatcher import MAX_OPEN_PER_TENANT, SESSION_RETENTION_S, Dispatcher
from fleet.dispatch.leader import Lease
from fleet.errors import FleetError
from fleet.hosts.config import AppliedConfig
from fleet.hosts.declared import INTERVAL_S as DECLARED_INTERVAL_S
from fleet.hosts.declared import DeclaredStatus
from fleet.hosts.enrollment import Enroller
from fleet.hosts.liveness import Liveness
from fleet.hosts.registry import DEFAULT_OFFLINE_AFTER, Registry
from fleet.hosts.revocation import PUSH_EVERY_S, Revocations
from fleet.retry import Backoff, retrying
from fleet.service.api import HostApi
from fleet.service.janitor import ConsumerJanitor
from fleet.service.manager import Manager, describe, every

log = logging.getLogger(__name__)

GC_GEN0 = 50_000

DEFAULT_MONITOR_INTERVAL = 0.25
DEFAULT_HEARTBEAT_INTERVAL = 2.0
METRICS_LOG_S = 60.0
API_CONCURRENCY = 64
AGENT_CONCURRENCY = 32
RESYNC_BACKOFF = Backoff(0.2, 5.0, floor=0.5)


@dataclass
class ServerSettings:
    url: str = "nats://127.0.0.1:4222"
    creds: str | None = None
    tls: TlsSettings | None = None
    trust_dir: str | None = None  # keys to sign host identities and revoke them (fleet.bus.trustdir)
    connect_timeout: float = 5.0
    offline_after: float = DEFAULT_OFFLINE_AFTER
    monitor_interval: float = DEFAULT_MONITOR_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    page_bytes: int | None = None  # most bytes of one host page; None: the NATS server's max_payload
    session_retention: float = SESSION_RETENTION_S  # seconds the sessions bucket keeps a finished session
    max_open_sessions: int = MAX_OPEN_PER_TENANT  # sessions of one tenant queued or running at once


@dataclass
class FleetServer:
    settings: ServerSettings
    server_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    bus: Bus | None = None
    config: AppliedConfig = field(default_factory=AppliedConfig)
    registry: Registry = field(init=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    sys_bus: Bus | None = None
    serve_bus: Bus | None = None  # answers the API, registrations, sessions and work (only replies: see above)
    enroll_bus: Bus | None = None  # answers enrollments (only into the enrollment inbox)
    dispatcher: Dispatcher | None = None
    lease: Lease | None = None
    manager: Manager = field(default_factory=Manager)
    _tasks: set[asyncio.Task] = field(default_factory=set)  # one-off tasks (resyncs after a reconnect)
    _metrics_last: dict[str, int] = field(default_factory=dict)
    _informers: list[Informer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.registry = Registry(self.config, offline_after=self.settings.offline_after)
        self.registry.deaf()  # until its heartbeat subscription is up (start)

    async def start(self) -> None:
        s = self.settings
        trust = TrustDir.load(Path(s.trust_dir)) if s.trust_dir else None
        async def deaf() -> None:
            self.registry.deaf()

        self.bus = bus = await connect(s.url, creds=s.creds, tls=s.tls, connect_timeout=s.connect_timeout,
                                       name="fleet-server", persistent=True, on_disconnect=deaf)
        await self._warn_if_exposed(s)
        config_store = await open_store(bus, subjects.BUCKET_CONFIG)
        self.hosts_store = hosts_store = await open_store(bus, subjects.BUCKET_HOSTS)
        counters = await open_store(bus, subjects.BUCKET_ENROLL)
        await ApplyLock.open(bus)  # the lock bucket exists before an admin (who may not create buckets) applies
        pepper = await load_pepper(bus, create=True)

        started = time.monotonic()
        self._informers = [Informer(config_store, self.config.apply), Informer(hosts_store, self.registry.apply_record)]
        for informer in self._informers:
            await informer.start()
        log.info("loaded %d host records and %d pools in %.2fs", len(self.registry.entries), len(self.config.pools),
                 time.monotonic() - started)
        bus.on_reconnect(self._resync)
        # The registry is long-lived: move it out of the collector's generations, so that the cyclic GC does not
        # traverse 100k records on every full collection (that stalled API replies for ~0.5 s at 100k hosts).
        gc.collect()
        gc.freeze()
        # Each session dispatched allocates a few hundred short-lived objects: collect the young generation every
        # 50,000 allocations, not 700 (bench/dispatch.py: +25-45% sessions/s, p99 / 4 at 128 in flight).
        gc.set_threshold(GC_GEN0, 50, 100)

        revocations = None
        if trust is not None:
            self.sys_bus = await connect(s.url, creds=str(trust.path("sys.creds")), tls=s.tls,
                                         connect_timeout=s.connect_timeout, name="fleet-server-sys", persistent=True)
            revocations = Revocations(trust, await open_store(bus, subjects.BUCKET_TRUST), self.sys_bus)
            self.sys_bus.on_reconnect(revocations.push)
        else:
            log.warning("no --trust-dir: this server cannot enroll hosts nor revoke their NATS identities")
        enroller = Enroller(self.registry, hosts_store, counters, s.heartbeat_interval, pepper=pepper, trust=trust,
                            revocations=revocations)
        self.api = api = HostApi(bus, self.registry, enroller, hosts_store, self.server_id, page_bytes=s.page_bytes,
                                 revocations=revocations,
                                 metrics=[bus.metrics, self.registry.metrics, self.config.metrics, enroller.metrics])
        registry = self.registry
        liveness = Liveness(registry, hosts_store, bus, monitor_interval=s.monitor_interval)
        serve_bus, enroll_bus = await self._serving_buses(bus, trust)
        api.strict_replies = serve_bus.reply_rule is replies.identity_inbox

        async def on_heartbeat(msg: Any) -> None:
            registry.heartbeat(msg.subject, msg.data)

        async def on_bye(msg: Any) -> None:
            if registry.bye(msg.subject) is not None:
                liveness.wake.set()

        await bus.subscribe(subjects.HEARTBEAT_WILDCARD, on_heartbeat)
        await bus.subscribe(subjects.BYE_WILDCARD, on_bye)
        await bus.flush()
        registry.listen()  # silence counts from now: the hosts alive before this start are heard within their grace

        async def listen_again() -> None:
            registry.listen()

        bus.on_reconnect(listen_again)
        q = subjects.SERVER_QUEUE
        await enroll_bus.serve(subjects.ENROLL, api.enroll, queue=q, concurrency=AGENT_CONCURRENCY,
                               max_bytes=MAX_MESSAGE_BYTES, answer_refusals=not api.strict_replies)
        await serve_bus.serve(subjects.REGISTER_WILDCARD, api.register, queue=q, concurrency=AGENT_CONCURRENCY,
                              max_bytes=MAX_MESSAGE_BYTES, reply_rule=api.register_reply_ok,
                              admit=api.admit_register)
        for subject, handler in ((subjects.API_PING, api.ping), (subjects.API_HOSTS_PAGE, api.page),
                                 (subjects.API_HOSTS_GET, api.get), (subjects.API_HOSTS_COMMAND, api.command)):
            await serve_bus.serve(subject, handler, queue=q, concurrency=API_CONCURRENCY, max_bytes=MAX_MESSAGE_BYTES)
        await serve_bus.serve(subjects.hosts_page_at(self.server_id), api.page, concurrency=API_CONCURRENCY,
                              max_bytes=MAX_MESSAGE_BYTES)
        for b in {id(x): x for x in (bus, serve_bus, enroll_bus)}.values():
            await b.flush()
        m = self.manager
        m.add("liveness-monitor", every(s.monitor_interval, liveness.check))
        m.add("liveness-writer", liveness.writer)
        m.add("declared-status", every(DECLARED_INTERVAL_S, DeclaredStatus(registry, bus).tick))
        if revocations is not None:
            m.add("revocations", every(PUSH_EVERY_S, revocations.push, first=True))
        await self._start_dispatch(bus, serve_bus)
        m.add("consumer-janitor", ConsumerJanitor(bus).run, leader_only=True)
        m.add("metrics-log", every(METRICS_LOG_S, self._log_metrics))
        api.manager_view = m.view
        await m.start()
        self.ready.set()
        log.info("fleet server %s (%s) ready on %s (%d hosts known, offline after %.1fs)", self.server_id,
                 __version__, s.url, len(registry.entries), s.offline_after)

    async def _serving_buses(self, bus: Bus, trust: TrustDir | None) -> tuple[Bus, Bus]:
        """The connections requests are answered through (see the module doc): with a trust directory, two of their
        own, whose identities may publish only replies; without one, the main connection. Either way, each answers
        only the reply subjects of fleet.bus.replies."""
        s = self.settings
        if trust is None:
            return bus, bus
        made = []
        for name, perms, rule in (("fleet-server-replies", identities.server_replies(), replies.identity_inbox),
                                  ("fleet-server-enroll", identities.server_enroll(), replies.enroll_inbox)):
            b = await connect(s.url, creds_text=trust.issue(f"{name} {self.server_id}", perms), tls=s.tls,
                              connect_timeout=s.connect_timeout, name=name, persistent=True)
            if b.auth_required:  # operator mode: every client replies on its own identity's inbox
                b.reply_rule = rule
            elif rule is replies.enroll_inbox:  # a NATS without auth: agents enroll with nats-py's default inbox
                b.reply_rule = replies.any_inbox
            b.metrics = bus.metrics  # one set of counters for ping and the log
            made.append(b)
        self.serve_bus, self.enroll_bus = made
        return made[0], made[1]

    async def _start_dispatch(self, bus: Bus, serve_bus: Bus) -> None:
        """The dispatcher, active while this replica holds the dispatch lease (fleet.dispatch.leader); its API is
        answered through `serve_bus`."""
        sessions = await open_store(bus, subjects.BUCKET_SESSIONS, history=1)
        await allow_message_ttls(sessions)  # finished sessions expire (Dispatcher.retention)
        self.dispatcher = dispatcher = Dispatcher(bus, self.registry, self.config, sessions,
                                                  lease_ok=lambda: self.lease is not None and self.lease.held,
                                                  retention=self.settings.session_retention,
                                                  max_open=self.settings.max_open_sessions)
        self.api.metrics.append(dispatcher.metrics)
        session_api = SessionApi(serve_bus, dispatcher)

        async def dispatch() -> None:
            """The leader's dispatcher: take over (read every session), serve the session API, dispatch. Run by the
            manager while this replica holds the lease (and again, from a fresh takeover, if it fails)."""
            try:
                await dispatcher.take_over()
                gc.collect()
                gc.freeze()  # the sessions just read are long-lived: out of the collector's way
                await session_api.start()
                await dispatcher.run()
            finally:
                dispatcher.step_down()
                await session_api.stop()

        self.lease = await Lease.open(bus, self.server_id)
        self.manager.elect_with(self.lease)
        self.manager.add("dispatcher", dispatch, leader_only=True)

    async def _warn_if_exposed(self, s: ServerSettings) -> None:
        """Say so when the bus is open to eavesdroppers (no TLS beyond this machine) or to anyone (anonymous
        connections accepted): both mean that whoever reaches the port can read or control the fleet."""
        for warning in exposure_warnings(s.url, s.tls):
            log.warning("security: %s", warning)
        try:
            probe = await connect(s.url, tls=s.tls, connect_timeout=1.0, name="fleet-server-anonymous-probe")
        except FleetError:
            return  # refused: as it should be
        await probe.close()
        log.warning("security: NATS at %s accepts anonymous connections: anyone who can reach it can read and change "
                    "the fleet (run NATS in operator mode, as `fleet up` does; see docs/operations.md)", s.url)

    async def _resync(self) -> None:
        """After a NATS reconnect, read both buckets again: what changed meanwhile is applied, deletions included."""
        for informer in self._informers:
            self._spawn(self._resync_one(informer))

    async def _resync_one(self, informer: Informer) -> None:
        def failed(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("resync of %s failed (%s); retrying in %.1fs", informer.store.bucket, describe(exc), delay)

        # JetStream may need a moment after a server restart: retried until it works (or the server stops)
        async for attempt in retrying(retry_on=Exception, wait=RESYNC_BACKOFF, on_retry=failed):
            with attempt:
                await informer.resync()
        log.info("resynced %s after a reconnect", informer.store.bucket)

    def _log_metrics(self) -> None:
        """Say, once a minute, what untrusted input was dropped or refused (nothing when nothing was)."""
        quiet = {"heartbeats", "offline_transitions"}
        now: dict[str, int] = {}
        for counter in self.api.metrics:
            for k, v in counter.items():
                now[k] = now.get(k, 0) + v
        last = self._metrics_last
        moved = {k: v - last.get(k, 0) for k, v in now.items() if k not in quiet and v != last.get(k, 0)}
        if moved:
            log.warning("in the last %.0fs, dropped or refused: %s", METRICS_LOG_S,
                        ", ".join(f"{k} {v}" for k, v in sorted(moved.items())))
        self._metrics_last = now

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        await self.manager.stop()  # the leader's runnables first, then the lease (another replica takes over at once)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for informer in self._informers:
            await informer.stop()
        for bus in (self.enroll_bus, self.serve_bus, self.sys_bus, self.bus):
            if bus is not None:
                await bus.close()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def exposure_warnings(url: str, tls: TlsSettings | None) -> list[str]:
    """Why talking to NATS at `url` this way exposes the fleet: servers beyond this machine reached without TLS."""
    hosts = [urlsplit(u.strip() if "://" in u else f"nats://{u.strip()}") for u in url.split(",") if u.strip()]
    remote = [h for h in hosts if (h.hostname or "") not in ("127.0.0.1", "localhost", "::1")]
    plain = [h for h in remote if h.scheme != "tls"]
    if plain and not tls:
        names = ", ".join(f"{h.hostname}:{h.port or 4222}" for h in plain)
        return [f"NATS at {names} is not on this machine and this server talks to it without TLS: credentials and "
                "enrollment keys cross the network in clear (use tls:// and --tls-ca)"]
    return []
