"""The plan applier: carries a DispatchPlan out. Checks the lease, writes, then publishes.

Called by the dispatcher (fleet.dispatch.dispatcher) with the plans of its passes (assignments from
fleet.scheduler.schedule; failures, stops, re-queues and resends from fleet.dispatch.reconcile), and for the single
steps a request makes (a host's completion, a cancel, a lost host). `apply(plan)` does exactly what the plan says:

- failures: the server ends the session itself (`finish`), then orders its host to stop it;
- stops: an order to a host (fleet.v1.host.<id>.cancel) to stop a session it should not run;
- re-queues (`requeue`): the session is lost; queued again with attempt + 1, or, out of attempts, failed, or, with a
  cancel pending, cancelled;
- resends: an assignment sent to its host again;
- assignments: each session's slot is reserved at once (before anything awaits, so that a submit meanwhile sees
  it), then every assignment is written by compare-and-set on the revision the plan was made on, the writes in
  flight together (the session store folds writes of one session), and only a write that landed is published to
  its host, with the revision it landed at as the fencing token. A write that failed gives the slot back and
  queues the session again.

Every write goes through the session store (fleet.dispatch.store), which checks the lease before it writes; every
phase a session goes through is checked against the phase table (fleet.scheduler.phases) by `transition`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    ASSIGNMENTS_BYTES,
    MAX_ASSIGNMENTS,
    MAX_HISTORY,
    MAX_OUTPUT_TAIL,
    Assignment,
    CancelOrder,
    PhaseEvent,
    SessionRecord,
    batched,
    items_payload,
    set_trusted,
    trusted,
)
from fleet.dispatch.placement import Placements
from fleet.dispatch.query import wake
from fleet.dispatch.store import SessionState, SessionStore
from fleet.errors import FleetError
from fleet.scheduler import Assignment as Placed
from fleet.scheduler import DispatchPlan
from fleet.scheduler.phases import allowed

log = logging.getLogger(__name__)


def event(**kw: Any) -> PhaseEvent:
    """A history event from values the dispatcher itself holds (already validated): built without validation."""
    return trusted(PhaseEvent, **kw)


def transition(record: SessionRecord, ev: PhaseEvent) -> None:
    """Append a phase event; a step that is not in the phase table (fleet.scheduler.phases) is a bug, logged."""
    before = record.history[-1].phase if record.history else None
    if before is not None and not allowed(before, ev.phase):
        log.error("session %s: %s -> %s is not a phase transition (fleet.scheduler.phases); recorded anyway",
                  record.id, before, ev.phase)
    record.history.append(ev)
    if len(record.history) > MAX_HISTORY:
        del record.history[1:len(record.history) - MAX_HISTORY + 1]


def assign_in_memory(record: SessionRecord, pool: str, host: str, now: float) -> None:
    set_trusted(record, phase="assigned", host=host, pool=pool, fence=None, reason=None)
    transition(record, event(phase="assigned", at=now, host=host, attempt=record.attempt))


class PlanApplier:
    def __init__(self, bus: Bus, store: SessionStore, placements: Callable[[], Placements], metrics: Counter[str],
                 check_lease: Callable[[], None], want_pass: Callable[[], None]) -> None:
        self.bus = bus
        self.store = store
        self.placements = placements  # the dispatcher's current one (a take-over replaces it)
        self.metrics = metrics
        self.check_lease = check_lease
        self.want_pass = want_pass
        self._outbox: dict[str, list[tuple[str, bytes]]] = {}  # host -> (session, encoded Assignment), in order
        self._flushing = False
        self._tasks: set[asyncio.Task] = set()

    async def apply(self, plan: DispatchPlan) -> None:
        self.check_lease()
        sessions = self.store.sessions
        writes = self._reserve(plan.assignments, plan.at or time.time())  # first: nothing awaited yet
        if writes:
            await asyncio.gather(*(self._write_assignment(st, a, before) for st, a, before in writes))
        for f in plan.failures:
            st = sessions.get(f.session)
            if st is None:
                continue
            self.metrics[f"enforced_{f.phase}"] += 1
            log.warning("session %s on host %s: %s; ended by the server", f.session, st.record.host, f.reason)
            await self.finish(st, f.phase, at=time.time(), reason=f.reason)
        for s in plan.stops:
            await self.tell_stop(s.host, s.session, s.fence, s.reason)
        for r in plan.requeues:
            st = sessions.get(r.session)
            if st is not None:
                await self.requeue(st, r.why)
        for rs in plan.resends:
            st = sessions.get(rs.session)
            if st is not None and st.record.phase == "assigned":
                st.assigned_at = time.monotonic()
                self.send_assignment(st)
        await self.flush()  # what this plan assigned, now (and whatever else waited for this turn to end)

    def _reserve(self, assignments: tuple[Placed, ...], now: float) -> list[tuple[SessionState, Placed, SessionRecord]]:
        """Take every assignment's slot and make it assigned in memory (nothing awaits: a submit meanwhile sees the
        slots taken); what is left to write."""
        where = self.placements()
        placed: list[tuple[SessionState, Placed, SessionRecord]] = []
        for a in assignments:  # reserve every slot before anything awaits
            st = self.store.sessions.get(a.session)
            host = where.hosts.get(a.host)
            if st is None or host is None or (a.revision is not None and a.revision != st.revision):
                continue  # ended, or written, since the plan was made: the next pass decides again
            where.pending.remove(a.session)
            where.reserve(host, a.session)
            before = st.record.model_copy(update={"history": list(st.record.history)})  # not the list it appends to
            assign_in_memory(st.record, a.pool, a.host, now)
            placed.append((st, a, before))
        return placed

    async def _write_assignment(self, st: SessionState, a: Placed, before: SessionRecord) -> None:
        try:
            await self.store.persist(st)
        except FleetError as exc:
            log.warning("could not assign session %s: %s", st.record.id, exc)
            st.record = before
            where = self.placements()
            where.release(a.host, st.record.id)
            where.enqueue(st.record)
            return
        st.fence, st.assigned_at, st.sends = st.revision, time.monotonic(), 0
        st.arm()
        self.send_assignment(st)

    def send_assignment(self, st: SessionState) -> None:
        """Queue the session's assignment for its host. What one turn of the event loop queued goes out as one
        Assignments message per host (`flush`, called soon; a plan's `apply` calls it at its end): under load many
        sessions are assigned in the same turn (their writes are acknowledged together), and one message per host
        instead of one per session is that much less for the server, nats-server and the host to handle."""
        record = st.record
        assert record.host is not None and st.fence is not None
        st.sends += 1
        msg = trusted(Assignment, session=record.id, fence=st.fence, attempt=record.attempt,
                      tenant=record.tenant, project=record.project, command=record.command,
                      env=record.env, timeout_s=record.timeout_s)
        self._outbox.setdefault(record.host, []).append((record.id, msg.model_dump_json().encode()))
        if not self._flushing:
            self._flushing = True
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Publish every queued assignment: per host, in as few Assignments messages as MAX_ASSIGNMENTS and
        ASSIGNMENTS_BYTES allow. One that could not be sent is sent again by the reconciliation."""
        self._flushing = False
        outbox, self._outbox = self._outbox, {}
        for host, items in outbox.items():
            for batch in batched(items, lambda item: len(item[1]), most=MAX_ASSIGNMENTS, max_bytes=ASSIGNMENTS_BYTES):
                payload = items_payload(data for _, data in batch)
                try:
                    await self.bus.publish(subjects.host_assign(host), payload)
                except FleetError as exc:  # the reconciliation sends them again
                    log.info("could not send %d session(s) to %s (%s): %s", len(batch), host,
                             ", ".join(sid for sid, _ in batch[:3]), exc)

    async def tell_stop(self, machine_id: str, session_id: str, fence: int | None, reason: str) -> None:
        with contextlib.suppress(FleetError):
            await self.bus.publish(subjects.host_cancel(machine_id),
                                   CancelOrder(session=session_id, fence=fence, reason=reason).encode())

    async def finish(self, st: SessionState, phase: str, *, at: float, exit_code: int | None = None,
                     reason: str | None = None, host: str | None = None, output: str | None = None) -> None:
        """The session ends in final phase `phase`: written, then out of the live set, its slot given back and
        its waiters answered."""
        record = st.record
        was_host = record.host
        ended: dict[str, Any] = {"phase": phase, "finished_at": at, "exit_code": exit_code, "reason": reason}
        if st.fence is not None:
            ended["fence"] = st.fence
        if output is not None:
            ended["output_tail"] = output
        elif st.output:
            ended["output_tail"] = st.output[-MAX_OUTPUT_TAIL:].decode("utf-8", "replace")
        set_trusted(record, **ended)
        transition(record, event(phase=phase, at=at, host=host or was_host, attempt=record.attempt, note=reason))
        await self.store.persist(st)
        self.store.retire(st)
        where = self.placements()
        where.pending.remove(record.id)
        where.release(was_host, record.id)
        self.metrics[f"finished_{phase}"] += 1
        wake(st)

    async def requeue(self, st: SessionState, why: str) -> None:
        """The session's host is gone: it is lost; queued again (attempt + 1) or, out of attempts, failed."""
        record = st.record
        if record.final or record.id not in self.store.sessions:
            return
        now = time.time()
        was_host = record.host
        transition(record, event(phase="lost", at=now, host=was_host, attempt=record.attempt, note=why))
        where = self.placements()
        where.release(was_host, record.id)
        st.fence, st.deadline = None, None
        self.metrics["lost"] += 1
        if st.cancel_at is not None:  # cancelled, and its host never confirmed: it ends here, it does not run again
            await self.finish(st, "cancelled", at=now,
                              reason=f"cancelled; its host was lost before it confirmed ({why})")
            return
        log.info("session %s lost (%s), attempt %d of %d", record.id, why, record.attempt, record.max_attempts)
        if record.attempt >= record.max_attempts:
            await self.finish(st, "failed", at=now, reason=f"lost: {why}; no attempts left ({record.max_attempts})")
            return
        record.attempt += 1
        record.phase, record.host, record.pool, record.fence, record.reason = "queued", None, None, None, why
        record.started_at = None
        transition(record, event(phase="queued", at=now, attempt=record.attempt))
        await self.store.persist(st)
        self.placements().enqueue(record)
        self.want_pass()

