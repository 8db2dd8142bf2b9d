"""The dispatcher: sessions in, hosts out; leases with fencing tokens; nothing lost when a host or a replica dies.

Runs in `fleet server`, active in one replica at a time (the leader, fleet.dispatch.leader); wired by
fleet.service.server, which starts `take_over()` when elected and `run()` as a long-running loop. It ties four
parts together, the way Nomad splits its scheduler (state snapshot -> pure scheduler -> plan applier):

- the session store (fleet.dispatch.store): the sessions bucket listed into memory, and its fenced CAS writer;
- the placements (fleet.dispatch.placement): the hosts as the scheduler models them (fleet.scheduler.HostState),
  kept current host by host from the registry (`Registry.watchers`) and the applied config (`listeners`), in the
  scheduler's Snapshot, and the pending queue (fleet.dispatch.queue);
- the pure scheduler (fleet.scheduler.schedule) and the pure reconciliation (fleet.dispatch.reconcile), which make
  DispatchPlans, and the plan applier (fleet.dispatch.applier), which carries them out;
- the query side (fleet.dispatch.query): lookups, waits, output buffers, long-polled logs.

What it does itself: submit (the project must belong to the tenant of the subject, which NATS permissions tie to
the submitter's identity; the session is placed at once when a host has a free slot and stored already assigned,
else stored queued with the scheduler's reason; the submitter gets its ID only once JetStream acknowledged the
write), the hosts' phase reports (accepted only from the host the session is assigned to, under the current fencing
token, along the phase table; anything else is refused as stale, and logged as a security event when another host
claims it), cancels, and the leader's loop: a dispatch pass when something changed, reconciliation every
RECONCILE_S. A host's lease is its liveness: when the registry says it is offline, revoked or gone, its sessions are
re-queued and their fencing tokens die with the assignment, so a late completion from the old holder is refused.

Delivery guarantee (docs/protocol.md): a session's command may start more than once only when its host loses its
lease mid-run (dies, is revoked, or is not heard for its grace while this replica listens: a host this replica has
not heard yet is `Registry.awaited`, and its sessions are kept, not re-queued); at most one completion per session
is ever accepted (compare-and-set on the session's revision), and a session is never lost: every session reaches a
final phase. Two replicas never dispatch at once: every write first
checks that this replica still holds the lease by its own clock (`lease_ok`); a write that loses a compare-and-set
race makes this replica list the whole bucket again (`take_over`) instead of guessing.

(About 350 lines, of which 40 are this docstring: what is left here is what ties the parts, and each of its
sections — take-over, host and config changes, the loop, the phase reports, cancels — is short.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from fleet.bus.connection import Bus
from fleet.bus.kv import Store
from fleet.bus.messages import LIVE_PHASES, SessionRecord, SubmitRequest, WorkEvent, WorkReply, set_trusted
from fleet.dispatch.applier import PlanApplier, event, transition
from fleet.dispatch.audit import SecurityLog
from fleet.dispatch.placement import GONE_STATUSES, Placements, note_reason
from fleet.dispatch.query import ALL_TENANTS, SessionQueries, public, wake
from fleet.dispatch.reconcile import reconcile
from fleet.dispatch.store import KEEP_FINISHED, SESSION_RETENTION_S, SessionState, SessionStore
from fleet.dispatch.submit import MAX_OPEN_PER_TENANT, Submitter
from fleet.errors import FleetError, TransientError
from fleet.hosts.config import AppliedConfig
from fleet.hosts.registry import Registry
from fleet.scheduler import DispatchPlan, PendingGroup, PoolDemand, Route, schedule
from fleet.scheduler.phases import allowed
from fleet.schema.models import Pool

__all__ = ["ALL_TENANTS", "KEEP_FINISHED", "MAX_OPEN_PER_TENANT", "RECONCILE_S", "SESSION_RETENTION_S", "Dispatcher",
           "SessionState", "public"]

log = logging.getLogger(__name__)
WORK_OK = WorkReply(ok=True)  # the answer to most host reports: one instance, encoded once (fleet.dispatch.api)

RECONCILE_S = 0.5
PASS_GATHER_S = 0.002  # with sessions waiting, a pass waits this long for more events (slots freed, submits)


class Dispatcher:
    def __init__(self, bus: Bus, registry: Registry, config: AppliedConfig, store: Store,
                 lease_ok: Callable[[], bool] = lambda: True, retention: float = SESSION_RETENTION_S,
                 max_open: int = MAX_OPEN_PER_TENANT) -> None:
        self.bus = bus
        self.lease_ok = lease_ok
        self.registry = registry
        self.config = config
        self.metrics: Counter[str] = Counter()
        self.leading = False
        self.where = Placements(on_release=self._slot_opened)
        self.plan = DispatchPlan()  # the last dispatch pass's plan (its unplaced demand: `demand()`)
        self.passing = False  # a dispatch pass is under way (a submit then queues behind it)
        self.store = SessionStore(store, check_lease=self._check_lease, on_conflict=self._lost_race,
                                  metrics=self.metrics, retention=retention)
        self.query = SessionQueries(self.store, lambda: self.leading, self.metrics)
        self.applier = PlanApplier(bus, self.store, lambda: self.where, self.metrics, self._check_lease,
                                   self._want_pass)
        self.security = SecurityLog(self.metrics)
        self.submitter = Submitter(self, max_open)
        self._changed: set[str] = set()
        self._pass_wanted = asyncio.Event()
        self._resync_wanted = False
        registry.watchers.append(self._host_changed)
        config.listeners.append(self._config_changed)

    # ------------------------------------------------------------------------------------------ views
    @property
    def hosts(self) -> dict[str, Any]:
        return self.where.hosts

    @property
    def pending(self) -> Any:
        return self.where.pending

    @property
    def sessions(self) -> dict[str, SessionState]:
        return self.store.sessions

    def demand(self) -> dict[str, PoolDemand]:
        """The unplaced demand per pool as of the last dispatch pass (plain data: fleet.scheduler.PoolDemand)."""
        return self.plan.demand()

    def route_of(self, record: SessionRecord) -> Route | None:
        route = self.where.snapshot.routes.get(record.project)
        return route.for_session(record.labels, record.model) if route is not None else None

    def waiting_for(self, record: SessionRecord) -> tuple[str | None, str | None, str | None]:
        """Why a queued session waits: the scheduler's words, the kind of its reason and the pool it waits for."""
        key = self.where.pending.where.get(record.id)
        group = self.where.pending.groups.get(key) if key is not None else None
        if group is None:
            return None, None, None
        return group.reason or None, group.wait_kind, group.wait_pool

    # ------------------------------------------------------------------------------------------ leadership
    async def take_over(self) -> None:
        """Become the dispatcher: rebuild everything from the hosts the registry knows and the stored sessions.
        Called when this replica is elected, and again when a write found that someone else wrote a session."""
        states = await self.store.load()  # first: nothing below awaits until the new state is in place
        self.where = where = Placements(on_release=self._slot_opened)
        where.snapshot.set_config({pid: Pool.from_spec(pid, spec) for pid, spec in self.config.pools.items()},
                                  {p: Route.of(p, spec) for p, spec in self.config.routes.items()})
        for mid in list(self.registry.entries):
            self._sync_host(mid, requeue=False)
        live, finished = self.store.adopt(states)
        lost: list[SessionState] = []
        for st in live:
            record = st.record
            if record.phase in LIVE_PHASES and record.host:
                st.fence = record.fence if record.fence is not None else st.revision
                st.assigned_at = time.monotonic()
                st.arm()
                host = where.hosts.get(record.host)
                if host is None or self._gone(record.host, host):
                    lost.append(st)
                else:
                    where.reserve(host, record.id)
            else:
                where.enqueue(record)
        for st in finished:
            wake(st)
        self.leading = True
        log.info("dispatcher took over: %d sessions in flight, %d queued, %d lost with their hosts",
                 len(live) - len(where.pending), len(where.pending), len(lost))
        for st in lost:
            await self.applier.requeue(st, f"host {st.record.host} is gone")
        self._want_pass()

    def step_down(self) -> None:
        self.leading = False
        for st in list(self.store.sessions.values()):
            wake(st)

    def _check_lease(self) -> None:
        if not self.leading or not self.lease_ok():
            raise TransientError("this fleet server replica no longer dispatches (another one takes over)",
                                 hint="retry in a few seconds")

    def _lost_race(self, st: SessionState) -> None:
        """Someone else wrote session `st` since we read it: read everything again, once, before the next pass."""
        self.metrics["write_conflicts"] += 1
        log.warning("session %s was written by someone else (another dispatcher replica?): reading all sessions "
                    "again", st.record.id)
        self.want_resync()

    def want_resync(self) -> None:
        self._resync_wanted = True
        self._want_pass()

    # ------------------------------------------------------------------------------------------ hosts and config
    def _host_changed(self, machine_id: str) -> None:
        if self.leading:
            self._changed.add(machine_id)
            self._want_pass()

    def _config_changed(self, key: str) -> None:
        if self.leading and key.startswith(("pool.", "route.", "host.")):
            self._changed.update(self.registry.entries)  # capacity and labels follow the pools
            kind, _, ident = key.partition(".")
            snapshot = self.where.snapshot
            if kind == "pool":
                spec = self.config.pools.get(ident)
                snapshot.set_pool(ident, Pool.from_spec(ident, spec) if spec is not None else None)
            elif kind == "route":
                spec = self.config.routes.get(ident)
                snapshot.set_route(ident, Route.of(ident, spec) if spec is not None else None)
            self._want_pass()

    def _sync_host(self, machine_id: str, *, requeue: bool = True) -> list[SessionState]:
        """Bring our view of one host up to date; the sessions it lost (gone, revoked, offline) when `requeue`."""
        entry = self.registry.entries.get(machine_id)
        if entry is None:
            gone = self.where.drop_host(machine_id)
            return self._orphans(gone.sessions) if gone is not None and requeue else []
        view = self.where.put_host(self.registry.host(entry))
        return self._orphans(view.sessions) if requeue and self._gone(machine_id, view) else []

    def _gone(self, machine_id: str, host: Any) -> bool:
        """Whether host `machine_id` (our view of it, None if unknown) has lost its sessions: unknown, revoked, or
        offline for good (not merely unheard since this replica listens: `Registry.awaited`)."""
        return host is None or (host.status in GONE_STATUSES and not self.registry.awaited(machine_id))

    def _orphans(self, sessions: Iterable[str]) -> list[SessionState]:
        return [self.store.sessions[s] for s in list(sessions) if s in self.store.sessions]

    # ------------------------------------------------------------------------------------------ submit
    async def submit(self, tenant: str, req: SubmitRequest) -> SessionState:
        """Store a new session (fleet.dispatch.submit)."""
        return await self.submitter.submit(tenant, req)

    async def submit_many(self, tenant: str, reqs: list[SubmitRequest]) -> list[SessionState]:
        """Store many new sessions at once (fleet.dispatch.submit)."""
        return await self.submitter.submit_many(tenant, reqs)

    # ------------------------------------------------------------------------------------------ the loop
    def _want_pass(self) -> None:
        self._pass_wanted.set()

    def _slot_opened(self) -> None:
        """A slot opened: worth a pass only if a session waits (most completions free a slot nobody waits for)."""
        if self.where.pending:
            self._pass_wanted.set()

    def pass_due(self) -> bool:
        """A dispatch pass is under way or due: a submit that a waiting session could be ahead of queues behind."""
        return self.passing or self._pass_wanted.is_set() or bool(self._changed)

    async def run(self) -> None:
        """The leader's loop: dispatch passes when something changed, reconciliation every RECONCILE_S."""
        next_reconcile = 0.0
        while self.leading:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pass_wanted.wait(), RECONCILE_S)
            if len(self.where.pending) > 1:  # a pass per batch of events: let the completions of this moment in
                await asyncio.sleep(PASS_GATHER_S)
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
                host = self.where.hosts.get(mid)
                lost.append((st, f"host {mid} is {host.status if host else 'gone'}"))
        for st, why in lost:
            await self.applier.requeue(st, why)

    async def _dispatch_pass(self) -> None:
        """Hand the pending groups to the scheduler (in the order of their heads) and apply its plan; each waiting
        group keeps the reason of its head."""
        now = time.time()
        stale: list[str] = []
        sessions, pending = self.store.sessions, self.where.pending

        def live(ids: Iterable[str]) -> Iterable[str]:
            for sid in ids:
                if sid in sessions:
                    yield sid
                else:
                    stale.append(sid)

        groups = [PendingGroup(g.key[0], g.key[1], g.key[2], live(pending.in_order(g)), g.count)
                  for g in pending.ordered_groups()]
        self.passing = True
        try:
            plan = schedule(self.where.snapshot, groups, now)
        finally:
            self.passing = False
        self.plan = plan
        for sid in stale:
            pending.remove(sid)
        for u in plan.unplaced:
            note_reason(self.where, (u.project, u.labels, u.model), u.reason)
        if plan.assignments:
            await self.applier.apply(plan)

    async def _reconcile(self) -> None:
        failures, stops, requeues, resends = reconcile(self.where.hosts, self.store.sessions, self.registry.entries,
                                                       time.monotonic())
        if failures or stops or requeues or resends:
            await self.applier.apply(DispatchPlan(failures=tuple(failures), stops=tuple(stops),
                                                  requeues=tuple(requeues), resends=tuple(resends)))

    # ------------------------------------------------------------------------------------------ from hosts
    async def on_event(self, machine_id: str, ev: WorkEvent) -> WorkReply:
        st = self.store.sessions.get(ev.session)
        if st is None or st.record.host != machine_id or st.fence != ev.fence or st.record.phase not in LIVE_PHASES:
            return self._refuse(machine_id, ev, st)
        host = self.where.hosts.get(machine_id)
        if host is not None and host.status == "revoked":
            self.security.note("revoked_reports", machine_id, "revoked host %s reported on session %s: refused",
                               machine_id, ev.session)
            return WorkReply(ok=False, stale=True, message="this host is revoked")
        record = st.record
        if ev.phase != record.phase and not allowed("running" if record.phase == "assigned" and ev.phase != "running"
                                                    else record.phase, ev.phase):
            self.metrics["stale_events"] += 1
            return WorkReply(ok=False, stale=True, message=f"a session {record.phase} cannot become {ev.phase}")
        if ev.phase == "running":
            if record.phase == "assigned":
                set_trusted(record, phase="running", started_at=ev.started_at or ev.at)
                transition(record, event(phase="running", at=record.started_at, host=machine_id,
                                         attempt=record.attempt))
                await self.store.persist(st)
            return WORK_OK
        if record.phase == "assigned":  # it ran and ended before its running event was sent: both happened
            set_trusted(record, started_at=ev.started_at or ev.at)
            transition(record, event(phase="running", at=record.started_at, host=machine_id, attempt=record.attempt))
        await self.applier.finish(st, ev.phase, at=ev.at, exit_code=ev.exit_code, reason=ev.note, host=machine_id,
                                  output=ev.output_tail or None)
        return WORK_OK

    def _refuse(self, machine_id: str, ev: WorkEvent, st: SessionState | None) -> WorkReply:
        """The answer to a report on a session that is not this host's under that fencing token (see on_event)."""
        record = st.record if st is not None else None
        if (st is not None and st.record.final and st.record.host == machine_id and st.fence == ev.fence
                and st.record.phase == ev.phase):
            self.metrics["duplicate_events"] += 1  # its own report sent again (the answer was lost): done already
            return WORK_OK
        if record is not None and record.host not in (None, machine_id) and not any(
                e.host == machine_id for e in record.history):
            self.security.note("foreign_claims", machine_id, "host %s reported %s on session %s, which is assigned to "
                               "host %s (and never was to it): refused", machine_id, ev.phase, ev.session,
                               record.host)
        else:  # a former holder's late word (it lost the session to a re-queue), or a session already ended
            self.metrics["stale_events"] += 1
        return WorkReply(ok=False, stale=True, message="this session is not yours under that fencing token")

    # ------------------------------------------------------------------------------------------ cancel
    async def cancel(self, st: SessionState) -> None:
        record = st.record
        if record.final:
            return
        if record.phase == "queued":
            self.where.pending.remove(record.id)
            await self.applier.finish(st, "cancelled", at=time.time(), reason="cancelled before it ran")
            return
        if self._gone(record.host or "", self.where.hosts.get(record.host or "")):
            await self.applier.finish(st, "cancelled", at=time.time(), reason="cancelled; its host was gone")
            return
        if st.cancel_at is None:
            st.cancel_at = time.monotonic()
        await self.applier.tell_stop(record.host or "", record.id, st.fence, "cancelled")

