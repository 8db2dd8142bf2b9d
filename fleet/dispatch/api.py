"""The session API (`fleet.v1.api.sessions.<tenant>.<verb>`) and the hosts' work subjects, as the leader serves them.

The tenant is a token of the subject, so NATS permissions scope a submitter to its tenant (fleet.bus.identities);
`_all` is the token of identities that see every tenant (admin; a viewer may list, show, wait and read logs).
Verbs: submit (SubmitRequest: the reply comes once the session is stored; with `wait_s`, once it ended or wait_s
passed), submit_many (SubmitManyRequest: up to MAX_SUBMIT_BATCH sessions; the reply, one brief view each, once
every one is stored), list (SessionListRequest), get, cancel, wait (SessionQuery), logs (LogsRequest, long-polled). Hosts
report on `fleet.v1.work.<machine_id>.events` (WorkEvents -> WorkReplies: what fleet agents send, the events of
one moment together), `.event` (one WorkEvent -> WorkReply) and `.output` (OutputChunk): the machine ID
is the subject's token, which only that host's identity may publish on. Subscribed only while this replica leads
(fleet.service.server wires it).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import pydantic_core

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    LIVE_PHASES,
    SUBMIT_MANY_BYTES,
    ApiReply,
    LogsRequest,
    OutputChunk,
    SessionListRequest,
    SessionQuery,
    SubmitBatchRequest,
    SubmitManyRequest,
    SubmitRequest,
    WorkEvent,
    WorkEvents,
    WorkReply,
    decode,
    items_payload,
    ok_reply,
    ok_reply_raw,
)
from fleet.dispatch.dispatcher import WORK_OK, Dispatcher
from fleet.dispatch.query import cursor, public
from fleet.dispatch.store import SessionState
from fleet.errors import FleetError, InvalidRequest, ProtocolError

log = logging.getLogger(__name__)

API_CONCURRENCY = 512
WAIT_CONCURRENCY = 4096  # waits and log polls hold a handler while they wait: cheap (a future each)
WORK_CONCURRENCY = 512
WAITS_PER_TENANT = 256  # waits and log polls one tenant may hold at once
LIST_BYTES = 512 * 1024  # a list reply stays well under NATS's 1 MB message limit
# a command and an environment of 64 KiB each, in JSON, with room to spare; below a submitter's NATS payload limit
# (fleet.bus.identities.CLIENT_PAYLOAD), so a request of a size between the two gets a `too_large` reply
SUBMIT_BYTES = 160 * 1024
BRIEF = ("id", "tenant", "phase", "host", "hostname", "pool", "reason", "wait_kind", "wait_pool", "submitted_at",
         "attempt", "route_labels", "route_model")


class SessionApi:
    def __init__(self, bus: Bus, dispatcher: Dispatcher) -> None:
        self.bus = bus
        self.dispatcher = dispatcher
        self._subs: list[Any] = []
        self.waiting: Counter[str] = Counter()  # requests held waiting, per tenant token

    async def start(self) -> None:
        bus, q = self.bus, subjects.SERVER_QUEUE
        api = f"{subjects.API_SESSIONS}.*"
        self._subs = [
            await bus.serve(f"{api}.submit", self.handle, queue=q, concurrency=WAIT_CONCURRENCY,
                            max_bytes=SUBMIT_BYTES),
            await bus.serve(f"{api}.submit_many", self.handle, queue=q, concurrency=API_CONCURRENCY,
                            max_bytes=SUBMIT_MANY_BYTES),
            await bus.serve(f"{api}.submit_batch", self.submit_batch, queue=q, concurrency=API_CONCURRENCY,
                            max_bytes=SUBMIT_MANY_BYTES),
            await bus.serve(f"{api}.list", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.get", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.cancel", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.wait", self.handle, queue=q, concurrency=WAIT_CONCURRENCY),
            await bus.serve(f"{api}.logs", self.handle, queue=q, concurrency=WAIT_CONCURRENCY),
            await bus.serve(f"{subjects.WORK_PREFIX}*.event", self.on_event, queue=q, concurrency=WORK_CONCURRENCY),
            await bus.serve(f"{subjects.WORK_PREFIX}*.events", self.on_events, queue=q, concurrency=WORK_CONCURRENCY),
            await bus.subscribe(f"{subjects.WORK_PREFIX}*.output", self.on_output, queue=q),
        ]
        await bus.flush()

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone: nothing to unsubscribe
                log.debug("unsubscribe failed", exc_info=True)

    # ------------------------------------------------------------------------------------------ API
    async def handle(self, msg: Any) -> bytes:
        parts = subjects.session_api_parts(msg.subject)
        if parts is None:
            raise InvalidRequest(f"no such session API subject {msg.subject[:80]}")
        tenant, verb = parts
        d = self.dispatcher
        if verb == "submit":
            req = decode(SubmitRequest, msg.data, max_bytes=SUBMIT_BYTES)
            st = await d.submit(tenant, req)
            if req.wait_s:
                await self._wait(tenant, st, req.wait_s)
            return self._reply(st)
        if verb == "submit_many":
            many = decode(SubmitManyRequest, msg.data, max_bytes=SUBMIT_MANY_BYTES)
            states = await d.submit_many(tenant, many.requests())
            return ApiReply(ok=True, data={"sessions": [self._brief(st) for st in states]}).encode()
        if verb == "list":
            lreq = decode(SessionListRequest, msg.data)
            window, total, start = d.query.page(tenant, lreq.project, lreq.phase, lreq.limit, lreq.after)
            items: list[dict[str, Any]] = []
            size = 0
            for st in window:  # oldest first, as many as one reply holds; `next` continues after the last
                item = self._summary(st)
                size += len(json.dumps(item)) + 1
                if size > LIST_BYTES and items:
                    break
                items.append(item)
            more = start + len(items) < total
            return ApiReply(ok=True, data={"sessions": items, "total": total, "truncated": len(items) < total,
                                           "next": cursor(window[len(items) - 1]) if items and more else None,
                                           }).encode()
        if verb == "logs":
            logreq = decode(LogsRequest, msg.data)
            st = await d.query.get(tenant, logreq.id)
            wait_s = logreq.wait_s if self.waiting[tenant] < WAITS_PER_TENANT else 0.0
            self.waiting[tenant] += 1
            try:
                offset, text, end = await d.query.logs(st, logreq.offset, wait_s)
            finally:
                self.waiting[tenant] -= 1
            return ApiReply(ok=True, data={"id": st.record.id, "offset": offset, "text": text, "end": end,
                                           "phase": st.record.phase, "exit_code": st.record.exit_code}).encode()
        query = decode(SessionQuery, msg.data)
        st = await d.query.get(tenant, query.id)
        if verb == "cancel":
            await d.cancel(st)
        elif verb == "wait":
            await self._wait(tenant, st, query.wait_s)
        return self._reply(st)

    async def submit_batch(self, msg: Any) -> bytes:
        """Independent submits sent together (SubmitBatchRequest): one store pass and one scheduling pass for all
        of them (Dispatcher.submit_many), each item answered as its own `submit` would be (a refused project, a
        tenant at its limit of open sessions: that item's error, the items before it are stored), those that wait
        once they ended; the answers of one moment in one
        SubmitBatchReply on the request's reply subject, the last one returned (Bus.serve sends it)."""
        parts = subjects.session_api_parts(msg.subject)
        if parts is None:
            raise InvalidRequest(f"no such session API subject {msg.subject[:80]}")
        tenant = parts[0]
        batch = decode(SubmitBatchRequest, msg.data, max_bytes=SUBMIT_MANY_BYTES)
        d = self.dispatcher
        answers = _Answers(self.bus, msg.reply)
        good: list[int] = []
        room: dict[str, int] = {}  # places left per tenant: the items past them are that item's queue_full
        for i, req in enumerate(batch.items):
            try:
                owner = d.submitter.project(tenant, req.project)["tenant"]
                if d.submitter.is_new(req.id):
                    left = room[owner] = room.get(owner, d.submitter.room(owner)) - 1
                    if left < 0:
                        raise d.submitter.full(owner)
            except FleetError as exc:
                answers.error(i, exc)
                continue
            good.append(i)
        if good:
            try:
                states = await d.submit_many(tenant, [batch.items[i] for i in good])
            except FleetError as exc:
                for i in good:
                    answers.error(i, exc)
                return await answers.last()
            held: dict[float, list[tuple[int, SessionState]]] = {}  # by wait_s (a client's batch: one wait_s)
            for i, st in zip(good, states, strict=True):
                if batch.items[i].wait_s and not st.record.final:
                    held.setdefault(batch.items[i].wait_s, []).append((i, st))
                else:
                    answers.session(i, self._view(st))
            await asyncio.gather(*(self._answer_when_ended(answers, tenant, items, wait_s)
                                   for wait_s, items in held.items()))
        return await answers.last()

    async def _answer_when_ended(self, answers: _Answers, tenant: str, held: list[tuple[int, SessionState]],
                                 wait_s: float) -> None:
        """Answer each item once its session ended, the rest after `wait_s`. Each counts as one wait of its tenant:
        past WAITS_PER_TENANT, an item is answered at once, as it is (as a plain submit's wait would be)."""
        room = max(0, WAITS_PER_TENANT - self.waiting[tenant])
        for i, st in held[room:]:
            self.dispatcher.metrics["waits_refused"] += 1
            answers.session(i, self._view(st))
        held = held[:room]
        if not held:
            return
        self.waiting[tenant] += len(held)
        try:
            late = await self.dispatcher.query.wait_each([st for _, st in held], wait_s,
                                                         lambda k: answers.session(held[k][0], self._view(held[k][1])))
        finally:
            self.waiting[tenant] -= len(held)
        for k in late:
            answers.session(held[k][0], self._view(held[k][1]))

    async def _wait(self, tenant: str, st: SessionState, wait_s: float) -> None:
        """Hold the request until the session ends (or wait_s); at most WAITS_PER_TENANT at once per tenant, so
        that one tenant's waits never take every handler (past that it answers at once: the client asks again)."""
        if self.waiting[tenant] >= WAITS_PER_TENANT:
            self.dispatcher.metrics["waits_refused"] += 1
            return
        self.waiting[tenant] += 1
        try:
            await self.dispatcher.query.wait(st, wait_s)
        finally:
            self.waiting[tenant] -= 1

    def _view(self, st: SessionState) -> dict[str, Any]:
        data = public(st.record)
        if st.fence is not None and st.record.phase in LIVE_PHASES:
            data["fence"] = st.fence
        host = self.dispatcher.hosts.get(st.record.host or "")
        if host is not None:
            data["hostname"] = host.hostname
        if st.record.phase == "queued":
            reason, data["wait_kind"], data["wait_pool"] = self.dispatcher.waiting_for(st.record)
            data["reason"] = reason or data.get("reason")
        route = self.dispatcher.route_of(st.record)
        if route is not None:
            data["route_labels"] = sorted(route.labels - set(st.record.labels))
            if st.record.model is None and route.model:
                data["route_model"] = route.model
        return data

    def _brief(self, st: SessionState) -> dict[str, Any]:
        """A session as a batch submit answers it: where it is, or why it waits (the client knows the rest)."""
        view = self._view(st)
        return {k: view.get(k) for k in BRIEF}

    def _summary(self, st: SessionState) -> dict[str, Any]:
        """A session as a list shows it: no output, no history, the command cut at 200 characters."""
        data = self._view(st)
        del data["output_tail"], data["history"]
        command, size = [], 0
        for arg in data["command"]:
            if size + len(arg) > 200:
                command.append(arg[:max(0, 200 - size)] + "…")
                break
            command.append(arg)
            size += len(arg)
        data["command"] = command
        return data

    def _reply(self, st: SessionState) -> bytes:
        return ok_reply(self._view(st))

    # ------------------------------------------------------------------------------------------ hosts
    async def on_event(self, msg: Any) -> bytes:
        parts = subjects.work_parts(msg.subject)
        if parts is None:
            raise ProtocolError(f"no such work subject {msg.subject[:80]}")
        return _encoded(await self.dispatcher.on_event(parts[0], decode(WorkEvent, msg.data)))

    async def on_events(self, msg: Any) -> bytes:
        """A host's batch of events: each handled as a single one would be (the same checks, one by one: a foreign
        or stale event refused on its own), the events of one session in the order sent, different sessions
        together; one reply per event. A failure of one (e.g. its write) is that event's `ok: false`: the host
        sends that one again."""
        parts = subjects.work_parts(msg.subject)
        if parts is None:
            raise ProtocolError(f"no such work subject {msg.subject[:80]}")
        events = decode(WorkEvents, msg.data).items
        replies: list[WorkReply | None] = [None] * len(events)
        by_session: dict[str, list[int]] = {}
        for i, ev in enumerate(events):
            by_session.setdefault(ev.session, []).append(i)

        async def one_session(indices: list[int]) -> None:
            for i in indices:
                try:
                    replies[i] = await self.dispatcher.on_event(parts[0], events[i])
                except FleetError as exc:
                    replies[i] = WorkReply(ok=False, message=exc.message)
                except Exception as exc:  # a bug: logged, and this event alone refused
                    log.exception("work event of session %s failed", events[i].session)
                    replies[i] = WorkReply(ok=False, message=f"internal error in the fleet server ({type(exc).__name__})")

        if len(by_session) == 1:
            await one_session(next(iter(by_session.values())))
        else:
            await asyncio.gather(*(one_session(ix) for ix in by_session.values()))
        return items_payload(_encoded(r) for r in replies if r is not None)  # a WorkReplies message

    async def on_output(self, msg: Any) -> None:
        parts = subjects.work_parts(msg.subject)
        if parts is None or len(msg.data) > 32 * 1024:
            self.dispatcher.metrics["output_dropped"] += 1
            return
        try:
            chunk = decode(OutputChunk, msg.data, max_bytes=32 * 1024)
        except ProtocolError:
            self.dispatcher.metrics["output_dropped"] += 1
            return
        self.dispatcher.query.on_output(parts[0], chunk)


_WORK_OK = WORK_OK.encode()


class _Answers:
    """The answers to one submit_batch request: those of one event-loop turn sent together (a task that runs on the
    next turn), the rest with the last reply. Each answer is encoded once, when it is given."""

    def __init__(self, bus: Bus, reply: str) -> None:
        self.bus, self.reply = bus, reply
        self._ready: list[bytes] = []
        self._flush: asyncio.Task[None] | None = None
        self._sending = False

    def session(self, i: int, view: dict[str, Any]) -> None:
        self._add(pydantic_core.to_json({"i": i, "ok": True, "session": view}))

    def error(self, i: int, exc: FleetError) -> None:
        self._add(pydantic_core.to_json({"i": i, "ok": False, **exc.to_wire()}))

    def _add(self, encoded: bytes) -> None:
        self._ready.append(encoded)
        if self._flush is None and self.reply:
            self._flush = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        self._sending = True
        ready, self._ready = self._ready, []
        try:
            await self.bus.publish(self.reply, _batch_reply(ready, last=False))
        except FleetError:  # the requester is gone, or NATS is: it sends the items again on its own
            pass
        finally:
            self._flush, self._sending = None, False

    async def last(self) -> bytes:
        """The last reply (every answer not sent yet); an earlier one still being sent goes first."""
        if self._flush is not None:
            if self._sending:
                await self._flush
            else:
                self._flush.cancel()  # not started: its answers go in this one
                self._flush = None
        ready, self._ready = self._ready, []
        return _batch_reply(ready, last=True)


def _batch_reply(results: list[bytes], *, last: bool) -> bytes:
    """An ApiReply whose data is a SubmitBatchReply of answers encoded already."""
    return ok_reply_raw(b'{"results":[%s],"last":%s}' % (b",".join(results), b"true" if last else b"false"))


def _encoded(reply: WorkReply) -> bytes:
    return _WORK_OK if reply is WORK_OK else reply.encode()
