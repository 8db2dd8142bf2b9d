"""`fleet server`: the control-plane process. Enrollment authority, host registry, liveness monitor, host API.

Started by `fleet server` (foreground) and `fleet up` (background) in fleet.cli.runtime_cmds, in-process by
bench/heartbeats.py, bench/plan.py and tests. It keeps the registry in memory (loaded from KV bucket
fleet-v1-hosts in one ordered watch at start, written back only on state changes: enrollment, revocation, status
transitions), ingests heartbeats on `fleet.v1.hb.*` (the hot path: a JSON parse and a dict update), marks hosts
offline when their heartbeats stop for longer than the grace period, and answers the CLI on `fleet.v1.api.*`,
including the paged observed-hosts snapshots `fleet plan` reads (`fleet.v1.api.hosts.observed`). Later issues
add the controller and the dispatcher to this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fleet import __version__
from fleet.bus import subjects
from fleet.bus.connection import Bus, connect
from fleet.bus.kv import open_store
from fleet.bus.messages import (
    OBSERVED_COLUMNS,
    PROTOCOL_VERSION,
    ApiReply,
    ControlCommand,
    ControlReply,
    EnrollRequest,
    Heartbeat,
    HostCommand,
    HostQuery,
    HostRecord,
    HostsPageRequest,
    JoinReply,
    ProtocolError,
    RegisterRequest,
    decode,
    decode_heartbeat_fast,
)
from fleet.bus.records import KeySpec, PoolSpec, decode_record, format_time, now_utc, secret_hash
from fleet.errors import Conflict, FleetError, TransientError
from fleet.service.enrollment import check_enrollment

log = logging.getLogger(__name__)

DEFAULT_OFFLINE_AFTER = 5.0
DEFAULT_MONITOR_INTERVAL = 0.25
DEFAULT_HEARTBEAT_INTERVAL = 2.0
CONFIG_REFRESH_S = 5.0
SNAPSHOT_TTL_S = 30.0  # an observed-hosts snapshot lives this long after its last page was asked for
MAX_SNAPSHOTS = 8
DEFAULT_MAX_PAYLOAD = 1024 * 1024
_ID_PREFIX = re.compile(r"^[0-9a-fA-F-]{1,36}$")


@dataclass
class ServerSettings:
    url: str = "nats://127.0.0.1:4222"
    creds: str | None = None
    connect_timeout: float = 5.0
    offline_after: float = DEFAULT_OFFLINE_AFTER
    monitor_interval: float = DEFAULT_MONITOR_INTERVAL
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    page_bytes: int | None = None  # most bytes of one observed-hosts page; None: the NATS server's max_payload


@dataclass
class Stats:
    heartbeats: int = 0
    rejected: int = 0
    unknown: int = 0
    offline_transitions: int = 0


@dataclass
class HostView:
    """One host as the server sees it: the durable record plus what its heartbeats say."""

    record: HostRecord
    revision: int
    hb: dict[str, Any] | None = None
    last_seen: float | None = None  # time.monotonic() of the last heartbeat
    last_seen_wall: float | None = None
    offline: bool = True
    reported: str | None = None  # the status of the last heartbeat
    grace: float = DEFAULT_OFFLINE_AFTER
    offline_since: float | None = None
    hb_checked: bool = False

    def status(self) -> str:
        if self.record.revoked:
            return "revoked"
        if self.offline or self.hb is None:
            return "offline"
        if self.reported in ("paused", "draining"):
            return self.reported
        return "draining" if self.reported == "idle" else "active"


@dataclass
class HostSnapshot:
    """Every host at one moment, sorted by machine ID: (record, last heartbeat, status) per host.

    Rows are built from it page by page (records and heartbeat dicts are replaced, never mutated, so the
    references stay as they were), so all pages of one `fleet plan` describe the same moment.
    """

    id: str
    items: list[tuple[HostRecord, dict[str, Any] | None, str]]
    used: float
    kind: str = "observed"  # or "list": the host order of a paged `fleet list` (described page by page)


@dataclass
class ControlPlane:
    settings: ServerSettings
    bus: Bus | None = None
    server_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    hosts: dict[str, HostView] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    keys: dict[str, KeySpec] = field(default_factory=dict)
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _loading: set[str] = field(default_factory=set)
    _config_loaded_at: float = 0.0
    _revoke_nudged: dict[str, float] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)
    _dirty_event: asyncio.Event = field(default_factory=asyncio.Event)
    _config_revision: int = -1
    _sorted_ids: list[str] = field(default_factory=list)
    _snapshots: dict[str, HostSnapshot] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        s = self.settings
        self.bus = await connect(s.url, creds=s.creds, connect_timeout=s.connect_timeout,
                                 name="fleet-server", persistent=True)
        self.config_store = await open_store(self.bus, subjects.BUCKET_CONFIG)
        self.hosts_store = await open_store(self.bus, subjects.BUCKET_HOSTS)
        self.enroll_store = await open_store(self.bus, subjects.BUCKET_ENROLL)
        await self.refresh_config()
        started = time.monotonic()
        for entry in await self.hosts_store.snapshot():  # one ordered watch, not one get per host
            try:
                record = decode_host_record(entry.value)
            except ProtocolError as exc:
                log.warning("skipping host record %s: %s", entry.key, exc)
                continue
            self.hosts[record.machine_id] = HostView(record, entry.revision, grace=self.grace_for(record))
        log.info("loaded %d host records in %.2fs", len(self.hosts), time.monotonic() - started)
        # The registry is long-lived: move it out of the collector's generations, so that the cyclic GC does not
        # traverse 100k records on every full collection (that stalled API replies for ~0.5 s at 100k hosts).
        gc.collect()
        gc.freeze()
        bus = self.bus
        await bus.subscribe(subjects.HEARTBEAT_WILDCARD, self._on_heartbeat)
        await bus.subscribe(subjects.BYE_WILDCARD, self._on_bye)
        q = subjects.SERVER_QUEUE
        await bus.subscribe(subjects.ENROLL, self._guard(self._on_enroll), queue=q)
        await bus.subscribe(subjects.REGISTER, self._guard(self._on_register), queue=q)
        await bus.subscribe(subjects.API_PING, self._guard(self._on_ping), queue=q)
        await bus.subscribe(subjects.API_HOSTS_LIST, self._guard(self._on_list), queue=q)
        await bus.subscribe(subjects.hosts_list_at(self.server_id), self._guard(self._on_list))
        await bus.subscribe(subjects.API_HOSTS_GET, self._guard(self._on_get), queue=q)
        await bus.subscribe(subjects.API_HOSTS_COMMAND, self._guard(self._on_command), queue=q)
        await bus.subscribe(subjects.API_HOSTS_OBSERVED, self._guard(self._on_observed), queue=q)
        await bus.subscribe(subjects.hosts_observed_at(self.server_id), self._guard(self._on_observed))
        await bus.flush()
        self._spawn(self._monitor())
        self._spawn(self._writer())
        self.ready.set()
        log.info("fleet server %s ready on %s (%d hosts known, offline after %.1fs)",
                 __version__, s.url, len(self.hosts), s.offline_after)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.bus is not None:
            await self.bus.close()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _guard(self, handler: Any) -> Any:
        """Wrap a request handler: every failure becomes an error reply, never a dead subscription."""

        async def wrapped(msg: Any) -> None:
            try:
                reply = await handler(msg)
            except ProtocolError as exc:
                reply = ApiReply(ok=False, error="malformed", message=exc.message)
            except TransientError as exc:
                reply = ApiReply(ok=False, error="unavailable", message=exc.message)
            except FleetError as exc:
                reply = ApiReply(ok=False, error="refused", message=exc.message)
            except Exception as exc:  # a bug must not kill the subscription
                log.exception("handler failed on %s", msg.subject)
                reply = ApiReply(ok=False, error="internal", message=f"internal error: {exc}")
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(reply if isinstance(reply, bytes) else reply.encode())

        return wrapped

    # ------------------------------------------------------------------------------------------ config
    async def refresh_config(self) -> None:
        """Reload keys and pools from the applied config, when it moved since the last load (one round trip if not)."""
        revision = await self.config_store.revision()
        if revision == self._config_revision:
            self._config_loaded_at = time.monotonic()
            return
        keys: dict[str, KeySpec] = {}
        pools: dict[str, PoolSpec] = {}
        for entry in await self.config_store.snapshot():
            if entry.key.startswith("meta."):
                continue
            try:
                rec = decode_record(entry.value)
                if rec.kind == "key":
                    keys[rec.id] = KeySpec.model_validate(rec.spec)
                elif rec.kind == "pool":
                    pools[rec.id] = PoolSpec.model_validate(rec.spec)
            except Exception as exc:  # one bad record must not hide the others
                log.warning("skipping config record %s: %s", entry.key, exc)
        self.keys, self.pools = keys, pools
        self._config_revision = revision
        self._config_loaded_at = time.monotonic()
        for view in self.hosts.values():
            view.grace = self.grace_for(view.record)

    def grace_for(self, record: HostRecord) -> float:
        graces = [self.pools[p.id].disconnect_grace_s for p in record.pools if p.id in self.pools]
        graces = [g for g in graces if g]
        return max(graces) if graces else self.settings.offline_after

    # ------------------------------------------------------------------------------------------ hot path
    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            hb = decode_heartbeat_fast(msg.data)
        except ProtocolError:
            self.stats.rejected += 1
            return
        mid = hb.get("machine_id")
        if not isinstance(mid, str):
            self.stats.rejected += 1
            return
        view = self.hosts.get(mid)
        if view is None or not msg.subject.endswith(mid):
            self.stats.unknown += 1
            if view is None and isinstance(mid, str) and mid not in self._loading:
                self._loading.add(mid)
                self._spawn(self._load_host(mid))
            return
        if view.record.revoked:
            self._nudge_revoked(view)
            return
        now = time.monotonic()
        view.hb = hb
        view.hb_checked = False
        view.last_seen = now
        view.last_seen_wall = time.time()
        self.stats.heartbeats += 1
        status = hb.get("status")
        if view.offline:
            view.offline = False
            view.offline_since = None
        if status != view.reported:
            view.reported = status
            self._mark_dirty(view)

    async def _on_bye(self, msg: Any) -> None:
        mid = subjects.machine_id_of(msg.subject)
        view = self.hosts.get(mid)
        if view is None or view.offline:
            return
        view.offline = True
        view.offline_since = time.monotonic()
        self.stats.offline_transitions += 1
        log.info("host %s (%s) said goodbye: offline", mid, view.record.hostname)

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval)
            now = time.monotonic()
            for view in self.hosts.values():
                if view.offline or view.last_seen is None:
                    continue
                if now - view.last_seen > view.grace:
                    view.offline = True
                    view.offline_since = now
                    self.stats.offline_transitions += 1
                    log.info("host %s (%s) offline: no heartbeat for %.1fs", view.record.machine_id,
                             view.record.hostname, now - view.last_seen)
            if now - self._config_loaded_at > CONFIG_REFRESH_S:
                self._config_loaded_at = now
                self._spawn(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_config()
        except FleetError as exc:
            log.warning("config refresh failed: %s", exc)

    def _mark_dirty(self, view: HostView) -> None:
        """Queue the host's reported status for the registry writer (coalesced; never per heartbeat)."""
        if (view.record.last_status or "active") != _admin_status(view.reported):
            self._dirty.add(view.record.machine_id)
            self._dirty_event.set()

    async def _writer(self) -> None:
        """Persist status transitions in the background, a few at a time, so a storm cannot flood the loop."""
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            while self._dirty:
                batch = [self._dirty.pop() for _ in range(min(32, len(self._dirty)))]
                await asyncio.gather(*[self._persist_status(self.hosts[mid]) for mid in batch if mid in self.hosts])

    async def _persist_status(self, view: HostView) -> None:
        """Write the status the agent reports (active, paused, draining) into its record, by compare-and-set.

        Liveness (offline) is not written: it is computed from heartbeats in memory, by every replica.
        """
        for _ in range(5):
            status = _admin_status(view.reported)
            if (view.record.last_status or "active") == status or view.record.revoked:
                return
            record = view.record.model_copy(update={"last_status": status})
            try:
                view.revision = await self.hosts_store.update(record.machine_id, record.encode(), view.revision)
                view.record = record
                return
            except Conflict:
                await self._reload(view)
            except FleetError as exc:
                log.debug("could not persist status of %s: %s", view.record.machine_id, exc)
                return

    async def _reload(self, view: HostView) -> None:
        entry = await self.hosts_store.get(view.record.machine_id)
        if entry is not None:
            view.record = decode(HostRecord, entry.value)
            view.revision = entry.revision

    async def _load_host(self, mid: str) -> None:
        try:
            entry = await self.hosts_store.get(mid)
            if entry is not None and mid not in self.hosts:
                record = decode(HostRecord, entry.value)
                self.hosts[mid] = HostView(record, entry.revision, grace=self.grace_for(record))
        except FleetError as exc:
            log.debug("could not load host %s: %s", mid, exc)
        finally:
            await asyncio.sleep(1.0)  # do not hammer the store for an unknown ID
            self._loading.discard(mid)

    def _nudge_revoked(self, view: HostView) -> None:
        mid = view.record.machine_id
        now = time.monotonic()
        if now - self._revoke_nudged.get(mid, 0.0) > 5.0:
            self._revoke_nudged[mid] = now
            self._spawn(self._send_control(mid, "revoke", timeout=1.0))

    # ------------------------------------------------------------------------------------------ enrollment
    async def _on_enroll(self, msg: Any) -> JoinReply:
        try:
            req = decode(EnrollRequest, msg.data)
        except ProtocolError as exc:
            return JoinReply(ok=False, reason="unsupported_version" if "version" in exc.message else "malformed",
                             message=exc.message)
        await self.refresh_config()
        digest = secret_hash(req.key)
        found = [(kid, k) for kid, k in self.keys.items() if hmac.compare_digest(k.secret_sha256, digest)]
        if not found:
            return JoinReply(ok=False, reason="unknown_key", message="unknown enrollment key")
        key_id, key = found[0]
        decision = check_enrollment(key_id, key, self.pools, req, now_utc())
        if not decision.ok:
            log.info("enrollment of %s refused: %s", req.hostname, decision.message)
            return JoinReply(ok=False, reason=decision.reason, message=decision.message)
        used = await self.enroll_store.increment(f"uses.{key_id}", limit=key.max_uses)
        if used is None:
            log.info("enrollment of %s refused: key %s exhausted", req.hostname, key_id)
            return JoinReply(ok=False, reason="exhausted",
                             message=f"enrollment key {key_id} is exhausted (max_uses {key.max_uses})")
        machine_id = str(uuid.uuid4())
        credential = secrets.token_urlsafe(32)
        assert decision.tenant is not None and decision.capacity is not None
        record = HostRecord(
            machine_id=machine_id, tenant=decision.tenant, key_id=key_id, hostname=req.hostname,
            pools=decision.pools, labels=decision.labels, models=decision.models, capacity=decision.capacity,
            credential_sha256=secret_hash(credential), enrolled_at=format_time(now_utc()),
        )
        revision = await self.hosts_store.create(machine_id, record.encode())
        self.hosts[machine_id] = HostView(record, revision, grace=self.grace_for(record))
        log.info("enrolled %s as %s (tenant %s, key %s, use %d)", req.hostname, machine_id, decision.tenant,
                 key_id, used)
        return self._join_reply(record, credential=credential)

    async def _on_register(self, msg: Any) -> JoinReply:
        try:
            req = decode(RegisterRequest, msg.data)
        except ProtocolError as exc:
            return JoinReply(ok=False, reason="malformed", message=exc.message)
        if not _ID_PREFIX.match(req.machine_id):
            return JoinReply(ok=False, reason="unknown_host", message=f"malformed machine ID {req.machine_id!r}")
        entry = await self.hosts_store.get(req.machine_id)
        if entry is None:
            return JoinReply(ok=False, reason="unknown_host", message=f"unknown host {req.machine_id}")
        record = decode(HostRecord, entry.value)
        if not hmac.compare_digest(record.credential_sha256, secret_hash(req.credential)):
            return JoinReply(ok=False, reason="bad_credential", message=f"wrong credential for host {req.machine_id}")
        if record.revoked:
            return JoinReply(ok=False, reason="revoked", message=f"host {req.machine_id} was revoked")
        revision = entry.revision
        if record.hostname != req.hostname:
            record = record.model_copy(update={"hostname": req.hostname})
            with contextlib.suppress(Conflict):
                revision = await self.hosts_store.update(record.machine_id, record.encode(), revision)
        view = self.hosts.get(record.machine_id)
        if view is None:
            self.hosts[record.machine_id] = HostView(record, revision, grace=self.grace_for(record))
        else:
            view.record, view.revision = record, revision
        log.info("registered %s (%s)", record.machine_id, record.hostname)
        return self._join_reply(record)

    def _join_reply(self, record: HostRecord, credential: str | None = None) -> JoinReply:
        pools = [
            p.model_copy(update={"mode": self.pools[p.id].mode}) if p.id in self.pools else p for p in record.pools
        ]
        return JoinReply(
            ok=True, machine_id=record.machine_id, credential=credential, tenant=record.tenant,
            key_id=record.key_id, pools=pools, labels=record.labels, models=record.models,
            capacity=record.capacity, heartbeat_interval_s=self.settings.heartbeat_interval,
        )

    # ------------------------------------------------------------------------------------------ API
    async def _on_ping(self, msg: Any) -> ApiReply:
        # Subscriptions open only once the registry is loaded: `hosts` is the number of host records loaded.
        return ApiReply(ok=True, data={"version": __version__, "server": self.server_id, "hosts": len(self.hosts),
                                       "heartbeats": self.stats.heartbeats})

    async def _on_observed(self, msg: Any) -> ApiReply | bytes:
        """A page of an observed-hosts snapshot: a new snapshot when the request names none."""
        req = decode(HostsPageRequest, msg.data)
        now = time.monotonic()
        self._expire_snapshots(now)
        if req.snapshot is None:
            snap = self.take_snapshot(now)
        elif (found := self._snapshots.get(req.snapshot)) is None or found.kind != "observed":
            return self._expired(req.snapshot)
        else:
            snap, snap.used = found, now
        return self.page(snap, req.offset, req.limit)

    def _expire_snapshots(self, now: float) -> None:
        for sid in [sid for sid, snap in self._snapshots.items() if now - snap.used > SNAPSHOT_TTL_S]:
            del self._snapshots[sid]

    def _keep(self, snap: HostSnapshot) -> HostSnapshot:
        while len(self._snapshots) >= MAX_SNAPSHOTS:
            del self._snapshots[min(self._snapshots, key=lambda sid: self._snapshots[sid].used)]
        self._snapshots[snap.id] = snap
        return snap

    @staticmethod
    def _expired(snapshot: str) -> ApiReply:
        return ApiReply(ok=False, error="expired", message=f"host snapshot {snapshot} is unknown or expired; take a new one")

    def _page_budget(self) -> int:
        max_payload = getattr(getattr(self.bus, "nc", None), "max_payload", None) or DEFAULT_MAX_PAYLOAD
        return min(self.settings.page_bytes or max_payload, max_payload - 512)

    def take_snapshot(self, now: float) -> HostSnapshot:
        if len(self._sorted_ids) != len(self.hosts):  # hosts are only ever added: same size, same set
            self._sorted_ids = sorted(self.hosts)
        hosts = self.hosts
        items = [(v.record, v.hb, v.status()) for v in map(hosts.__getitem__, self._sorted_ids)]
        return self._keep(HostSnapshot(uuid.uuid4().hex[:12], items, now))

    def page(self, snap: HostSnapshot, offset: int, limit: int) -> bytes:
        """The encoded ApiReply of rows [offset, offset+limit), cut short to stay under NATS max_payload."""
        rows = [observed_row(*item) for item in snap.items[offset:offset + limit]]
        return self._encode_page(snap, offset, "rows", rows, columns=OBSERVED_COLUMNS)

    def _encode_page(self, snap: HostSnapshot, offset: int, name: str, items: list[Any], **extra: Any) -> bytes:
        """An ApiReply page of `snap` as JSON bytes, with as many of `items` as fit in the page budget."""
        budget = self._page_budget()
        while True:
            data = {"snapshot": snap.id, "server": self.server_id, "total": len(snap.items), "offset": offset,
                    **extra, name: items}
            payload = json.dumps({"v": PROTOCOL_VERSION, "ok": True, "data": data}, separators=(",", ":")).encode()
            if len(payload) <= budget or len(items) <= 1:
                return payload
            items = items[:max(1, int(len(items) * budget / len(payload) * 0.95))]

    async def _on_list(self, msg: Any) -> ApiReply | bytes:
        """`fleet list`: with `limit` in the request, one page of a snapshot of the host order (enrollment time,
        then ID; each host described as it is when its page is asked for); without, every host at once (the v1
        form of old clients, refused when it would not fit in one NATS message)."""
        req = decode(HostsPageRequest, msg.data)
        now = time.monotonic()
        self._expire_snapshots(now)
        if "limit" not in req.model_fields_set:
            views = sorted(self.hosts.values(), key=lambda v: (v.record.enrolled_at, v.record.machine_id))
            payload = ApiReply(ok=True, data=[self.describe(v) for v in views]).encode()
            if len(payload) > self._page_budget():
                return ApiReply(ok=False, error="too_large",
                                message=f"{len(views)} hosts do not fit in one reply; upgrade the fleet CLI (it pages)")
            return payload
        if req.snapshot is None:
            views = sorted(self.hosts.values(), key=lambda v: (v.record.enrolled_at, v.record.machine_id))
            snap = self._keep(HostSnapshot(uuid.uuid4().hex[:12], [(v.record, None, "") for v in views], now, "list"))
        elif (found := self._snapshots.get(req.snapshot)) is None or found.kind != "list":
            return self._expired(req.snapshot)
        else:
            snap, snap.used = found, now
        hosts = [self.describe(self.hosts[rec.machine_id]) for rec, _, _ in snap.items[req.offset:req.offset + req.limit]]
        return self._encode_page(snap, req.offset, "hosts", hosts)

    async def _on_get(self, msg: Any) -> ApiReply:
        query = decode(HostQuery, msg.data)
        view, error = self.resolve(query.id)
        if view is None:
            return error  # type: ignore[return-value]
        return ApiReply(ok=True, data=self.describe(view))

    async def _on_command(self, msg: Any) -> ApiReply:
        cmd = decode(HostCommand, msg.data)
        view, error = self.resolve(cmd.id)
        if view is None:
            return error  # type: ignore[return-value]
        mid = view.record.machine_id
        if view.record.revoked:
            return ApiReply(ok=False, error="revoked", message=f"host {mid} is revoked")
        if cmd.action == "revoke":
            for _ in range(5):
                record = view.record.model_copy(update={"revoked": True, "revoked_at": format_time(now_utc()),
                                                        "last_status": "revoked"})
                try:
                    view.revision = await self.hosts_store.update(mid, record.encode(), view.revision)
                    view.record = record
                    break
                except Conflict:
                    await self._reload(view)
            else:
                return ApiReply(ok=False, error="conflict", message=f"host {mid} changed concurrently; retry")
            log.info("host %s revoked", mid)
            await self._send_control(mid, "revoke", timeout=1.0)
            return ApiReply(ok=True, data=self.describe(view))
        if view.offline or view.hb is None:
            return ApiReply(ok=False, error="offline",
                            message=f"host {mid} is offline; {cmd.action} needs a live agent")
        reply = await self._send_control(mid, cmd.action, timeout=3.0)
        if reply is None or not reply.ok:
            why = reply.message if reply is not None else "the agent did not answer"
            return ApiReply(ok=False, error="agent", message=f"host {mid}: {cmd.action} failed: {why}")
        if reply.status and view.hb is not None:
            view.hb = {**view.hb, "status": reply.status}
            view.reported = reply.status
            self._mark_dirty(view)
        return ApiReply(ok=True, data=self.describe(view))

    async def _send_control(self, mid: str, action: str, *, timeout: float) -> ControlReply | None:
        assert self.bus is not None
        try:
            data = await self.bus.request(subjects.host_control(mid), ControlCommand(action=action).encode(),  # type: ignore[arg-type]
                                          timeout=timeout, what=f"host {mid}")
            return decode(ControlReply, data)
        except FleetError as exc:
            log.info("control %s to %s: %s", action, mid, exc)
            return None

    def resolve(self, ident: str) -> tuple[HostView | None, ApiReply | None]:
        """A host by machine ID or unique prefix; else an error reply (malformed, not_found, ambiguous)."""
        ident = ident.strip().lower()
        if not _ID_PREFIX.match(ident):
            return None, ApiReply(ok=False, error="malformed",
                                  message=f"malformed machine ID {ident!r} (a UUID or a prefix of one)")
        if ident in self.hosts:
            return self.hosts[ident], None
        matches = [v for mid, v in self.hosts.items() if mid.startswith(ident)]
        if not matches:
            return None, ApiReply(ok=False, error="not_found", message=f"no host with ID {ident}")
        if len(matches) > 1:
            ids = ", ".join(sorted(v.record.machine_id for v in matches)[:5])
            return None, ApiReply(ok=False, error="ambiguous",
                                  message=f"ID prefix {ident} matches {len(matches)} hosts: {ids}")
        return matches[0], None

    def describe(self, view: HostView) -> dict[str, Any]:
        """The host as the CLI shows it (`fleet list --json` items and `fleet show --json`)."""
        rec = view.record
        hb = view.hb or {}
        if hb and not view.hb_checked:
            # The hot path only parses; a heartbeat is validated when it is shown, so that one malformed
            # host cannot break `fleet list` for everyone.
            try:
                Heartbeat.model_validate(hb)
                view.hb_checked = True
            except ValidationError as exc:
                log.warning("malformed heartbeat from %s: %s", rec.machine_id, exc.errors()[0].get("msg"))
                hb = {}
        now_wall = time.time()
        pools = [dict(p) for p in hb.get("pools") or []] or [p.model_dump() for p in rec.pools]
        for p in pools:
            if p.get("id") in self.pools:
                p["mode"] = self.pools[p["id"]].mode
        cap = hb.get("capacity") or rec.capacity.model_dump()
        started = hb.get("started_at")
        return {
            "id": rec.machine_id,
            "hostname": hb.get("hostname") or rec.hostname,
            "status": view.status(),
            "drained": hb.get("status") == "idle" and view.status() == "draining",
            "tenant": rec.tenant,
            "pools": [p["id"] for p in pools],
            "pool_modes": {p["id"]: p.get("mode", "persistent") for p in pools},
            "sessions": {"running": hb.get("running", 0),
                         "max": hb.get("max_sessions", cap.get("max_concurrent_sessions", 0))},
            "active_sessions": hb.get("sessions", []),
            "last_seen": _iso(view.last_seen_wall),
            "last_seen_s_ago": round(now_wall - view.last_seen_wall, 3) if view.last_seen_wall else None,
            "platform_version": hb.get("version"),
            "started_at": _iso(started),
            "uptime_s": round(now_wall - started, 1) if started and not view.offline else None,
            "capacity": {"maxConcurrentSessions": cap.get("max_concurrent_sessions"),
                         "poolMaxDiskGb": cap.get("pool_max_disk_gb")},
            "labels": hb.get("labels") or rec.labels,
            "models": hb.get("models") or rec.models,
            "credential_socket": hb.get("credential_socket"),
            "key_id": rec.key_id,
            "enrolled_at": rec.enrolled_at,
            "revoked_at": rec.revoked_at,
        }


def decode_host_record(value: bytes) -> HostRecord:
    """A stored HostRecord, parsed by pydantic in one step (the registry load at start does 100k of these)."""
    try:
        record = HostRecord.model_validate_json(value)
    except ValidationError:
        return decode(HostRecord, value)  # raises the ProtocolError that says what is wrong
    if record.v != PROTOCOL_VERSION:
        return decode(HostRecord, value)  # raises UnsupportedVersion
    return record


def _sane_heartbeat(hb: dict[str, Any]) -> bool:
    """The heartbeat fields an observed row uses have the right types (the hot path only parsed it)."""
    try:
        lists = [hb.get(k) or [] for k in ("pools", "labels", "models", "sessions")]
        return (isinstance(hb.get("hostname", ""), str) and type(hb.get("running", 0)) is int
                and type(hb.get("max_sessions", 0)) is int and isinstance(hb.get("capacity", {}), dict)
                and all(isinstance(v, list) for v in lists)
                and all(isinstance(p["id"], str) for p in lists[0])
                and all(isinstance(x, str) for x in lists[1] + lists[2])
                and all(isinstance(s["id"], str) and isinstance(s["phase"], str) for s in lists[3]))
    except (TypeError, KeyError, AttributeError):
        return False


def observed_row(record: HostRecord, hb: dict[str, Any] | None, status: str) -> list[Any]:
    """One host as the reconciler needs it, in the order of OBSERVED_COLUMNS (the same values `describe` shows)."""
    if hb and _sane_heartbeat(hb):
        pools = [p["id"] for p in hb.get("pools") or ()] or [p.id for p in record.pools]
        cap = hb.get("capacity") or {}
        max_sessions = hb.get("max_sessions", cap.get("max_concurrent_sessions",
                                                     record.capacity.max_concurrent_sessions))
        return [record.machine_id, hb.get("hostname") or record.hostname, record.tenant, record.key_id, pools,
                hb.get("labels") or record.labels, hb.get("models") or record.models, status, hb.get("running", 0),
                max_sessions,
                [[s["id"], s["phase"]] for s in hb.get("sessions") or ()]]
    return [record.machine_id, record.hostname, record.tenant, record.key_id, [p.id for p in record.pools],
            record.labels, record.models, status, 0, record.capacity.max_concurrent_sessions, []]


def _admin_status(reported: str | None) -> str:
    """The operator-relevant part of a reported status: active, paused or draining (idle is drained)."""
    if reported in ("paused", "draining"):
        return reported
    return "draining" if reported == "idle" else "active"


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
