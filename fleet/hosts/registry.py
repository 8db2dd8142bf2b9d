"""The host registry: every registered host in memory, fed level-based from the store, with liveness from heartbeats.

Records come from bucket fleet-v1-hosts through one continuous ordered watch (fleet.bus.kv.Informer calls
`apply_record` for every current record, then for every change, and resyncs after a NATS reconnect), so every
`fleet server` replica converges on every enrollment, revocation, status change and removal within milliseconds,
whichever replica wrote it. Liveness comes from heartbeats (`heartbeat`, the hot path: bounded, no I/O, no task)
and goodbyes; `sweep` marks hosts whose heartbeats stopped for their grace period offline. What must survive a
restart (the status the agent reports, when it was last seen) is queued in `dirty` for the liveness writer
(fleet.hosts.liveness), never written per heartbeat.

Untrusted input: the machine ID is the subject's token, matched exactly; a heartbeat carries only dynamic state
(fleet.bus.messages.Heartbeat: status, running sessions, started_at, version, every field bounded) and is
refused unparsed when oversize; a heartbeat from an unknown ID costs a dict lookup and a counter (the bounded
`unknown` cache remembers recent ones for the log), never a lookup in the store. What a host may serve (tenant,
pools, labels, models, capacity) comes from its record and the applied pools only.

Built by fleet.service.server; read by the API handlers, the enrollment authority, the declared-status controller
and (later) the dispatcher. Synchronous and single-threaded (one event loop): tests drive it directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from fleet.bus import subjects
from fleet.bus.kv import Entry as KvEntry
from fleet.bus.messages import MAX_HEARTBEAT_BYTES, PROTOCOL_VERSION, Heartbeat, HostRecord
from fleet.errors import InvalidRequest, NotFound
from fleet.hosts.config import AppliedConfig
from fleet.hosts.model import LIVE_STATUSES, Host, Session, envelope, host_slots, sorted_unique, status_of
from fleet.hosts.ratelimit import TokenBucket

log = logging.getLogger(__name__)

DEFAULT_OFFLINE_AFTER = 5.0
UNKNOWN_CACHE = 4096  # most unknown machine IDs remembered (for the log), oldest forgotten first
_ID_PREFIX_CHARS = frozenset("0123456789abcdef-")


@dataclass(frozen=True, slots=True)
class Beat:
    """One accepted heartbeat, immutable (a snapshot keeps a reference; the next heartbeat replaces it)."""

    status: str
    running: int
    sessions: tuple[Session, ...]
    started_at: float
    version: str
    seq: int
    at: float  # time.monotonic() when it arrived
    at_wall: float  # time.time() when it arrived


#: heartbeats a second one host may send, and how many at once (an agent sends one every heartbeat interval, 2 s by
#: default, and one at once when its status or its sessions change); the rest are dropped before they are parsed
HEARTBEAT_RATE, HEARTBEAT_BURST = 20.0, 40.0


class HostEntry:
    """The registry's slot for one host: its stored record (and KV revision), its liveness, its heartbeat budget."""

    __slots__ = ("record", "revision", "beat", "live", "awaited", "budget", "deferred")

    def __init__(self, record: HostRecord, revision: int) -> None:
        self.record = record
        self.revision = revision
        self.beat: Beat | None = None
        self.live = False
        #: not heard since this replica listens, and not for a whole grace yet: it may well be alive (this replica
        #: just started), so its sessions are kept; `sweep` ends the wait (then it is offline for good)
        self.awaited = True
        self.budget: TokenBucket | None = None  # made at its first heartbeat
        self.deferred: bytes | None = None  # its latest heartbeat beyond the budget, not yet taken


@dataclass(frozen=True, slots=True)
class _PoolSet:
    """What a combination of pools means for its hosts, derived from the applied config (cached per config version)."""

    slots: int | None
    labels: frozenset[str]
    models: tuple[str, ...]
    modes: tuple[str, ...]
    disk: float | None
    grace: float | None


class Registry:
    def __init__(self, config: AppliedConfig | None = None, *, offline_after: float = DEFAULT_OFFLINE_AFTER) -> None:
        self.config = config or AppliedConfig()
        self.offline_after = offline_after
        self.entries: dict[str, HostEntry] = {}
        #: machine ID of the host whose record names each NATS identity (nkey): enrollment refuses one in use
        self.by_nkey: dict[str, str] = {}
        self.metrics: Counter[str] = Counter()
        self.unknown: OrderedDict[str, int] = OrderedDict()
        #: machine IDs whose reported status or last_seen should be persisted (drained by the liveness writer)
        self.dirty: set[str] = set()
        #: revoked hosts that still heartbeat (drained by the liveness writer, which tells them again)
        self.revoked_seen: set[str] = set()
        #: hosts with a heartbeat kept back by their budget (taken by `sweep`)
        self._deferred: set[str] = set()
        #: called with a machine ID when a host's record, liveness or reported status changes (the dispatcher listens)
        self.watchers: list[Callable[[str], None]] = []
        self._sorted: list[str] | None = None
        #: monotonic time since which this replica hears heartbeats without a break (`listen`); None while it
        #: cannot (not subscribed yet, or cut off from NATS): then nobody's silence counts (`sweep` waits)
        self.listening_since: float | None = float("-inf")
        self._poolsets: dict[tuple[str, ...], _PoolSet] = {}
        self._poolsets_version = -1

    def _changed(self, machine_id: str) -> None:
        for watcher in self.watchers:
            watcher(machine_id)

    # ------------------------------------------------------------------------------------------ records
    def apply_record(self, key: str, entry: KvEntry | None) -> None:
        """A record in fleet-v1-hosts changed (None: deleted). Called by the informer, in stream order."""
        if entry is None:
            gone = self.entries.pop(key, None)
            if gone is not None:
                self._forget_nkey(gone.record, key)
                self._sorted = None
                self.dirty.discard(key)
                self._changed(key)
            return
        try:
            record = HostRecord.model_validate_json(entry.value)
            if record.v != PROTOCOL_VERSION or record.machine_id != key:
                raise ValueError(f"record v{record.v} of {record.machine_id} stored under {key}")
        except (ValidationError, ValueError) as exc:
            self.metrics["host_record_skipped"] += 1
            log.warning("skipping host record %s: %s", key, str(exc).splitlines()[0])
            return
        current = self.entries.get(key)
        if current is None:
            self.entries[key] = HostEntry(record, entry.revision)
            self._sorted = None
            self.unknown.pop(key, None)
        else:
            if current.record.nkey != record.nkey:
                self._forget_nkey(current.record, key)
            current.record, current.revision = record, entry.revision
        if record.nkey:
            self.by_nkey[record.nkey] = key
        self._changed(key)

    def _forget_nkey(self, record: HostRecord, key: str) -> None:
        if record.nkey and self.by_nkey.get(record.nkey) == key:
            del self.by_nkey[record.nkey]

    # ------------------------------------------------------------------------------------------ liveness
    def listen(self, now: float | None = None) -> None:
        """This replica hears heartbeats from `now` on (its subscription is up: at start, after a NATS reconnect).
        Silence counts only from then: a live host's grace restarts, and a host not heard yet is awaited for its
        whole grace before it is offline for good (its sessions are kept meanwhile: fleet.dispatch.dispatcher)."""
        self.listening_since = time.monotonic() if now is None else now

    def deaf(self) -> None:
        """This replica can hear nobody (its NATS connection is down): no host goes offline meanwhile."""
        self.listening_since = None

    def heartbeat(self, subject: str, data: bytes, now: float | None = None, now_wall: float | None = None) -> bool:
        """Take one heartbeat; True if it was accepted. Bounded work whatever the payload."""
        if len(data) > MAX_HEARTBEAT_BYTES:
            self.metrics["heartbeat_too_large"] += 1
            return False
        mid = subjects.machine_id_of(subject, subjects.HEARTBEAT_PREFIX)
        entry = self.entries.get(mid) if mid is not None else None
        if entry is None:
            self._unknown(mid)
            return False
        budget = entry.budget
        if budget is None:
            budget = entry.budget = TokenBucket(HEARTBEAT_RATE, HEARTBEAT_BURST, now)
        if not budget.take(now):
            # Beyond its budget: kept unparsed as the host's latest word (one per host), taken by `sweep` once the
            # budget allows; a flood costs a lookup each, and a busy agent's last heartbeat of a burst still counts.
            self.metrics["heartbeat_rate_limited"] += 1
            entry.deferred = data
            self._deferred.add(entry.record.machine_id)
            return False
        entry.deferred = None
        return self._take(entry, data, now, now_wall)

    def _take(self, entry: HostEntry, data: bytes, now: float | None, now_wall: float | None) -> bool:
        if entry.record.revoked:
            self.metrics["heartbeat_revoked"] += 1
            self.revoked_seen.add(entry.record.machine_id)
            return False
        try:
            hb = Heartbeat.model_validate_json(data)
        except ValidationError:
            self.metrics["heartbeat_malformed"] += 1
            return False
        if hb.v != PROTOCOL_VERSION:
            self.metrics["heartbeat_unsupported_version"] += 1
            return False
        before = entry.beat.status if entry.live and entry.beat is not None else None
        entry.beat = Beat(hb.status, hb.running, tuple(Session(s.id, s.phase, fence=s.fence) for s in hb.sessions),
                          hb.started_at, hb.version, hb.seq, time.monotonic() if now is None else now,
                          time.time() if now_wall is None else now_wall)
        entry.live = True
        entry.awaited = False
        if before != hb.status:  # came alive, or changed status: the dispatcher re-reads it (never per heartbeat)
            self._changed(entry.record.machine_id)
        self.metrics["heartbeats"] += 1
        if hb.status != entry.record.admin_status:
            self.dirty.add(entry.record.machine_id)
        return True

    def reported(self, entry: HostEntry, status: str | None) -> None:
        """The agent answered a control command with its new status (on its own control subject)."""
        if entry.beat is not None and status in LIVE_STATUSES and status != entry.beat.status:
            entry.beat = dataclasses.replace(entry.beat, status=status)
            if status != entry.record.admin_status:
                self.dirty.add(entry.record.machine_id)
            self._changed(entry.record.machine_id)

    def bye(self, subject: str) -> HostEntry | None:
        """A host said goodbye (clean shutdown): offline now. The payload says nothing we need."""
        mid = subjects.machine_id_of(subject, subjects.BYE_PREFIX)
        entry = self.entries.get(mid) if mid is not None else None
        if entry is None or not entry.live:
            return None
        entry.live = entry.awaited = False
        self.metrics["offline_transitions"] += 1
        self.dirty.add(entry.record.machine_id)
        log.info("host %s (%s) said goodbye: offline", entry.record.machine_id, entry.record.hostname)
        self._changed(entry.record.machine_id)
        return entry

    def sweep(self, now: float | None = None) -> list[HostEntry]:
        """Mark hosts silent for their grace period offline (counted from their last heartbeat, or from when this
        replica began to listen if later; never while it cannot hear: `deaf`), and end the wait for hosts not heard
        for a whole grace since it listens; returns the hosts that went offline."""
        now = time.monotonic() if now is None else now
        if self._deferred:
            self._take_deferred(now)
        since = self.listening_since
        if since is None:
            return []
        gone, settled = [], []
        for entry in self.entries.values():
            if entry.live:
                assert entry.beat is not None
                silent = now - max(entry.beat.at, since)
                if silent > self.grace(entry.record):
                    entry.live = False
                    gone.append(entry)
                    self.dirty.add(entry.record.machine_id)
                    log.info("host %s (%s) offline: no heartbeat for %.1fs", entry.record.machine_id,
                             entry.record.hostname, silent)
            elif entry.awaited and entry.record.revoked:
                entry.awaited = False  # nothing to wait for: revoked is gone already
            elif entry.awaited and now - since > self.grace(entry.record):
                entry.awaited = False
                settled.append(entry)
                if since > float("-inf"):
                    log.info("host %s (%s) not heard within its grace (%.1fs since this server listens): its "
                             "sessions, if any, are lost",
                             entry.record.machine_id, entry.record.hostname, now - since)
        self.metrics["offline_transitions"] += len(gone)
        for entry in (*gone, *settled):
            self._changed(entry.record.machine_id)
        return gone

    def awaited(self, machine_id: str) -> bool:
        """Whether host `machine_id` is offline only because this replica has not listened long enough to know
        (it started, or reconnected, less than the host's grace ago): its sessions are not lost yet."""
        entry = self.entries.get(machine_id)
        return entry is not None and entry.awaited and not entry.live and not entry.record.revoked

    def _take_deferred(self, now: float) -> None:
        """The heartbeats kept back by the budget, as far as it now allows (the latest of each host)."""
        for mid in list(self._deferred):
            entry = self.entries.get(mid)
            if entry is None or entry.deferred is None:
                self._deferred.discard(mid)
            elif entry.budget is None or entry.budget.take(now):
                data, entry.deferred = entry.deferred, None
                self._deferred.discard(mid)
                self._take(entry, data, now, None)

    def _unknown(self, mid: str | None) -> None:
        self.metrics["heartbeat_unknown"] += 1
        if mid is None:
            return
        if mid in self.unknown:
            self.unknown[mid] += 1
            self.unknown.move_to_end(mid)
            return
        self.unknown[mid] = 1
        if len(self.unknown) > UNKNOWN_CACHE:
            self.unknown.popitem(last=False)
        log.debug("heartbeat from unknown host %s ignored", mid)

    # ------------------------------------------------------------------------------------------ derived views
    def _poolset(self, pools: tuple[str, ...]) -> _PoolSet:
        if self._poolsets_version != self.config.version:
            self._poolsets, self._poolsets_version = {}, self.config.version
        found = self._poolsets.get(pools)
        if found is None:
            applied = [self.config.pools.get(p) for p in pools]
            specs = [sp for sp in applied if sp is not None]
            disks = [d for sp in specs if (d := sp.capacity.pool_max_disk_gb) is not None]
            graces = [g for sp in specs if (g := sp.disconnect_grace_s)]
            found = _PoolSet(
                slots=host_slots(sp.max_concurrent_sessions for sp in specs),
                labels=frozenset(lbl for sp in specs for lbl in sp.labels),
                models=sorted_unique(*(sp.models for sp in specs)),
                modes=tuple(sp.mode if sp is not None else "persistent" for sp in applied),
                disk=min(disks) if disks else None,
                grace=max(graces) if graces else None,
            )
            self._poolsets[pools] = found
        return found

    def grace(self, record: HostRecord) -> float:
        """Seconds without a heartbeat before the host is offline: the largest disconnect_grace of its pools."""
        return self.grace_for_pools(tuple(record.pools))

    def grace_for_pools(self, pools: tuple[str, ...]) -> float:
        return self._poolset(pools).grace or self.offline_after

    def host(self, entry: HostEntry) -> Host:
        return self.build(entry.record, entry.beat, entry.live)

    def build(self, record: HostRecord, beat: Beat | None, live: bool) -> Host:
        """The Host of a record and its last heartbeat, resolved against the applied pools (see fleet.hosts.model)."""
        pools = tuple(record.pools)
        ps = self._poolset(pools)
        on = live and beat is not None and not record.revoked
        disk = record.max_disk_gb
        return Host(
            machine_id=record.machine_id,
            tenant=record.tenant,
            hostname=record.hostname,
            key_id=record.key_id,
            pools=pools,
            labels=tuple(sorted(ps.labels.union(record.labels))),
            models=tuple(record.models) or ps.models,
            status=status_of(revoked=record.revoked, live=on, reported=beat.status if beat else None),
            running=beat.running if on and beat else 0,
            max_sessions=envelope(record.max_sessions, ps.slots),
            sessions=beat.sessions if on and beat else (),
            pool_modes=ps.modes,
            max_disk_gb=disk if ps.disk is None else (ps.disk if disk is None else min(disk, ps.disk)),
            last_seen=beat.at_wall if beat is not None else record.last_seen,
            started_at=beat.started_at if on and beat else None,
            version=(beat.version if beat is not None else None) or record.version,
            enrolled_at=record.enrolled_at,
            revoked_at=record.revoked_at,
            credential_socket=record.credential_socket,
            isolation=record.isolation.describe() if record.isolation is not None else None,
            declared=self.config.declared.get(record.machine_id),
        )

    def hosts(self) -> list[Host]:
        return [self.host(self.entries[mid]) for mid in self.sorted_ids()]

    def sorted_ids(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.entries)
        return self._sorted

    def capture(self) -> list[tuple[HostRecord, Beat | None, bool]]:
        """Every host as of now, sorted by machine ID, as immutable parts (records and beats are replaced, never
        mutated): the pages of one snapshot build their rows from this, and all describe the same moment."""
        entries = self.entries
        return [(e.record, e.beat, e.live) for e in map(entries.__getitem__, self.sorted_ids())]

    def in_pool(self, pool: str) -> Iterable[HostEntry]:
        return (e for e in self.entries.values() if pool in e.record.pools)

    # ------------------------------------------------------------------------------------------ lookup
    def resolve(self, ident: str) -> HostEntry:
        """A host by machine ID or unique prefix; InvalidRequest (malformed, ambiguous) or NotFound otherwise."""
        ident = ident.strip().lower()
        if not ident or len(ident) > 36 or not set(ident) <= _ID_PREFIX_CHARS:
            raise InvalidRequest(f"malformed machine ID {ident[:40]!r} (a UUID or a prefix of one)",
                                 hint="`fleet list` shows the machine IDs")
        found = self.entries.get(ident)
        if found is not None:
            return found
        matches = [e for mid, e in self.entries.items() if mid.startswith(ident)]
        if not matches:
            raise NotFound(f"no host with ID {ident}", hint="`fleet list` shows the machine IDs")
        if len(matches) > 1:
            ids = ", ".join(sorted(e.record.machine_id for e in matches)[:5])
            raise InvalidRequest(f"ID prefix {ident} matches {len(matches)} hosts: {ids}",
                                 hint="pass a full machine ID or a longer prefix")
        return matches[0]

    def counts(self) -> Mapping[str, Any]:
        """How many hosts, and how many of them are live (cheap: no Host is built)."""
        live = sum(1 for e in self.entries.values() if e.live and not e.record.revoked)
        return {"hosts": len(self.entries), "live": live}
