"""The dispatcher's parts without NATS: the reconciliation's decisions (fleet.dispatch.reconcile, pure,
table-driven), the query side (fleet.dispatch.query: lookups, tenants, output buffers) and the plan applier
(fleet.dispatch.applier) over the session store (fleet.dispatch.store) with an in-memory KV in place of our own
fleet.bus.kv.Store seam (compare-and-set by revision, as JetStream's) and a bus that records what it publishes.
The store against a real nats-server: tests/integration/test_session_store.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.bus.messages import Assignment as AssignMsg
from fleet.bus.messages import Assignments, CancelOrder, OutputChunk, SessionRecord, decode
from fleet.dispatch import reconcile as rc
from fleet.dispatch.applier import PlanApplier
from fleet.dispatch.placement import Placements
from fleet.dispatch.query import ALL_TENANTS, SessionQueries
from fleet.dispatch.store import SessionState, SessionStore
from fleet.errors import Conflict, InvalidRequest, NotFound, TransientError
from fleet.scheduler import Assignment, DispatchPlan, Failure, HostState, Requeue, Resend, Stop
from fleet.scheduler.phases import allowed


class MemoryKV:
    """fleet.bus.kv.Store's write and read calls over a dict, with one revision counter for the bucket."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, int]] = {}
        self.seq = 0
        self.writes: list[str] = []

    async def create(self, key: str, value: bytes) -> int:
        if key in self.values:
            raise Conflict(f"{key} exists")
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int, *, ttl: float | None = None) -> int:
        await asyncio.sleep(0)  # a write takes a turn of the loop, as a real one does
        if self.values.get(key, (b"", 0))[1] != last:
            raise Conflict(f"{key} is not at revision {last}")
        return self._put(key, value)

    def _put(self, key: str, value: bytes) -> int:
        self.seq += 1
        self.values[key] = (value, self.seq)
        self.writes.append(key)
        return self.seq

    async def get(self, key: str) -> Any:
        if key not in self.values:
            return None
        value, rev = self.values[key]
        return SimpleNamespace(value=value, revision=rev)

    async def snapshot(self) -> list[Any]:
        return [SimpleNamespace(value=v, revision=r) for v, r in self.values.values()]

    def record(self, key: str) -> SessionRecord:
        return SessionRecord.model_validate_json(self.values[key][0])


class RecordingBus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append((subject, data))


def record(sid: str, *, tenant: str = "fin", phase: str = "queued", host: str | None = None, **kw: Any) -> SessionRecord:
    now = time.time()
    history = [{"phase": "queued", "at": now}]
    if phase in ("assigned", "running"):
        history.append({"phase": "assigned", "at": now, "host": host})
    if phase == "running":
        history.append({"phase": "running", "at": now, "host": host})
    return SessionRecord.model_validate({"id": sid, "tenant": tenant, "project": "app", "command": ["true"],
                                         "phase": phase, "host": host, "submitted_at": now, "history": history,
                                         **kw})


SID = [f"{i:020x}" for i in range(1, 10)]


class Rig:
    """A store, placements with hosts a (2 slots) and b (1 slot), an applier and the query side."""

    def __init__(self, *, lease: bool = True) -> None:
        self.kv = MemoryKV()
        self.bus = RecordingBus()
        self.metrics: Counter[str] = Counter()
        self.lease = lease
        self.conflicts: list[str] = []
        self.passes = 0
        self.store = SessionStore(self.kv, check_lease=self.check, on_conflict=lambda st: self.conflicts.append(
            st.record.id), metrics=self.metrics)
        self.where = Placements(on_release=self.want)
        for mid, slots in (("a", 2), ("b", 1)):
            host = SimpleNamespace(machine_id=mid, tenant="fin", pools=("main",), labels=(), models=(),
                                   status="active", max_sessions=slots, hostname=f"host-{mid}")
            self.where.put_host(host)
        self.applier = PlanApplier(self.bus, self.store, lambda: self.where, self.metrics, self.check, self.want)
        self.query = SessionQueries(self.store, lambda: True, self.metrics)

    def check(self) -> None:
        if not self.lease:
            raise TransientError("no lease")

    def want(self) -> None:
        self.passes += 1

    async def add(self, rec: SessionRecord) -> SessionState:
        st = SessionState(rec, await self.kv.create(rec.id, rec.encode()))
        self.store.add(st)
        if rec.phase == "queued":
            self.where.enqueue(rec)
        else:
            st.fence = st.revision
            self.where.reserve(self.where.hosts[rec.host or ""], rec.id)
        return st

    def sent(self, kind: type) -> list[Any]:
        """The assignments (each Assignments message unpacked) or cancel orders sent, in order."""
        if kind is AssignMsg:
            return [a for s, d in self.bus.sent if s.endswith(".assign")
                    for a in decode(Assignments, d, max_bytes=len(d)).items]
        return [kind.model_validate_json(d) for s, d in self.bus.sent if s.endswith(".cancel")]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------- the applier
def test_an_assignment_is_written_by_cas_then_sent_with_the_revision_it_landed_at_as_its_fence() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0]))
        base = st.revision
        await rig.applier.apply(DispatchPlan(assignments=(Assignment(SID[0], "app", "a", "main", "preferred",
                                                                     revision=base),)))
        stored = rig.kv.record(SID[0])
        assert (stored.phase, stored.host, stored.pool) == ("assigned", "a", "main")
        # the token is the revision of the assigning write itself (so the record cannot hold it: a take-over reads
        # it as the record's revision, fleet.dispatch.dispatcher.take_over)
        assert st.revision > base and st.fence == st.revision == rig.kv.values[SID[0]][1] and stored.fence is None
        [msg] = rig.sent(AssignMsg)
        assert (msg.session, msg.fence) == (SID[0], st.revision)
        assert SID[0] in rig.where.hosts["a"].sessions and SID[0] not in rig.where.pending
        assert [e.phase for e in stored.history] == ["queued", "assigned"]
    run(go())


def test_an_assignment_whose_write_loses_the_race_is_not_sent_and_the_session_waits_again() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0]))
        await rig.kv.update(SID[0], st.record.encode(), last=st.revision)  # someone else wrote it
        await rig.applier.apply(DispatchPlan(assignments=(Assignment(SID[0], "app", "a", "main", "preferred"),)))
        assert rig.sent(AssignMsg) == [] and rig.conflicts == [SID[0]]
        assert st.record.phase == "queued" and SID[0] in rig.where.pending
        assert rig.where.hosts["a"].sessions == set()  # the slot is given back
    run(go())


def test_a_plan_made_on_an_older_revision_assigns_nothing() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0]))
        await rig.applier.apply(DispatchPlan(assignments=(Assignment(SID[0], "app", "a", "main", "preferred",
                                                                     revision=st.revision - 1),)))
        assert rig.sent(AssignMsg) == [] and rig.kv.writes == [SID[0]] and SID[0] in rig.where.pending
    run(go())


def test_without_the_lease_the_applier_writes_and_sends_nothing() -> None:
    async def go() -> None:
        rig = Rig()
        await rig.add(record(SID[0]))
        rig.lease = False
        with pytest.raises(TransientError):
            await rig.applier.apply(DispatchPlan(assignments=(Assignment(SID[0], "app", "a", "main", "preferred"),)))
        assert rig.kv.writes == [SID[0]] and rig.bus.sent == [] and SID[0] in rig.where.pending
    run(go())


def test_a_requeue_loses_the_fence_and_queues_again_until_out_of_attempts() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0], phase="running", host="a", max_attempts=2))
        await rig.applier.apply(DispatchPlan(requeues=(Requeue(SID[0], "host a is offline"),)))
        stored = rig.kv.record(SID[0])
        assert (stored.phase, stored.attempt, stored.host, stored.fence) == ("queued", 2, None, None)
        assert st.fence is None and SID[0] in rig.where.pending and rig.where.hosts["a"].sessions == set()
        st.record.phase, st.record.host = "running", "a"  # assigned and running again, then lost again
        st.record.history += [st.record.history[0].model_copy(update={"phase": p}) for p in ("assigned", "running")]
        await rig.applier.requeue(st, "host a is offline")
        final = rig.kv.record(SID[0])
        assert final.phase == "failed" and "no attempts left" in (final.reason or "")
        assert SID[0] in rig.store.finished and SID[0] not in rig.store.sessions
        phases = [e.phase for e in final.history]
        assert all(allowed(a, b) for a, b in zip(phases, phases[1:], strict=False))  # every step is in the phase table
    run(go())


def test_a_lost_session_with_a_cancel_pending_ends_cancelled_instead_of_running_again() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0], phase="running", host="a"))
        st.cancel_at = time.monotonic()
        await rig.applier.requeue(st, "host a is offline")
        assert rig.kv.record(SID[0]).phase == "cancelled" and SID[0] not in rig.where.pending
    run(go())


def test_failures_end_the_session_and_stops_are_sent_under_their_fence() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0], phase="running", host="a"))
        fence = st.fence
        waiter = asyncio.ensure_future(rig.query.wait(st, 30))
        await asyncio.sleep(0)
        await rig.applier.apply(DispatchPlan(failures=(Failure(SID[0], "timed_out", "past its timeout"),),
                                             stops=(Stop("a", SID[0], fence, "no longer assigned to this host"),)))
        await asyncio.wait_for(waiter, 5)  # its waiter was answered
        assert rig.kv.record(SID[0]).phase == "timed_out" and rig.metrics["enforced_timed_out"] == 1
        [order] = [CancelOrder.model_validate_json(d) for s, d in rig.bus.sent if s.endswith(".cancel")]
        assert (order.session, order.fence) == (SID[0], fence)
        assert rig.where.hosts["a"].sessions == set()
    run(go())


def test_a_resend_sends_only_an_assignment_not_yet_running() -> None:
    async def go() -> None:
        rig = Rig()
        await rig.add(record(SID[0], phase="assigned", host="a"))
        await rig.add(record(SID[1], phase="running", host="a"))
        await rig.applier.apply(DispatchPlan(resends=(Resend(SID[0]), Resend(SID[1]))))
        assert [m.session for m in rig.sent(AssignMsg)] == [SID[0]]
    run(go())


def test_the_assignments_of_one_moment_go_out_as_one_message_per_host() -> None:
    """Three sessions placed by one plan on hosts a (two) and b (one): two messages, not three, each on its own
    host's subject, with every session under its own fence; assignments queued by single submits in the same
    turn of the event loop are sent together once the turn ends."""
    async def go() -> None:
        rig = Rig()
        states = [await rig.add(record(sid)) for sid in SID[:3]]
        plan = DispatchPlan(assignments=tuple(Assignment(st.record.id, "app", host, "main", "preferred",
                                                         revision=st.revision)
                                              for st, host in zip(states, ("a", "b", "a"), strict=True)))
        await rig.applier.apply(plan)
        subjects_sent = [s for s, _ in rig.bus.sent]
        assert len(subjects_sent) == 2 and sorted(s.split(".")[-2] for s in subjects_sent) == ["a", "b"]
        got = {m.session: m.fence for m in rig.sent(AssignMsg)}
        assert got == {st.record.id: st.revision for st in states} and all(st.fence == st.revision for st in states)

        rig.bus.sent.clear()
        extra = [await rig.add(record(sid, phase="assigned", host="a")) for sid in SID[3:5]]
        for st in extra:  # what two submits do, one after the other, in the same turn
            rig.applier.send_assignment(st)
        assert rig.bus.sent == []  # not yet: the turn has not ended
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        [(subject, _)] = rig.bus.sent
        assert subject.endswith("a.assign") and [m.session for m in rig.sent(AssignMsg)] == SID[3:5]
    run(go())


def test_assignments_are_cut_into_messages_by_count_and_by_bytes() -> None:
    from fleet.bus.messages import ASSIGNMENTS_BYTES, MAX_ASSIGNMENTS, batched

    def _batches(items: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
        return batched(items, lambda item: len(item[1]), most=MAX_ASSIGNMENTS, max_bytes=ASSIGNMENTS_BYTES)

    small = [(f"s{i}", b"x" * 100) for i in range(MAX_ASSIGNMENTS + 1)]
    assert [len(b) for b in _batches(small)] == [MAX_ASSIGNMENTS, 1]
    big = [(f"s{i}", b"x" * (ASSIGNMENTS_BYTES // 3)) for i in range(4)]
    cut = _batches(big)
    assert [len(b) for b in cut] == [2, 2] and all(sum(len(d) + 1 for _, d in b) <= ASSIGNMENTS_BYTES for b in cut)
    huge = [("alone", b"x" * (ASSIGNMENTS_BYTES + 5)), ("next", b"y")]
    assert [[sid for sid, _ in b] for b in _batches(huge)] == [["alone"], ["next"]]


# ---------------------------------------------------------------------------------------------- the store
def test_writes_of_one_session_fold_into_one_while_one_is_in_flight() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0]))
        rig.kv.writes.clear()

        async def change(reason: str) -> None:
            st.record.reason = reason
            await rig.store.persist(st)

        await asyncio.gather(*(change(f"r{i}") for i in range(10)))
        assert len(rig.kv.writes) == 2  # the first, then one for the nine asked for while it was in flight
        assert rig.kv.record(SID[0]).reason == "r9" and st.revision == rig.kv.seq
    run(go())


def test_load_keeps_a_newer_value_in_memory_and_carries_waiters_and_output() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0]))
        other = await rig.add(record(SID[1]))
        st.output += b"hello"
        st.revision += 100  # as if written by us after the list was taken
        states = await rig.store.load()
        assert states[SID[0]] is st
        assert states[SID[1]] is not other and states[SID[1]].output is other.output
        live, finished = rig.store.adopt(states)
        assert {s.record.id for s in live} == {SID[0], SID[1]} and finished == []
        assert rig.store.open_by_tenant["fin"] == 2
    run(go())


# ---------------------------------------------------------------------------------------------- the query side
def test_find_sees_only_the_tenant_s_own_sessions_by_id_or_unique_prefix() -> None:
    async def go() -> None:
        rig = Rig()
        await rig.add(record("ab" + "0" * 18))
        await rig.add(record("ab" + "1" * 18))
        await rig.add(record("cd" + "0" * 18, tenant="health"))
        assert rig.query.find("fin", "ab0").record.id == "ab" + "0" * 18
        with pytest.raises(InvalidRequest, match="matches 2 sessions"):
            rig.query.find("fin", "ab")
        assert rig.query.find("fin", "cd" + "0" * 18) is None  # another tenant's: not there
        assert rig.query.find(ALL_TENANTS, "cd").record.tenant == "health"
        with pytest.raises(InvalidRequest, match="malformed"):
            rig.query.find("fin", "../etc")
        with pytest.raises(NotFound):
            await rig.query.get("fin", "cd" + "0" * 18)
        assert [s.record.id for s in rig.query.listing("fin", None, None)] == ["ab" + "0" * 18, "ab" + "1" * 18]
    run(go())


def test_output_only_from_the_assigned_host_under_its_fence_gaps_marked_repeats_cut() -> None:
    async def go() -> None:
        rig = Rig()
        st = await rig.add(record(SID[0], phase="running", host="a"))
        f = st.fence
        rig.query.on_output("b", OutputChunk(session=SID[0], fence=f, offset=0, data="evil"))
        rig.query.on_output("a", OutputChunk(session=SID[0], fence=(f or 0) + 1, offset=0, data="stale"))
        rig.query.on_output("a", OutputChunk(session=SID[0], fence=f, offset=0, data="hello "))
        rig.query.on_output("a", OutputChunk(session=SID[0], fence=f, offset=3, data="lo world"))
        rig.query.on_output("a", OutputChunk(session=SID[0], fence=f, offset=20, data="!"))
        assert rig.metrics["stale_output"] == 2
        offset, text, end = await rig.query.logs(st, 0, 0)
        assert (offset, end) == (0, False)
        assert text == "hello world\n[… 9 bytes lost …]\n!"
    run(go())


# ---------------------------------------------------------------------------------------------- reconciliation
def _beat(*sessions: tuple[str, int | None], age: float = 0.0, now: float = 1000.0) -> Any:
    return SimpleNamespace(live=True, beat=SimpleNamespace(at=now - age, sessions=[
        SimpleNamespace(session_id=s, fence=f) for s, f in sessions]))


def _st(sid: str, phase: str, host: str = "a", fence: int = 7, **kw: Any) -> Any:
    return SimpleNamespace(record=SimpleNamespace(id=sid, phase=phase, host=host, timeout_s=kw.pop("timeout", None)),
                           fence=fence, missing_since=kw.pop("missing_since", None), assigned_at=kw.pop("at", 1000.0),
                           sends=kw.pop("sends", 1), cancel_at=kw.pop("cancel_at", None),
                           deadline=kw.pop("deadline", None))


def _hosts(*sessions: str) -> dict[str, HostState]:
    return {"a": HostState("a", "fin", ("main",), frozenset(), frozenset(), "active", 4, sessions=set(sessions))}


NOW = 1000.0
# (name, host a's sessions, the sessions, a's heartbeat, -> (failures, stops, requeues, resends) as session IDs)
RECONCILE_CASES = [
    ("all as given", ["s1"], [_st("s1", "running")], _beat(("s1", 7)), ([], [], [], [])),
    ("a session it runs without an assignment: stop", [], [], _beat(("x", 3)), ([], ["x"], [], [])),
    ("another fencing token: stop", ["s1"], [_st("s1", "running")], _beat(("s1", 6)), ([], ["s1"], [], [])),
    ("a running session missing for the first time: noted, nothing yet", ["s1"], [_st("s1", "running")], _beat(),
     ([], [], [], [])),
    ("missing longer than MISSING_S: requeued", ["s1"], [_st("s1", "running", missing_since=NOW - rc.MISSING_S - 1)],
     _beat(), ([], [], ["s1"], [])),
    ("missing but the heartbeat is old: nothing", ["s1"], [_st("s1", "running", missing_since=NOW - 10)],
     _beat(age=rc.MISSING_S + 1), ([], [], [], [])),
    ("assigned, not taken up: resent", ["s1"], [_st("s1", "assigned", at=NOW - rc.ASSIGN_RESEND_S - 1)], _beat(),
     ([], [], [], ["s1"])),
    ("assigned, not taken up, out of tries: requeued", ["s1"],
     [_st("s1", "assigned", at=NOW - rc.ASSIGN_RESEND_S - 1, sends=rc.ASSIGN_TRIES)], _beat(), ([], [], ["s1"], [])),
    ("a cancel not confirmed in time: cancelled by the server, host told", ["s1"],
     [_st("s1", "running", cancel_at=NOW - rc.HOST_GRACE_S - 1)], _beat(("s1", 7)), (["s1"], ["s1"], [], [])),
    ("past its deadline: timed out by the server, not also requeued", ["s1"],
     [_st("s1", "running", deadline=NOW - 1, timeout=5, missing_since=NOW - 100)], _beat(), (["s1"], ["s1"], [], [])),
]


@pytest.mark.parametrize(("name", "given", "sessions", "beat", "expected"), RECONCILE_CASES,
                         ids=[c[0] for c in RECONCILE_CASES])
def test_reconcile(name: str, given: list[str], sessions: list[Any], beat: Any, expected: tuple) -> None:
    failures, stops, requeues, resends = rc.reconcile(_hosts(*given), {s.record.id: s for s in sessions},
                                                      {"a": beat}, NOW)
    assert ([f.session for f in failures], [s.session for s in stops], [r.session for r in requeues],
            [r.session for r in resends]) == expected
    if name.startswith("a running session missing for the first time"):
        assert sessions[0].missing_since == NOW
