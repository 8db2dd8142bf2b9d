"""The dispatcher: sessions in, hosts out; leases with fencing tokens; nothing lost when a host or a replica dies.

Runs in `fleet server`, active in one replica at a time (the leader, fleet.dispatch.leader); wired by
fleet.service.server. State lives in KV bucket fleet-v1-sessions, one key per session (no shared counter: slot
accounting is in the leader's memory, rebuilt from the bucket when a replica takes over):

- submit (fleet.v1.api.sessions.<tenant>.submit): the project must belong to the tenant of the subject (which NATS
  permissions tie to the submitter's identity); the session is placed at once when a host has a free slot
  (fleet.scheduler.schedule) and stored already assigned, else stored queued with the scheduler's reason; the submitter gets its ID only once
  JetStream acknowledged the write. The assignment is sent to the host on its own subject, with a fencing token:
  the KV revision of the write that assigned it.
- the host reports phases (fleet.v1.work.<machine_id>.event, request/reply): accepted only from the host the session
  is assigned to, under the current fencing token, while the session is assigned or running; anything else is
  refused as stale (and logged as a security event when another host claims it). A completion is written by
  compare-and-set on the session's revision: exactly one completion is ever accepted.
- a host's lease is its liveness: when the registry says it is offline (its heartbeats stopped for its pool's grace),
  revoked or gone, its sessions are lost and re-queued (attempt + 1, up to max attempts: then failed); their fencing
  tokens die with the assignment, so a late completion from the old holder is refused.
- pending sessions (fleet.dispatch.queue) are placed as soon as a slot opens in one of their pools: every dispatch
  pass hands them, group by group, to the pure scheduler (fleet.scheduler.schedule) with the leader's snapshot of
  hosts, pools and routes, then applies its plan; the plan's unplaced demand per pool is kept (`demand()`) for the
  capacity controller and the views. Every phase change is checked against fleet.scheduler.phases.
- every RECONCILE_S the leader compares what each live host reports running (its heartbeats) with what it was
  given: a session a host runs without a current assignment is cancelled there; an assignment a host never took up
  is sent again, then re-queued; a running session the host no longer lists (its agent restarted) is lost.
- cancels and timeouts are orders to the host, but the leader does not rely on them: a cancel not confirmed within
  HOST_GRACE_S, or a session live HOST_GRACE_S past its timeout, is ended by the leader itself (and its host told to
  stop it); a session with a cancel pending whose host is lost ends cancelled instead of being re-queued.

Delivery guarantee (docs/protocol.md): a session's command may start more than once when its host dies or is cut
off mid-run (the session is re-queued and runs elsewhere, and a host that lost its lease stops the command); at most
one completion per session is ever accepted, and a session is never lost: every session reaches a final phase.

Two replicas never dispatch at once: every write first checks that this replica still holds the lease by its own
clock (`lease_ok`), and every write is a compare-and-set on the session's revision. A write that loses such a race
(someone else wrote the session: a replica that led before us and lingered) makes this replica read the whole
bucket again (`take_over`) instead of guessing.

A session's final write carries a TTL (`retention`, `fleet server --session-retention`): nats-server removes finished
sessions from the bucket after it; the leader keeps the last KEEP_FINISHED of them in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.kv import Store
from fleet.bus.messages import (
    LIVE_PHASES,
    MAX_HISTORY,
    MAX_OUTPUT_TAIL,
    MAX_REPORTED_SESSIONS,
    Assignment,
    CancelOrder,
    OutputChunk,
    PhaseEvent,
    SessionRecord,
    SubmitRequest,
    WorkEvent,
    WorkReply,
    new_session_id,
)
from fleet.dispatch.placement import DispatchHost, dispatch_host
from fleet.dispatch.queue import GroupKey, PendingQueue
from fleet.errors import Conflict, FleetError, InvalidRequest, NotFound, QueueFull, Refused, TransientError
from fleet.hosts.config import AppliedConfig
from fleet.hosts.registry import Registry
from fleet.routing import PoolView
from fleet.scheduler import DispatchPlan, PendingGroup, PoolDemand, Reason, Route, Snapshot, schedule
from fleet.scheduler.phases import allowed

log = logging.getLogger(__name__)

RECONCILE_S = 0.5
ASSIGN_RESEND_S = 3.0  # an assignment a live host does not report running after this long is sent again
ASSIGN_TRIES = 3  # ... this many times, then the session is re-queued
MISSING_S = 3.0  # a running session its live host has not listed in its heartbeats for this long is lost
HOST_GRACE_S = 10.0  # a host confirms a cancel, or ends a session past its timeout, within this; else the server does
KEEP_FINISHED = 2_000  # finished sessions kept in memory for the API (the bucket keeps more: `get` reads it)
SESSION_RETENTION_S = 7 * 86_400  # how long the bucket keeps a finished session (a TTL on its last value)
MAX_OPEN_PER_TENANT = 10_000  # sessions of one tenant not final yet; more are refused (QueueFull) until some end
ALL_TENANTS = "_all"  # the tenant token of the session API for identities that see every tenant (admin, viewer)
SECURITY_LOG_EVERY_S = 10.0  # one `security:` line per kind of event and identity this often at most (the rest: counted)
SECURITY_LOG_KEYS = 4096  # identities remembered for that (then forgotten all at once: memory stays bounded)


def public(record: SessionRecord) -> dict[str, Any]:
    """A session as the API shows it: the environment's names, never its values."""
    data = record.model_dump(mode="json")
    data["env"] = sorted(record.env)
    return data


@dataclass(eq=False)
class SessionState:
    record: SessionRecord
    revision: int
    fence: int | None = None
    writing: bool = False
    dirty: bool = False
    flushed: list[asyncio.Future] = field(default_factory=list)
    waiters: list[asyncio.Future] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    output_start: int = 0  # offset of output[0] in the session's whole output
    log_waiters: list[asyncio.Future] = field(default_factory=list)
    assigned_at: float = 0.0  # monotonic
    sends: int = 0
    missing_since: float | None = None  # monotonic: since when its host's heartbeats no longer list it
    cancel_at: float | None = None  # monotonic: when a cancel was ordered that its host has not confirmed yet
    deadline: float | None = None  # monotonic: its timeout (from its assignment) and HOST_GRACE_S; then it ends

    @property
    def output_end(self) -> int:
        return self.output_start + len(self.output)


class Dispatcher:
    def __init__(self, bus: Bus, registry: Registry, config: AppliedConfig, store: Store,
                 lease_ok: Callable[[], bool] = lambda: True, retention: float = SESSION_RETENTION_S) -> None:
        self.bus = bus
        self.retention = retention  # seconds a finished session stays in the bucket (live ones stay until final)
        self.lease_ok = lease_ok
        self.registry = registry
        self.config = config
        self.store = store
        self.hosts: dict[str, DispatchHost] = {}
        self.snapshot = Snapshot()  # what the scheduler reads: these hosts, the applied pools and routes
        self.plan = DispatchPlan()  # the last dispatch pass's plan (its unplaced demand: `demand()`)
        self._passing = False  # a dispatch pass is under way (a submit then queues behind it)
        self.sessions: dict[str, SessionState] = {}  # not final
        self.finished: OrderedDict[str, SessionState] = OrderedDict()
        self.pending = PendingQueue()
        self.metrics: Counter[str] = Counter()
        self.leading = False
        self._changed: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._pass_wanted = asyncio.Event()
        self._resync_wanted = False
        self._submitting: dict[str, asyncio.Future[SessionState]] = {}
        self.open_by_tenant: Counter[str] = Counter()  # sessions not final yet, per tenant
        self._security_logged: dict[tuple[str, str], float] = {}  # (kind, who) -> when last logged (monotonic)
        registry.watchers.append(self._host_changed)
        config.listeners.append(self._config_changed)

    # ------------------------------------------------------------------------------------------ leadership
    async def take_over(self) -> None:
        """Become the dispatcher: rebuild everything from the hosts the registry knows and the stored sessions.
        Called when this replica is elected, and again when a write found that someone else wrote a session."""
        entries = await self.store.snapshot()  # first: nothing below awaits until the new state is in place
        before = {**self.finished, **self.sessions}
        self.hosts, self.snapshot, self.sessions, self.finished = {}, Snapshot(), {}, OrderedDict()
        self._load_config()
        self.pending = PendingQueue()
        for mid in list(self.registry.entries):
            self._sync_host(mid, requeue=False)
        states: dict[str, SessionState] = {}
        for entry in entries:
            try:
                record = SessionRecord.model_validate_json(entry.value)
            except ValueError:
                self.metrics["session_record_skipped"] += 1
                continue
            states[record.id] = SessionState(record, entry.revision)
        for sid, old in before.items():
            st = states.get(sid)
            if st is None or old.revision > st.revision:  # written by us after the snapshot was taken
                states[sid] = old
            else:  # keep who waits for it and what it printed
                st.waiters, st.log_waiters, st.output, st.output_start = (
                    old.waiters, old.log_waiters, old.output, old.output_start)
        lost: list[SessionState] = []
        finished = []
        self.open_by_tenant = Counter()
        for st in states.values():
            record = st.record
            if record.final:
                finished.append(st)
                continue
            self.sessions[record.id] = st
            self.open_by_tenant[record.tenant] += 1
            if record.phase in LIVE_PHASES and record.host:
                st.fence = record.fence if record.fence is not None else st.revision
                st.assigned_at = time.monotonic()
                self._arm(st)
                host = self.hosts.get(record.host)
                if host is None or host.status in ("offline", "revoked"):
                    lost.append(st)
                else:
                    self._reserve(host, record.id)
            else:
                self._enqueue(st)
        for st in sorted(finished, key=lambda s: s.record.finished_at or 0)[-KEEP_FINISHED:]:
            self.finished[st.record.id] = st
        for st in finished:
            self._wake(st)
        self.leading = True
        log.info("dispatcher took over: %d sessions in flight, %d queued, %d lost with their hosts",
                 len(self.sessions) - len(self.pending), len(self.pending), len(lost))
        for st in lost:
            await self._requeue(st, f"host {st.record.host} is gone")
        self._want_pass()

    def step_down(self) -> None:
        self.leading = False
        for st in list(self.sessions.values()):
            self._wake(st)

    # ------------------------------------------------------------------------------------------ hosts
    def _host_changed(self, machine_id: str) -> None:
        if self.leading:
            self._changed.add(machine_id)
            self._want_pass()

    def _config_changed(self, key: str) -> None:
        if self.leading and key.startswith(("pool.", "route.", "host.")):
            self._changed.update(self.registry.entries)  # capacity and labels follow the pools
            kind, _, ident = key.partition(".")
            if kind == "pool":
                spec = self.config.pools.get(ident)
                self.snapshot.set_pool(ident, PoolView.from_spec(ident, spec) if spec is not None else None)
            elif kind == "route":
                spec = self.config.routes.get(ident)
                self.snapshot.set_route(ident, Route.of(ident, spec) if spec is not None else None)
            self._want_pass()

    def _load_config(self) -> None:
        """The applied pools and routes into the scheduler's snapshot."""
        self.snapshot.set_config({pid: PoolView.from_spec(pid, spec) for pid, spec in self.config.pools.items()},
                                 {p: Route.of(p, spec) for p, spec in self.config.routes.items()})

    def _sync_host(self, machine_id: str, *, requeue: bool = True) -> list[SessionState]:
        """Bring our view of one host up to date; the sessions it lost (gone, revoked, offline) when `requeue`."""
        entry = self.registry.entries.get(machine_id)
        current = self.hosts.get(machine_id)
        if entry is None:
            if current is None:
                return []
            del self.hosts[machine_id]
            self.snapshot.drop_host(machine_id)
            return self._orphans(current) if requeue else []
        view = dispatch_host(self.registry.host(entry), current)
        self.hosts[machine_id] = view
        self.snapshot.put_host(view)
        if requeue and view.status in ("offline", "revoked"):
            return self._orphans(view)
        return []

    def _orphans(self, host: DispatchHost) -> list[SessionState]:
        return [self.sessions[s] for s in list(host.sessions) if s in self.sessions]

    def _reserve(self, host: DispatchHost, session_id: str) -> None:
        host.sessions.add(session_id)
        self._rank(host)

    def _release(self, host_id: str | None, session_id: str) -> None:
        host = self.hosts.get(host_id or "")
        if host is not None and session_id in host.sessions:
            host.sessions.discard(session_id)
            self._rank(host)
            self._want_pass()

    def _rank(self, host: DispatchHost) -> None:
        host.version += 1
        self.snapshot.rank(host)

    # ------------------------------------------------------------------------------------------ routes
    def route_of(self, record: SessionRecord) -> Route | None:
        route = self.snapshot.routes.get(record.project)
        return route.for_session(record.labels, record.model) if route is not None else None

    @staticmethod
    def group_key(record: SessionRecord) -> GroupKey:
        return (record.project, frozenset(record.labels), record.model)

    def _enqueue(self, st: SessionState) -> None:
        self.pending.add(st.record.id, self.group_key(st.record), st.record.priority,
                         seq=int(st.record.submitted_at * 1_000_000))

    def demand(self) -> dict[str, PoolDemand]:
        """The unplaced demand per pool as of the last dispatch pass (plain data: fleet.scheduler.PoolDemand)."""
        return self.plan.demand()

    def waiting_reason(self, record: SessionRecord) -> str | None:
        key = self.pending.where.get(record.id)
        if key is None:
            return None
        group = self.pending.groups.get(key)
        return group.reason if group is not None and group.reason else None

    def waiting_for(self, record: SessionRecord) -> tuple[str | None, str | None]:
        """The kind of the scheduler's reason a queued session waits, and the pool it waits for."""
        key = self.pending.where.get(record.id)
        group = self.pending.groups.get(key) if key is not None else None
        return (group.wait_kind, group.wait_pool) if group is not None else (None, None)

    def _note_reason(self, key: GroupKey, reason: Reason) -> None:
        group = self.pending.groups.get(key)
        if group is not None:
            group.reason, group.wait_kind, group.wait_pool = reason.message, reason.kind, reason.pool

    def _check_lease(self) -> None:
        if not self.leading or not self.lease_ok():
            raise TransientError("this fleet server replica no longer dispatches (another one takes over)",
                                 hint="retry in a few seconds")

    def _lost_race(self, st: SessionState) -> None:
        """Someone else wrote session `st` since we read it: read everything again, once, before the next pass."""
        self.metrics["write_conflicts"] += 1
        log.warning("session %s was written by someone else (another dispatcher replica?): reading all sessions "
                    "again", st.record.id)
        self._resync_wanted = True
        self._want_pass()

    def _security(self, kind: str, who: str, msg: str, *args: Any) -> None:
        """Count a security event (metrics[kind]) and log it as `security: …`, but at most one line per kind and
        identity every SECURITY_LOG_EVERY_S: a host or submitter that repeats one as fast as it can must not write
        a log line per message (the disk, and the operator's attention, are not theirs to fill)."""
        self.metrics[kind] += 1
        now, key = time.monotonic(), (kind, who)
        last = self._security_logged.get(key)
        if last is not None and now - last < SECURITY_LOG_EVERY_S:
            return
        if len(self._security_logged) >= SECURITY_LOG_KEYS:
            self._security_logged.clear()
        self._security_logged[key] = now
        log.warning("security: " + msg + " (%d %s so far; at most one line every %gs)", *args, self.metrics[kind],
                    kind, SECURITY_LOG_EVERY_S)

    # ------------------------------------------------------------------------------------------ submit
    async def submit(self, tenant: str, req: SubmitRequest) -> SessionState:
        """Store a new session (placed at once when a host has room); the same ID submitted again (a client that
        lost the reply) returns the session stored the first time."""
        spec = self.config.routes.get(req.project)
        if spec is None and tenant == ALL_TENANTS:
            raise NotFound(f"no project {req.project} in the applied config", hint="`fleet route show` lists them")
        if tenant != ALL_TENANTS and (spec is None or spec.get("tenant") != tenant):
            # the same answer whether the project is another tenant's or nobody's: no oracle of other tenants'
            # project names
            if spec is not None:
                self._security("foreign_submits", tenant, "a submitter of tenant %s asked for project %s of tenant "
                               "%s: refused", tenant, req.project, spec.get("tenant"))
            raise Refused(f"project {req.project} does not belong to tenant {tenant}")
        assert spec is not None
        sid = req.id or new_session_id()
        known = self.sessions.get(sid) or self.finished.get(sid)
        if known is None and sid in self._submitting:
            known = await asyncio.shield(self._submitting[sid])
        if known is not None:
            return self._repeated(known, spec, req)
        fut: asyncio.Future[SessionState] = asyncio.get_running_loop().create_future()
        self._submitting[sid] = fut
        try:
            st = await self._submit_new(sid, spec, req)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._submitting[sid]
        fut.set_result(st)
        in_memory = self.sessions.get(sid) is st or self.finished.get(sid) is st
        return st if in_memory else self._repeated(st, spec, req)  # else one that ended long ago

    def _repeated(self, known: SessionState, spec: dict[str, Any], req: SubmitRequest) -> SessionState:
        """A submit of an ID already stored: the same session sent again (its reply was lost), or someone else's."""
        if known.record.tenant != spec["tenant"] or known.record.project != req.project:
            raise Refused(f"session ID {known.record.id} is taken", hint="let the client choose the ID")
        self.metrics["submit_repeated"] += 1
        return known

    async def _submit_new(self, sid: str, spec: dict[str, Any], req: SubmitRequest) -> SessionState:
        tenant = spec["tenant"]
        if self.open_by_tenant[tenant] >= MAX_OPEN_PER_TENANT:
            self.metrics["queue_full"] += 1
            raise QueueFull(f"tenant {tenant} has {self.open_by_tenant[tenant]} sessions queued or running already "
                            f"(at most {MAX_OPEN_PER_TENANT})", hint="submit again when some have ended")
        now = time.time()
        record = SessionRecord.model_construct(  # from a validated request: no second validation
            id=sid, tenant=spec["tenant"], project=req.project, command=req.command, env=req.env,
            labels=sorted(set(req.labels)), model=req.model, priority=req.priority, timeout_s=req.timeout_s,
            max_attempts=req.max_attempts, submitted_at=now, history=[_event(phase="queued", at=now)],
        )
        placement: tuple[str, DispatchHost] | None = None
        labels = frozenset(record.labels)
        plan = schedule(self.snapshot, [PendingGroup(req.project, labels, record.model, (sid,), 1)], now)
        if plan.unplaced:
            record.reason = plan.unplaced[0].reason.message
        elif len(self.pending) and (self._passing or self._pass_wanted.is_set() or self._changed
                                    or (req.project, labels, record.model) in self.pending.groups):
            # sessions wait, and a pass is under way or due (a slot may have opened for one that waited longer), or
            # sessions of its own kind wait: it queues behind them, and that pass places it
            record.reason = "a host has room: the next dispatch pass places it (sessions that waited longer first)"
        else:
            a = plan.assignments[0]
            placement = (a.pool, self.hosts[a.host])
        if placement is not None:
            self._assign_in_memory(record, placement, now)
            self._reserve(placement[1], record.id)
        try:
            self._check_lease()
            revision = await self.store.create(record.id, record.encode())
        except BaseException as exc:
            if placement is not None:
                self._release(placement[1].machine_id, record.id)
            if isinstance(exc, Conflict):  # stored already, and not in memory
                old = await self._ended_long_ago(sid)
                if old is not None:
                    return old
                # not a session that ended: we are behind (another replica wrote it); read everything again
                self._resync_wanted = True
                self._want_pass()
                raise TransientError(f"session {sid} is being stored; send it again",
                                     hint="retry in a moment") from None
            raise
        st = SessionState(record, revision)
        self.sessions[record.id] = st
        self.open_by_tenant[tenant] += 1
        self.metrics["submitted"] += 1
        if placement is not None:
            st.fence, st.assigned_at = revision, time.monotonic()
            self._arm(st)
            await self._send_assignment(st)
        else:
            self._enqueue(st)
            if plan.unplaced:
                self._note_reason(self.group_key(record), plan.unplaced[0].reason)
            self._want_pass()
        return st

    async def _ended_long_ago(self, sid: str) -> SessionState | None:
        """Session `sid` as stored, if it is final: one that ended before the sessions kept in memory (a client's
        chosen ID sent again, by its own tenant or another). Read from its own key: a submitter who knows many old
        IDs must not make the leader read the whole bucket again per request."""
        try:
            entry = await self.store.get(sid)
            if entry is None:
                return None
            record = SessionRecord.model_validate_json(entry.value)
        except (FleetError, ValueError):
            return None
        return SessionState(record, entry.revision) if record.final else None

    @staticmethod
    def _arm(st: SessionState) -> None:
        """A session was just assigned: its timeout runs from now (the host's own clock starts a little later)."""
        timeout = st.record.timeout_s
        st.deadline = time.monotonic() + timeout + HOST_GRACE_S if timeout else None

    @staticmethod
    def _assign_in_memory(record: SessionRecord, placement: tuple[str, DispatchHost], now: float) -> None:
        pool, host = placement
        record.phase, record.host, record.pool, record.fence, record.reason = (
            "assigned", host.machine_id, pool, None, None)
        _history(record, _event(phase="assigned", at=now, host=host.machine_id, attempt=record.attempt))

    async def _send_assignment(self, st: SessionState) -> None:
        record = st.record
        assert record.host is not None and st.fence is not None
        st.sends += 1
        msg = Assignment.model_construct(session=record.id, fence=st.fence, attempt=record.attempt, tenant=record.tenant,
                         project=record.project, command=record.command, env=record.env, timeout_s=record.timeout_s)
        try:
            await self.bus.publish(subjects.host_assign(record.host), msg.encode())
        except FleetError as exc:  # the reconcile loop sends it again
            log.info("could not send session %s to %s: %s", record.id, record.host, exc)

    # ------------------------------------------------------------------------------------------ dispatch passes
    def _want_pass(self) -> None:
        self._pass_wanted.set()

    async def run(self) -> None:
        """The leader's loop: dispatch passes when something changed, reconciliation every RECONCILE_S."""
        next_reconcile = 0.0
        while self.leading:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pass_wanted.wait(), RECONCILE_S)
            self._pass_wanted.clear()
            try:
                if self._resync_wanted:
                    self._resync_wanted = False
                    await self.take_over()
                await self._apply_host_changes()
                await self._dispatch_pass()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + RECONCILE_S
                    await self._reconcile()
            except FleetError as exc:
                log.warning("dispatch pass failed (%s); retrying", exc.message)
                await asyncio.sleep(0.2)
            except Exception:  # a bug: log it, read everything again, keep dispatching
                log.exception("dispatch pass failed; reading all sessions again")
                self.metrics["internal"] += 1
                self._resync_wanted = True
                await asyncio.sleep(1.0)

    async def _apply_host_changes(self) -> None:
        changed, self._changed = self._changed, set()
        lost: list[tuple[SessionState, str]] = []
        for mid in changed:
            for st in self._sync_host(mid):
                host = self.hosts.get(mid)
                lost.append((st, f"host {mid} is {host.status if host else 'gone'}"))
        for st, why in lost:
            await self._requeue(st, why)

    async def _dispatch_pass(self) -> None:
        """Hand the pending groups to the scheduler (in the order of their heads) and apply its plan: reserve the
        slots it gave, then write and send the assignments; each waiting group keeps the reason of its head."""
        placed: list[tuple[SessionState, tuple[str, DispatchHost]]] = []
        now = time.time()
        stale: list[str] = []

        def live(ids: Iterable[str]) -> Iterable[str]:
            for sid in ids:
                if sid in self.sessions:
                    yield sid
                else:
                    stale.append(sid)

        groups = self.pending.ordered_groups()
        pending = [PendingGroup(g.key[0], g.key[1], g.key[2], live(self.pending.in_order(g)), g.count) for g in groups]
        self._passing = True
        try:
            plan = schedule(self.snapshot, pending, now)
        finally:
            self._passing = False
        self.plan = plan
        for sid in stale:
            self.pending.remove(sid)
        for u in plan.unplaced:
            self._note_reason((u.project, u.labels, u.model), u.reason)
        for a in plan.assignments:
            st = self.sessions[a.session]
            host = self.hosts[a.host]
            self.pending.remove(a.session)
            self._reserve(host, a.session)
            placed.append((st, (a.pool, host)))
        if placed:
            await asyncio.gather(*(self._assign(st, p, now) for st, p in placed))

    async def _assign(self, st: SessionState, placement: tuple[str, DispatchHost], now: float) -> None:
        before = st.record.model_copy(update={"history": list(st.record.history)})  # not the list it appends to
        self._assign_in_memory(st.record, placement, now)
        try:
            await self._persist(st)
        except FleetError as exc:
            log.warning("could not assign session %s: %s", st.record.id, exc)
            st.record = before
            self._release(placement[1].machine_id, st.record.id)
            self._enqueue(st)
            return
        st.fence, st.assigned_at, st.sends = st.revision, time.monotonic(), 0
        self._arm(st)
        await self._send_assignment(st)

    # ------------------------------------------------------------------------------------------ writes
    async def _persist(self, st: SessionState) -> None:
        """Write the session's current state by compare-and-set on its revision. Writes of one session never
        overlap: a write asked for while one is in flight is folded into the next, and this returns once a write
        that includes the state as of the call has landed."""
        st.dirty = True
        if st.writing:
            fut = asyncio.get_running_loop().create_future()
            st.flushed.append(fut)
            await fut
            return
        st.writing = True
        try:
            while st.dirty:
                st.dirty = False
                waiting, st.flushed = st.flushed, []
                if st.fence is not None and st.record.phase in LIVE_PHASES:
                    st.record.fence = st.fence
                try:
                    self._check_lease()
                    st.revision = await self.store.update(st.record.id, st.record.encode(), last=st.revision,
                                                          ttl=self.retention if st.record.final else None)
                except FleetError as exc:
                    for fut in waiting:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, Conflict):
                        self._lost_race(st)
                    raise
                for fut in waiting:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            st.writing = False

    async def _finish(self, st: SessionState, phase: str, *, at: float, exit_code: int | None = None,
                      reason: str | None = None, host: str | None = None, output: str | None = None) -> None:
        record = st.record
        was_host = record.host
        if st.fence is not None:
            record.fence = st.fence
        record.phase, record.finished_at, record.exit_code = phase, at, exit_code  # type: ignore[assignment]
        record.reason = reason
        if output is not None:
            record.output_tail = output
        elif st.output:
            record.output_tail = st.output[-MAX_OUTPUT_TAIL:].decode("utf-8", "replace")
        _history(record, _event(phase=phase, at=at, host=host or was_host, attempt=record.attempt,
                                    note=reason))
        await self._persist(st)
        if self.sessions.pop(record.id, None) is not None:
            self.open_by_tenant[record.tenant] -= 1
        self.pending.remove(record.id)
        if len(st.output) > MAX_OUTPUT_TAIL:  # what a finished session keeps of its output (`logs` reads it)
            drop = len(st.output) - MAX_OUTPUT_TAIL
            del st.output[:drop]
            st.output_start += drop
        self._release(was_host, record.id)
        self.finished[record.id] = st
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)
        self.metrics[f"finished_{phase}"] += 1
        self._wake(st)

    @staticmethod
    def _wake(st: SessionState) -> None:
        for fut in st.waiters + st.log_waiters:
            if not fut.done():
                fut.set_result(None)
        st.waiters, st.log_waiters = [], []

    async def _requeue(self, st: SessionState, why: str) -> None:
        """The session's host is gone: it is lost; queued again (attempt + 1) or, out of attempts, failed."""
        record = st.record
        if record.final or record.id not in self.sessions:
            return
        now = time.time()
        was_host = record.host
        _history(record, _event(phase="lost", at=now, host=was_host, attempt=record.attempt, note=why))
        self._release(was_host, record.id)
        st.fence, st.deadline = None, None
        if st.cancel_at is not None:  # cancelled, and its host never confirmed: it ends here, it does not run again
            self.metrics["lost"] += 1
            await self._finish(st, "cancelled", at=now, reason=f"cancelled; its host was lost before it confirmed "
                                                               f"({why})")
            return
        self.metrics["lost"] += 1
        log.info("session %s lost (%s), attempt %d of %d", record.id, why, record.attempt, record.max_attempts)
        if record.attempt >= record.max_attempts:
            await self._finish(st, "failed", at=now, reason=f"lost: {why}; no attempts left ({record.max_attempts})")
            return
        record.attempt += 1
        record.phase, record.host, record.pool, record.fence, record.reason = "queued", None, None, None, why
        record.started_at = None
        _history(record, _event(phase="queued", at=now, attempt=record.attempt))
        await self._persist(st)
        self._enqueue(st)
        self._want_pass()

    # ------------------------------------------------------------------------------------------ from hosts
    async def on_event(self, machine_id: str, ev: WorkEvent) -> WorkReply:
        st = self.sessions.get(ev.session)
        if st is None or st.record.host != machine_id or st.fence != ev.fence or st.record.phase not in LIVE_PHASES:
            owner = st.record.host if st is not None else None
            if owner is not None and owner != machine_id:
                self._security("foreign_claims", machine_id, "host %s reported %s on session %s, which is assigned "
                               "to host %s: refused", machine_id, ev.phase, ev.session, owner)
            else:
                self.metrics["stale_events"] += 1
            return WorkReply(ok=False, stale=True, message="this session is not yours under that fencing token")
        host = self.hosts.get(machine_id)
        if host is not None and host.status == "revoked":
            self._security("revoked_reports", machine_id, "revoked host %s reported on session %s: refused",
                           machine_id, ev.session)
            return WorkReply(ok=False, stale=True, message="this host is revoked")
        record = st.record
        if ev.phase != record.phase and not allowed("running" if record.phase == "assigned" and ev.phase != "running"
                                                    else record.phase, ev.phase):
            self.metrics["stale_events"] += 1
            return WorkReply(ok=False, stale=True, message=f"a session {record.phase} cannot become {ev.phase}")
        if ev.phase == "running":
            if record.phase == "assigned":
                record.phase, record.started_at = "running", ev.started_at or ev.at
                _history(record, _event(phase="running", at=record.started_at, host=machine_id,
                                            attempt=record.attempt))
                await self._persist(st)
            return WorkReply(ok=True)
        if record.phase == "assigned":  # it ran and ended before its running event was sent: both happened
            record.started_at = ev.started_at or ev.at
            _history(record, _event(phase="running", at=record.started_at, host=machine_id, attempt=record.attempt))
        await self._finish(st, ev.phase, at=ev.at, exit_code=ev.exit_code, reason=ev.note, host=machine_id,
                           output=ev.output_tail or None)
        return WorkReply(ok=True)

    def on_output(self, machine_id: str, chunk: OutputChunk) -> None:
        st = self.sessions.get(chunk.session)
        if st is None or st.record.host != machine_id or st.fence != chunk.fence:
            self.metrics["stale_output"] += 1
            return
        data = chunk.data.encode()
        if chunk.offset > st.output_end:  # a gap (a chunk was lost): say so in the output
            st.output += f"\n[… {chunk.offset - st.output_end} bytes lost …]\n".encode()
        elif chunk.offset < st.output_end:  # a chunk sent again: keep only what is new
            data = data[st.output_end - chunk.offset:]
        st.output += data
        if len(st.output) > MAX_OUTPUT_TAIL * 4:
            drop = len(st.output) - MAX_OUTPUT_TAIL * 2
            del st.output[:drop]
            st.output_start += drop
        for fut in st.log_waiters:
            if not fut.done():
                fut.set_result(None)
        st.log_waiters = []

    # ------------------------------------------------------------------------------------------ reconciliation
    async def _reconcile(self) -> None:
        """Compare what live hosts report running with what they were given (see the module docstring)."""
        now = time.monotonic()
        await self._enforce(now)
        for mid, host in list(self.hosts.items()):
            entry = self.registry.entries.get(mid)
            if entry is None or not entry.live or entry.beat is None:
                continue
            reported = {s.session_id: s for s in entry.beat.sessions}
            for sid, s in reported.items():
                st = self.sessions.get(sid)
                if st is None or st.record.host != mid or (s.fence is not None and s.fence != st.fence):
                    await self._tell_stop(mid, sid, s.fence, "no longer assigned to this host")
            beat_age = now - entry.beat.at
            complete = len(entry.beat.sessions) < MAX_REPORTED_SESSIONS  # else the report was cut short
            for sid in list(host.sessions):
                st = self.sessions.get(sid)
                if st is None or sid in reported:
                    if st is not None:
                        st.missing_since = None
                    continue
                if st.record.phase == "running":
                    if not complete or beat_age > MISSING_S:
                        continue
                    if st.missing_since is None:
                        st.missing_since = now
                    elif now - st.missing_since > MISSING_S:  # the host forgot it (its agent restarted)
                        await self._requeue(st, f"host {mid} no longer runs it")
                    continue
                if now - st.assigned_at > ASSIGN_RESEND_S and beat_age < ASSIGN_RESEND_S:
                    if st.sends >= ASSIGN_TRIES:
                        await self._requeue(st, f"host {mid} did not take up the assignment")
                    else:
                        st.assigned_at = now
                        await self._send_assignment(st)

    async def _enforce(self, now: float) -> None:
        """End, by the server's own clock, the sessions whose host did not: a cancel not confirmed within
        HOST_GRACE_S, a session past its timeout and HOST_GRACE_S. A host that keeps its lease (heartbeats) but
        ignores its orders must not hold a session as long as it likes; its process is told to stop."""
        for host in list(self.hosts.values()):
            for sid in list(host.sessions):
                st = self.sessions.get(sid)
                if st is None or st.record.phase not in LIVE_PHASES:
                    continue
                if st.cancel_at is not None and now - st.cancel_at > HOST_GRACE_S:
                    phase, why = "cancelled", f"cancelled; its host did not confirm within {HOST_GRACE_S:g}s"
                elif st.deadline is not None and now > st.deadline:
                    phase, why = "timed_out", (f"its host did not end it within its timeout of "
                                               f"{st.record.timeout_s:g}s and {HOST_GRACE_S:g}s more")
                else:
                    continue
                fence = st.fence
                self.metrics[f"enforced_{phase}"] += 1
                log.warning("session %s on host %s: %s; ended by the server", sid, host.machine_id, why)
                await self._finish(st, phase, at=time.time(), reason=why)
                await self._tell_stop(host.machine_id, sid, fence, "no longer assigned to this host")

    async def _tell_stop(self, machine_id: str, session_id: str, fence: int | None, reason: str) -> None:
        with contextlib.suppress(FleetError):
            await self.bus.publish(subjects.host_cancel(machine_id),
                                   CancelOrder(session=session_id, fence=fence, reason=reason).encode())

    # ------------------------------------------------------------------------------------------ API
    def find(self, tenant: str, ident: str) -> SessionState | None:
        """A session of `tenant` by ID or unique prefix, in memory (None if unknown here)."""
        ident = ident.strip().lower()
        if not ident or len(ident) > 20 or any(c not in "0123456789abcdef" for c in ident):
            raise InvalidRequest(f"malformed session ID {ident[:24]!r}", hint="`fleet sessions list` shows them")
        matches = [st for pool in (self.sessions, self.finished) for sid, st in pool.items()
                   if sid.startswith(ident) and (tenant == ALL_TENANTS or st.record.tenant == tenant)]
        exact = [st for st in matches if st.record.id == ident]
        if exact:
            return exact[0]
        if len(matches) > 1:
            raise InvalidRequest(f"session ID prefix {ident} matches {len(matches)} sessions",
                                 hint="pass a longer prefix")
        return matches[0] if matches else None

    async def get(self, tenant: str, ident: str) -> SessionState:
        st = self.find(tenant, ident)
        if st is not None:
            return st
        if len(ident) == 20:  # an old session no longer in memory: the bucket has every session
            entry = await self.store.get(ident)
            if entry is not None:
                record = SessionRecord.model_validate_json(entry.value)
                if tenant in (ALL_TENANTS, record.tenant):
                    return SessionState(record, entry.revision)
        raise NotFound(f"no session {ident}", hint="`fleet sessions list` shows them")

    def listing(self, tenant: str, project: str | None, phase: str | None, limit: int) -> list[SessionState]:
        out = [st for pool in (self.sessions, self.finished) for st in pool.values()
               if (tenant == ALL_TENANTS or st.record.tenant == tenant) and (project is None or st.record.project == project)
               and (phase is None or st.record.phase == phase)]
        # by when the leader stored them: an ID's time prefix is the client's choice (one from the future would
        # otherwise stay "the newest" in every list)
        out.sort(key=lambda st: (st.record.submitted_at, st.record.id))
        return out[-limit:]

    async def cancel(self, st: SessionState) -> None:
        record = st.record
        if record.final:
            return
        if record.phase == "queued":
            self.pending.remove(record.id)
            await self._finish(st, "cancelled", at=time.time(), reason="cancelled before it ran")
            return
        host = self.hosts.get(record.host or "")
        if host is None or host.status in ("offline", "revoked"):
            await self._finish(st, "cancelled", at=time.time(), reason="cancelled; its host was gone")
            return
        if st.cancel_at is None:
            st.cancel_at = time.monotonic()
        await self._tell_stop(record.host or "", record.id, st.fence, "cancelled")

    async def wait(self, st: SessionState, timeout: float) -> None:
        """Until the session is final or `timeout` passes."""
        if st.record.final or timeout <= 0 or not self.leading:
            return
        fut = asyncio.get_running_loop().create_future()
        st.waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    async def logs(self, st: SessionState, offset: int, wait_s: float) -> tuple[int, str, bool]:
        """(offset of the text returned, the text from `offset` on as far as it is known, whether it is the end)."""
        if st.record.final and not st.output:
            text = st.record.output_tail
            return 0, text[offset:] if offset < len(text.encode()) else "", True
        if offset >= st.output_end and not st.record.final and wait_s > 0 and self.leading:
            fut = asyncio.get_running_loop().create_future()
            st.log_waiters.append(fut)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, wait_s)
        start = max(offset, st.output_start)
        data = bytes(st.output[start - st.output_start:])
        return start, data.decode("utf-8", "replace"), st.record.final

    def queued_of(self, sessions: Iterable[SessionState]) -> list[dict[str, Any]]:
        return [public(st.record) for st in sessions]


def _event(**kw: Any) -> PhaseEvent:
    """A history event from values the dispatcher itself holds (already validated): built without validation."""
    return PhaseEvent.model_construct(**kw)


def _history(record: SessionRecord, event: PhaseEvent) -> None:
    """Append a phase event; a step that is not in the phase table (fleet.scheduler.phases) is a bug, logged."""
    before = record.history[-1].phase if record.history else None
    if before is not None and not allowed(before, event.phase):
        log.error("session %s: %s -> %s is not a phase transition (fleet.scheduler.phases); recorded anyway",
                  record.id, before, event.phase)
    record.history.append(event)
    if len(record.history) > MAX_HISTORY:
        del record.history[1:len(record.history) - MAX_HISTORY + 1]
