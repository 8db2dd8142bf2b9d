"""The session API (`fleet.v1.api.sessions.<tenant>.<verb>`) and the hosts' work subjects, as the leader serves them.

The tenant is a token of the subject, so NATS permissions scope a submitter to its tenant (fleet.bus.identities);
`_all` is the token of identities that see every tenant (admin; a viewer may list, show, wait and read logs).
Verbs: submit (SubmitRequest: the reply comes once the session is stored; with `wait_s`, once it ended or wait_s
passed), list (SessionListRequest), get, cancel, wait (SessionQuery), logs (LogsRequest, long-polled). Hosts
report on `fleet.v1.work.<machine_id>.event` (WorkEvent -> WorkReply) and `.output` (OutputChunk): the machine ID
is the subject's token, which only that host's identity may publish on. Subscribed only while this replica leads
(fleet.service.server wires it).
"""

from __future__ import annotations

import logging
from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    LIVE_PHASES,
    ApiReply,
    LogsRequest,
    OutputChunk,
    SessionListRequest,
    SessionQuery,
    SubmitRequest,
    WorkEvent,
    decode,
)
from fleet.dispatch.dispatcher import Dispatcher, SessionState, public
from fleet.errors import InvalidRequest, ProtocolError

log = logging.getLogger(__name__)

API_CONCURRENCY = 512
WAIT_CONCURRENCY = 4096  # waits and log polls hold a handler while they wait: cheap (a future each)
WORK_CONCURRENCY = 512


class SessionApi:
    def __init__(self, bus: Bus, dispatcher: Dispatcher) -> None:
        self.bus = bus
        self.dispatcher = dispatcher
        self._subs: list[Any] = []

    async def start(self) -> None:
        bus, q = self.bus, subjects.SERVER_QUEUE
        api = f"{subjects.API_SESSIONS}.*"
        self._subs = [
            await bus.serve(f"{api}.submit", self.handle, queue=q, concurrency=WAIT_CONCURRENCY),
            await bus.serve(f"{api}.list", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.get", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.cancel", self.handle, queue=q, concurrency=API_CONCURRENCY),
            await bus.serve(f"{api}.wait", self.handle, queue=q, concurrency=WAIT_CONCURRENCY),
            await bus.serve(f"{api}.logs", self.handle, queue=q, concurrency=WAIT_CONCURRENCY),
            await bus.serve(f"{subjects.WORK_PREFIX}*.event", self.on_event, queue=q, concurrency=WORK_CONCURRENCY),
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
            req = decode(SubmitRequest, msg.data)
            st = await d.submit(tenant, req)
            if req.wait_s:
                await d.wait(st, req.wait_s)
            return self._reply(st)
        if verb == "list":
            lreq = decode(SessionListRequest, msg.data)
            sessions = d.listing(tenant, lreq.project, lreq.phase, lreq.limit)
            return ApiReply(ok=True, data=[self._view(st) for st in sessions]).encode()
        if verb == "logs":
            logreq = decode(LogsRequest, msg.data)
            st = await d.get(tenant, logreq.id)
            offset, text, end = await d.logs(st, logreq.offset, logreq.wait_s)
            return ApiReply(ok=True, data={"id": st.record.id, "offset": offset, "text": text, "end": end,
                                           "phase": st.record.phase, "exit_code": st.record.exit_code}).encode()
        query = decode(SessionQuery, msg.data)
        st = await d.get(tenant, query.id)
        if verb == "cancel":
            await d.cancel(st)
        elif verb == "wait":
            await d.wait(st, query.wait_s)
        return self._reply(st)

    def _view(self, st: SessionState) -> dict[str, Any]:
        data = public(st.record)
        if st.fence is not None and st.record.phase in LIVE_PHASES:
            data["fence"] = st.fence
        host = self.dispatcher.hosts.get(st.record.host or "")
        if host is not None:
            data["hostname"] = host.hostname
        if st.record.phase == "queued":
            data["reason"] = self.dispatcher.waiting_reason(st.record) or data.get("reason")
        return data

    def _reply(self, st: SessionState) -> bytes:
        return ApiReply(ok=True, data=self._view(st)).encode()

    # ------------------------------------------------------------------------------------------ hosts
    async def on_event(self, msg: Any) -> bytes:
        parts = subjects.work_parts(msg.subject)
        if parts is None:
            raise ProtocolError(f"no such work subject {msg.subject[:80]}")
        return (await self.dispatcher.on_event(parts[0], decode(WorkEvent, msg.data))).encode()

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
        self.dispatcher.on_output(parts[0], chunk)
