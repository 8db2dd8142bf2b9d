"""The agent's reports to the dispatcher: the WorkEvents of one moment in one request.

Used by fleet.agents.sessions.Runner (each session's running and final reports). `send(event)` queues the event
and returns its WorkReply once the server answered; what was queued during one turn of the event loop goes out as
one WorkEvents request on `fleet.v1.work.<machine_id>.events` (cut at MAX_WORK_EVENTS events and WORK_EVENTS_BYTES;
an event larger than that goes alone), and the WorkReplies answer each event in order. Under load many sessions
end together (their assignments came together): one request for them costs the server, nats-server and this host
one message each way instead of one per session. A request that fails (no dispatcher for a moment, NATS away, an
answer that does not match) fails every event in it with that error, and the Runner sends each again, as it
did one by one.
"""

from __future__ import annotations

import asyncio

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    MAX_MESSAGE_BYTES,
    MAX_WORK_EVENTS,
    WORK_EVENTS_BYTES,
    WorkEvent,
    WorkReplies,
    WorkReply,
    batched,
    decode,
    items_payload,
)
from fleet.errors import ProtocolError

REPORT_TIMEOUT_S = 5.0


class Reports:
    def __init__(self, bus: Bus, machine_id: str, *, timeout: float = REPORT_TIMEOUT_S) -> None:
        self.bus = bus
        self.subject = f"{subjects.host_work(machine_id)}.events"
        self.timeout = timeout
        self._queued: list[tuple[bytes, asyncio.Future[WorkReply]]] = []
        self._tasks: set[asyncio.Task] = set()

    async def send(self, event: WorkEvent) -> WorkReply:
        """The server's answer to `event` (FleetError if the request carrying it failed)."""
        fut: asyncio.Future[WorkReply] = asyncio.get_running_loop().create_future()
        if not self._queued:
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._queued.append((event.model_dump_json().encode(), fut))
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # the end of this turn: the other sessions that ended in it join
        queued, self._queued = self._queued, []
        await asyncio.gather(*(self._request(batch) for batch in batched(
            queued, lambda item: len(item[0]), most=MAX_WORK_EVENTS, max_bytes=WORK_EVENTS_BYTES)))

    async def _request(self, batch: list[tuple[bytes, asyncio.Future[WorkReply]]]) -> None:
        payload = items_payload(data for data, _ in batch)
        try:
            data = await self.bus.request(self.subject, payload, timeout=self.timeout, what="the dispatcher")
            replies = decode(WorkReplies, data, max_bytes=MAX_MESSAGE_BYTES * 4).items
            if len(replies) != len(batch):
                raise ProtocolError(f"the dispatcher answered {len(replies)} of {len(batch)} events")
        except Exception as exc:  # a FleetError, or a bug: every event of the batch learns it, none waits forever
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), reply in zip(batch, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

