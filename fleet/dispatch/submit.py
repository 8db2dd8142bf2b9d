"""The submit path of the dispatcher: new sessions stored durably, placed at once when a host has room.

Called by the dispatcher (fleet.dispatch.dispatcher.Dispatcher.submit / submit_many) for the session API's
`submit` and `submit_many` (fleet.dispatch.api). One path for one session and for a batch:

1. the project must belong to the tenant of the subject (the same refusal whether it is another tenant's project
   or nobody's: no oracle of other tenants' project names; another tenant's is logged as a security event);
2. an ID already stored (a client that lost its reply sends the same request again) answers with the session stored
   the first time; an ID of another tenant or project is refused as taken;
3. the tenant's open sessions are bounded (`fleet server --max-open-sessions`, MAX_OPEN_PER_TENANT by default:
   QueueFull past it), exactly, under concurrent submits: the check and a reservation of the batch's places happen
   in one step of the single writer's event loop, and the places stay reserved while the creates are in flight
   (until the stored sessions count as open, or a failed create gives its place back);
4. one scheduling pass (fleet.scheduler.schedule) for the whole batch, on the leader's snapshot: a session the
   scheduler places is stored already assigned; one it cannot place is stored queued with the scheduler's reason
   (its kind and pool: `wait_kind`, `wait_pool`). A session queues behind others of its own kind that wait, and
   behind a dispatch pass that is under way or due (a slot may have opened for one that waited longer);
5. every record is created in KV (the writes in flight together, at most WRITE_WINDOW at once), and the call
   returns only once JetStream acknowledged every one of them: durability is per session, the reply is per
   batch. Only then are the assignments published to their hosts (fleet.dispatch.applier).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from fleet.bus.messages import SessionRecord, SubmitRequest, new_session_id, trusted
from fleet.dispatch.applier import assign_in_memory, event
from fleet.dispatch.placement import group_key, note_reason
from fleet.dispatch.query import ALL_TENANTS
from fleet.dispatch.store import SessionState
from fleet.errors import Conflict, FleetError, InvalidRequest, NotFound, QueueFull, Refused, TransientError
from fleet.scheduler import Reason, group, schedule

if TYPE_CHECKING:
    from fleet.dispatch.dispatcher import Dispatcher

MAX_OPEN_PER_TENANT = 10_000  # sessions of one tenant not final yet; more are refused (QueueFull) until some end
WRITE_WINDOW = 256  # creates of one batch in flight at once (JetStream acknowledges each)
BEHIND = "a host has room: the next dispatch pass places it (sessions that waited longer first)"


class Submitter:
    def __init__(self, dispatcher: Dispatcher, max_open: int = MAX_OPEN_PER_TENANT) -> None:
        self.d = dispatcher
        self.max_open = max_open
        self._submitting: dict[str, asyncio.Future[SessionState]] = {}
        self._reserved: Counter[str] = Counter()  # places of creates in flight, per tenant (see the docstring, 3.)

    def full(self, tenant: str) -> QueueFull:
        """The refusal of a submit past the tenant's limit (counted)."""
        self.d.metrics["queue_full"] += 1
        return QueueFull(f"tenant {tenant} has {self.max_open - self.room(tenant)} sessions queued, running or being "
                         f"stored already (at most {self.max_open})", hint="submit again when some have ended")

    def is_new(self, sid: str | None) -> bool:
        """A session ID not stored and not being stored (one that would take a place)."""
        return sid is None or (self.d.store.known(sid) is None and sid not in self._submitting)

    def room(self, tenant: str) -> int:
        """How many more sessions `tenant` may submit now (its open ones and those being stored count)."""
        return max(0, self.max_open - self.d.store.open_by_tenant[tenant] - self._reserved[tenant])

    def project(self, tenant: str, project: str) -> dict[str, Any]:
        spec = self.d.config.routes.get(project)
        if spec is None and tenant == ALL_TENANTS:
            raise NotFound(f"no project {project} in the applied config", hint="`fleet route list` lists them")
        if tenant != ALL_TENANTS and (spec is None or spec.get("tenant") != tenant):
            if spec is not None:
                self.d.security.note("foreign_submits", tenant, "a submitter of tenant %s asked for project %s of "
                                     "tenant %s: refused", tenant, project, spec.get("tenant"))
            raise Refused(f"project {project} does not belong to tenant {tenant}")
        assert spec is not None
        return spec

    async def submit(self, tenant: str, req: SubmitRequest) -> SessionState:
        return (await self.submit_many(tenant, [req]))[0]

    async def submit_many(self, tenant: str, reqs: list[SubmitRequest]) -> list[SessionState]:
        """Store new sessions (see the module docstring); their states in the order of `reqs`."""
        specs = {p: self.project(tenant, p) for p in {r.project for r in reqs}}
        ids = [r.id or new_session_id() for r in reqs]
        if len(set(ids)) < len(ids):
            raise InvalidRequest("a batch names one session ID twice", hint="let the client choose the IDs")
        out: list[SessionState | None] = [None] * len(reqs)
        new: list[int] = []
        for i, sid in enumerate(ids):
            known = self.d.store.known(sid)
            if known is None and sid in self._submitting:
                known = await asyncio.shield(self._submitting[sid])
            if known is not None:
                out[i] = self._repeated(known, specs[reqs[i].project], reqs[i])
            else:
                new.append(i)
        if new:
            loop = asyncio.get_running_loop()
            futs = {ids[i]: loop.create_future() for i in new}
            self._submitting.update(futs)
            try:
                stored = await self._store_new([(ids[i], specs[reqs[i].project], reqs[i]) for i in new])
            except BaseException as exc:
                for fut in futs.values():
                    if not fut.done():
                        fut.set_exception(exc)
                        fut.exception()  # retrieved: nobody else may be waiting
                raise
            finally:
                for sid in futs:
                    del self._submitting[sid]
            for i, st in zip(new, stored, strict=True):
                futs[ids[i]].set_result(st)
                in_memory = self.d.store.known(ids[i]) is st
                out[i] = st if in_memory else self._repeated(st, specs[reqs[i].project], reqs[i])  # ended long ago
        return [st for st in out if st is not None]

    def _repeated(self, known: SessionState, spec: dict[str, Any], req: SubmitRequest) -> SessionState:
        """A submit of an ID already stored: the same session sent again (its reply was lost), or someone else's."""
        if known.record.tenant != spec["tenant"] or known.record.project != req.project:
            raise Refused(f"session ID {known.record.id} is taken", hint="let the client choose the ID")
        self.d.metrics["submit_repeated"] += 1
        return known

    async def _store_new(self, items: list[tuple[str, dict[str, Any], SubmitRequest]]) -> list[SessionState]:
        need = Counter(spec["tenant"] for _, spec, _ in items)
        for tenant, n in need.items():
            if n > self.room(tenant):
                raise self.full(tenant)
        self._reserved.update(need)  # no await since the check: no other submit came between
        try:
            return await self._store_checked(items)
        finally:
            self._reserved.subtract(need)  # the stored ones count as open now; the failed ones free their place

    async def _store_checked(self, items: list[tuple[str, dict[str, Any], SubmitRequest]]) -> list[SessionState]:
        d, store, where = self.d, self.d.store, self.d.where
        now = time.time()
        records = [trusted(SessionRecord,  # from a validated request: no second validation
            id=sid, tenant=spec["tenant"], project=req.project, command=req.command, env=req.env,
            labels=sorted(set(req.labels)), model=req.model, priority=req.priority, timeout_s=req.timeout_s,
            max_attempts=req.max_attempts, submitted_at=now, history=[event(phase="queued", at=now)],
        ) for sid, spec, req in items]
        by_id = {r.id: r for r in records}
        groups = group((r.id, r.project, r.labels, r.model) for r in records)
        behind = len(where.pending) > 0 and d.pass_due()
        plan = schedule(where.snapshot, [g for g in groups if not behind and
                                         (g.project, g.labels, g.model) not in where.pending.groups], now)
        reasons: dict[str, Reason] = {}
        for u in plan.unplaced:
            for sid in next(g for g in groups if (g.project, g.labels, g.model) == (u.project, u.labels, u.model)
                            ).sessions:
                reasons[sid] = u.reason
        placed = {a.session: a for a in plan.assignments}
        for r in records:
            a = placed.get(r.id)
            if a is not None:
                assign_in_memory(r, a.pool, a.host, now)
                where.reserve(where.hosts[a.host], r.id)
            else:
                reason = reasons.get(r.id)
                r.reason = reason.message if reason is not None else BEHIND
        try:
            results = await self._create_all(records)
        except BaseException:  # cancelled (the connection went, the server stops): none of them is ours to place
            for r in records:
                if r.id in placed:
                    where.release(r.host, r.id)
            raise
        out: list[SessionState] = []
        failed: BaseException | None = None
        for r, res in zip(records, results, strict=True):
            if isinstance(res, BaseException):
                if r.id in placed:
                    where.release(r.host, r.id)
                if isinstance(res, Conflict):  # stored already, and not in memory
                    old = await self._ended_long_ago(r.id)
                    if old is not None:
                        out.append(old)
                        continue
                    # not a session that ended: we are behind (another replica wrote it); read everything again
                    d.want_resync()
                    res = TransientError(f"session {r.id} is being stored; send it again", hint="retry in a moment")
                failed = failed or res
                continue
            st = SessionState(r, res)
            store.add(st)
            d.metrics["submitted"] += 1
            out.append(st)
        for st in out:
            if by_id.get(st.record.id) is not st.record:
                continue  # one that ended long ago
            if st.record.id in placed:
                st.fence, st.assigned_at = st.revision, time.monotonic()
                st.arm()
            else:
                where.enqueue(st.record)
                reason = reasons.get(st.record.id)
                if reason is not None:
                    note_reason(where, group_key(st.record), reason)
                d._want_pass()
        for st in out:
            if st.record.id in placed and by_id.get(st.record.id) is st.record:
                d.applier.send_assignment(st)  # sent at the end of this turn, with the others of this moment
        if failed is not None:
            raise failed  # the stored ones are in memory: the same batch sent again finds them
        return out

    async def _create_all(self, records: list[SessionRecord]) -> list[int | FleetError]:
        store = self.d.store
        if len(records) == 1:
            try:
                return [await store.create(records[0])]
            except FleetError as exc:
                return [exc]
        return await store.create_many(records, WRITE_WINDOW)

    async def _ended_long_ago(self, sid: str) -> SessionState | None:
        """Session `sid` as stored, if it is final: one that ended before the sessions kept in memory (a client's
        chosen ID sent again, by its own tenant or another). Read from its own key: a submitter who knows many old
        IDs must not make the leader read the whole bucket again per request."""
        try:
            stored = await self.d.store.read(sid)
        except FleetError:
            return None
        return stored if stored is not None and stored.record.final else None
