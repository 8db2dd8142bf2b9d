"""Concurrent `Client.submit` calls of one client, coalesced into `submit_batch` requests (one per event-loop turn).

Used by fleet.sessions.client.Client.submit. A program that keeps many submits in flight (a pipeline, a load
generator, a SyncClient shared by threads) would otherwise cost the server one request and one reply per session;
here, the submits made in one turn of the client's event loop that ask the same `wait_s` go as one
SubmitBatchRequest, and the server answers each item on its own (fleet.dispatch.api: SubmitBatchReply messages on
one reply subject, the items answered at one moment together). What a caller sees does not change: the same
SessionView, or the same error, a single `submit` would have given it.

- One submit alone in its turn goes as a plain `submit` request: no batch, no wait for company (1 in flight costs
  what it did).
- A batch stays within MAX_SUBMIT_BATCH items and SUBMIT_MANY_BYTES; an item too large to share a request goes
  alone.
- An item the batch did not answer (no reply within SUBMIT_TIMEOUT_S + wait_s, no server listening, a malformed or
  refused batch, an error the server calls retryable) is sent again on its own as a plain `submit`, with the
  client's retries and fail-over: it carries its ID, so one that was stored is found, never stored twice.
- Replies come on a subscription under this client's own inbox (the only place the NATS server lets it read) and
  are validated before anything is resolved: an index out of range, a second answer or a malformed session is
  ignored (that item is then sent again on its own).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    MAX_SUBMIT_BATCH,
    SUBMIT_MANY_BYTES,
    ApiReply,
    SessionView,
    SubmitBatchReply,
    SubmitRequest,
    items_payload,
)
from fleet.errors import FleetError, ProtocolError, from_wire

log = logging.getLogger(__name__)

#: an item larger than this goes alone (a plain submit): a batch is for the many small ones
ALONE_BYTES = 16 * 1024
_OVERHEAD = 64  # the batch's own JSON around its items

Single = Callable[[SubmitRequest], Awaitable[SessionView]]
View = Callable[[Any], SessionView]


class _Batch:
    __slots__ = ("items", "left", "done")

    def __init__(self, items: list[tuple[SubmitRequest, asyncio.Future[SessionView]]]) -> None:
        self.items = items
        self.left = len(items)  # items not answered yet
        self.done = asyncio.Event()  # every item answered, or the batch is over (refused, no server, malformed)


class SubmitCoalescer:
    """The submits of one client (see the module docstring). `single(req)` is the plain submit, with retries;
    `view(data)` a SessionView from a reply's data (ProtocolError on anything else)."""

    def __init__(self, bus_of: Callable[[], Awaitable[Bus]], tenant: str, single: Single, view: View,
                 timeout: float) -> None:
        self._bus_of, self.tenant, self._single, self._view, self.timeout = bus_of, tenant, single, view, timeout
        self._pending: list[tuple[SubmitRequest, bytes, asyncio.Future[SessionView]]] = []
        self._scheduled = False
        self._batches: dict[str, _Batch] = {}
        self._tokens = itertools.count()
        self._sub: Any = None
        self._sub_bus: Bus | None = None
        self._prefix = ""
        self._tasks: set[asyncio.Task[None]] = set()
        #: batches sent, items that went alone by choice, items a batch did not answer (sent again alone): read by
        #: tests and the bench
        self.batches_sent = 0
        self.sent_alone = 0
        self.resent_alone = 0

    async def submit(self, req: SubmitRequest) -> SessionView:
        encoded = req.encode()
        if len(encoded) > ALONE_BYTES:
            self.sent_alone += 1
            return await self._single(req)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[SessionView] = loop.create_future()
        self._pending.append((req, encoded, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the other submits of this turn
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        by_wait: dict[float, list[tuple[SubmitRequest, bytes, asyncio.Future[SessionView]]]] = {}
        for item in pending:
            if not item[2].done():  # its caller was cancelled before it was sent: nothing to send
                by_wait.setdefault(item[0].wait_s, []).append(item)
        for group in by_wait.values():
            batch: list[tuple[SubmitRequest, bytes, asyncio.Future[SessionView]]] = []
            size, ids = _OVERHEAD, set[str | None]()
            for item in group:
                if batch and (len(batch) == MAX_SUBMIT_BATCH or size + len(item[1]) + 1 > SUBMIT_MANY_BYTES
                              or item[0].id in ids):
                    self._start(batch)
                    batch, size, ids = [], _OVERHEAD, set[str | None]()
                batch.append(item)
                size += len(item[1]) + 1
                ids.add(item[0].id)
            self._start(batch)

    def _start(self, batch: list[tuple[SubmitRequest, bytes, asyncio.Future[SessionView]]]) -> None:
        if len(batch) == 1:
            self.sent_alone += 1
            coro = self._alone(batch[0][0], batch[0][2])
        else:
            coro = self._send(batch)
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alone(self, req: SubmitRequest, fut: asyncio.Future[SessionView]) -> None:
        if fut.done():
            return
        try:
            view = await self._single(req)
        except asyncio.CancelledError:
            if not fut.done():
                fut.set_exception(FleetError("the client was closed before the session's submit was answered"))
            raise
        except BaseException as exc:  # the caller's error, as a plain submit gives it
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(view)

    async def _subscribe(self, bus: Bus) -> None:
        if self._sub is not None and self._sub_bus is bus:
            return
        base = bus.nc.new_inbox()
        self._prefix = base + "."
        self._sub = await bus.nc.subscribe(base + ".*", cb=self._on_reply)
        self._sub_bus = bus

    async def _send(self, items: list[tuple[SubmitRequest, bytes, asyncio.Future[SessionView]]]) -> None:
        batch = _Batch([(req, fut) for req, _, fut in items])
        token = str(next(self._tokens))
        wait_s = items[0][0].wait_s
        started = time.monotonic()
        try:
            try:
                bus = await self._bus_of()
                await self._subscribe(bus)
                subject = subjects.api_sessions(self.tenant, "submit_batch")
                self._batches[token] = batch
                self.batches_sent += 1
                with bus.refusable(subject):  # refused by the NATS server: at once, not after the timeout
                    await bus.nc.publish(subject, items_payload(e for _, e, _ in items), reply=self._prefix + token)
                    await asyncio.wait_for(batch.done.wait(), self.timeout + wait_s)
            except Exception as exc:  # timed out, refused, no connection: the rest goes alone (see the docstring)
                log.debug("submit batch %s ended with %d of %d unanswered: %r", token, batch.left, len(items), exc)
            finally:
                self._batches.pop(token, None)
            left = max(0.0, wait_s - (time.monotonic() - started))
            self.resent_alone += sum(1 for _, fut in batch.items if not fut.done())
            await asyncio.gather(*(self._alone(req.model_copy(update={"wait_s": left}), fut)
                                   for req, fut in batch.items if not fut.done()))
        except asyncio.CancelledError:
            for _, fut in batch.items:
                if not fut.done():
                    fut.set_exception(FleetError("the client was closed before the session's submit was answered"))
            raise

    async def _on_reply(self, msg: Any) -> None:
        batch = self._batches.get(msg.subject[len(self._prefix):])
        if batch is None:
            return  # a batch that is over (timed out, answered): nothing waits for it
        if msg.headers and msg.headers.get("Status") == "503":  # no fleet server listens: each goes alone
            batch.done.set()
            return
        try:
            reply = ApiReply.model_validate_json(msg.data)
            if not reply.ok:
                raise from_wire(reply.error, reply.message, reply.hint, reply.retryable)
            data = SubmitBatchReply.model_validate(reply.data)
        except (ValidationError, ValueError, FleetError) as exc:
            log.debug("submit batch reply refused: %r", exc)  # the items not answered go alone
            batch.done.set()
            return
        for result in data.results:
            if result.i >= len(batch.items):
                continue
            req, fut = batch.items[result.i]
            if fut.done():
                continue  # answered already, or its caller gave up
            if result.ok:
                try:
                    view = self._view(result.session)
                except ProtocolError:
                    continue  # goes alone
                if view.id != req.id:
                    continue
                fut.set_result(view)
            else:
                err = from_wire(result.error, result.message, result.hint, result.retryable)
                if err.retryable:
                    continue  # goes alone, with the client's retries
                fut.set_exception(err)
            batch.left -= 1
        if data.last or batch.left <= 0:
            batch.done.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sub, self._sub_bus = None, None
