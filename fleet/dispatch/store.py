"""The session store: the leader's sessions in memory over KV bucket fleet-v1-sessions, and its one writer.

Used by the dispatcher (fleet.dispatch.dispatcher), its plan applier (fleet.dispatch.applier) and its query side
(fleet.dispatch.query). Two halves:

- the informer half: `load()` lists the whole bucket (fleet.bus.kv.Store.snapshot: every current value, read to
  the stream's last sequence) and merges it with what is in memory (a session written by us after the list was
  taken keeps our newer value; waiters and output buffers carry over), and `adopt()` makes that the live set. The
  leader is the bucket's only writer, so between two lists the store's own writes are the whole stream; a write by
  anyone else shows up as a compare-and-set conflict, and the store reports it (`on_conflict`) so that the
  dispatcher lists the bucket again instead of guessing.
- the writer half: `create` (a new session) and `persist` (a session's current value by compare-and-set on its
  revision), pipelined (fleet.bus.kvpipe: many writes in flight, each returning once JetStream acknowledged it). Every write is fenced twice: by the lease (`check_lease` raises unless this replica still holds it by
  its own clock) and by the session's revision; a live session's record carries its fencing token. Writes of one
  session never overlap: one asked for while another is in flight is folded into the next (write batching), and
  `persist` returns once a write that includes the state as of the call has landed. A final value carries a TTL
  (`retention`), so nats-server removes finished sessions; the store keeps the last KEEP_FINISHED in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.bus.kv import Store
from fleet.bus.kvpipe import PipelinedWriter
from fleet.bus.messages import LIVE_PHASES, MAX_OUTPUT_TAIL, SessionRecord
from fleet.dispatch.reconcile import HOST_GRACE_S
from fleet.errors import Conflict, FleetError

KEEP_FINISHED = 2_000  # finished sessions kept in memory for the API (the bucket keeps more: `read` reads it)
SESSION_RETENTION_S = 7 * 86_400  # how long the bucket keeps a finished session (a TTL on its last value)


@dataclass(eq=False)
class SessionState:
    """One session as the leader holds it: its record and revision, its fencing token, the write in flight, and
    what the query side keeps of it (waiters, output)."""

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

    def arm(self) -> None:
        """It was just assigned: its timeout runs from now (the host's own clock starts a little later)."""
        timeout = self.record.timeout_s
        self.deadline = time.monotonic() + timeout + HOST_GRACE_S if timeout else None


def parse(value: bytes) -> SessionRecord | None:
    try:
        return SessionRecord.model_validate_json(value)
    except ValueError:
        return None


class SessionStore:
    def __init__(self, kv: Store, *, check_lease: Callable[[], None], on_conflict: Callable[[SessionState], None],
                 metrics: Counter[str], retention: float = SESSION_RETENTION_S) -> None:
        self.kv = kv
        # the writes: pipelined (fleet.bus.kvpipe) on a bucket of a live connection; else the store's own calls
        self.writer: Any = PipelinedWriter(kv) if getattr(kv, "bus", None) is not None else kv
        self.check_lease = check_lease
        self.on_conflict = on_conflict
        self.metrics = metrics
        self.retention = retention
        self.sessions: dict[str, SessionState] = {}  # not final
        self.finished: OrderedDict[str, SessionState] = OrderedDict()
        self.open_by_tenant: Counter[str] = Counter()  # sessions not final yet, per tenant

    # ------------------------------------------------------------------------------------------ informer
    async def load(self) -> dict[str, SessionState]:
        """Every stored session, merged with what is in memory (see the module docstring). Nothing after the one
        await changes: the caller puts the result in place before it awaits anything."""
        entries = await self.kv.snapshot()
        before = {**self.finished, **self.sessions}
        states: dict[str, SessionState] = {}
        for entry in entries:
            record = parse(entry.value)
            if record is None:
                self.metrics["session_record_skipped"] += 1
                continue
            states[record.id] = SessionState(record, entry.revision)
        for sid, old in before.items():
            st = states.get(sid)
            if st is None or old.revision > st.revision:  # written by us after the list was taken
                states[sid] = old
            else:  # keep who waits for it and what it printed
                st.waiters, st.log_waiters, st.output, st.output_start = (
                    old.waiters, old.log_waiters, old.output, old.output_start)
        return states

    def adopt(self, states: dict[str, SessionState]) -> tuple[list[SessionState], list[SessionState]]:
        """Make `states` the store's sessions; (those not final, those final: the newest KEEP_FINISHED are kept)."""
        self.sessions, self.finished, self.open_by_tenant = {}, OrderedDict(), Counter()
        live, finished = [], []
        for st in states.values():
            if st.record.final:
                finished.append(st)
            else:
                self.add(st)
                live.append(st)
        for st in sorted(finished, key=lambda s: s.record.finished_at or 0)[-KEEP_FINISHED:]:
            self.finished[st.record.id] = st
        return live, finished

    def add(self, st: SessionState) -> None:
        self.sessions[st.record.id] = st
        self.open_by_tenant[st.record.tenant] += 1

    def retire(self, st: SessionState) -> None:
        """A session became final: out of the live set, into the finished ones (its output cut to the tail)."""
        record = st.record
        if self.sessions.pop(record.id, None) is not None:
            self.open_by_tenant[record.tenant] -= 1
        if len(st.output) > MAX_OUTPUT_TAIL:  # what a finished session keeps of its output (`logs` reads it)
            drop = len(st.output) - MAX_OUTPUT_TAIL
            del st.output[:drop]
            st.output_start += drop
        self.finished[record.id] = st
        while len(self.finished) > KEEP_FINISHED:
            self.finished.popitem(last=False)

    def known(self, sid: str) -> SessionState | None:
        return self.sessions.get(sid) or self.finished.get(sid)

    async def read(self, sid: str) -> SessionState | None:
        """Session `sid` as stored (one key: never the whole bucket), or None."""
        entry = await self.kv.get(sid)
        if entry is None:
            return None
        record = parse(entry.value)
        return SessionState(record, entry.revision) if record is not None else None

    # ------------------------------------------------------------------------------------------ writer
    async def create(self, record: SessionRecord) -> int:
        """Store a new session; its revision (Conflict: the key exists)."""
        self.check_lease()
        return await self.writer.create(record.id, record.encode())

    async def create_many(self, records: list[SessionRecord], at_once: int) -> list[int | FleetError]:
        """Store new sessions, at most `at_once` writes in flight: each one's revision or its error, in order."""
        self.check_lease()
        items = [(r.id, r.encode()) for r in records]
        if hasattr(self.writer, "create_many"):
            return list(await self.writer.create_many(items, at_once=at_once))
        out: list[int | FleetError] = []
        for key, value in items:  # the store's own calls, one by one
            try:
                out.append(await self.writer.create(key, value))
            except FleetError as exc:
                out.append(exc)
        return out

    async def persist(self, st: SessionState) -> None:
        """Write the session's current state by compare-and-set on its revision (see the module docstring)."""
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
                    self.check_lease()
                    st.revision = await self.writer.update(st.record.id, st.record.encode(), last=st.revision,
                                                           ttl=self.retention if st.record.final else None)
                except FleetError as exc:
                    for fut in waiting:
                        if not fut.done():
                            fut.set_exception(exc)
                    if isinstance(exc, Conflict):
                        self.on_conflict(st)
                    raise
                for fut in waiting:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            st.writing = False
