"""Pipelined compare-and-set writes to one KV bucket: many writes in flight, each acknowledged by JetStream.

Used by the dispatcher's session store (fleet.dispatch.store) for the two writes every session costs (its `create`
at submit, the compare-and-set of its completion), in place of fleet.bus.kv.Store's one request per write. A write
is published on the key's subject (`$KV.<bucket>.<key>`) with the expected last revision as a header (0: the key
must not exist; a per-message TTL as `Nats-TTL`) and a reply subject on one inbox subscription of this writer; the
stream's acknowledgement (or its error) comes back there and resolves that write's future. Nothing changes for
durability or fencing: a write returns only once JetStream acknowledged it (its revision), and a wrong last revision
is a Conflict, exactly as Store.create / Store.update. What changes is the cost: no request/reply machinery per
write (one future and one timer each, the ack parsed once), and at most WINDOW acks outstanding at once (the next
write waits for a slot). A write unanswered within ACK_TIMEOUT_S fails (TransientError, or PermissionDenied when
nats-server refused this identity the subject); a `create` that meets an existing revision asks Store.create, which
also recreates a key whose last value was a delete marker.

(nats-py's own JetStreamContext.publish_async is not used: its acknowledgement handler raises instead of failing the
future on an error ack, so a compare-and-set that loses would never return, and it has no timeout.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from typing import Any

import nats.errors

from fleet.bus.kv import Store
from fleet.errors import Conflict, TransientError

WINDOW = 512  # writes awaiting their acknowledgement at once
ACK_TIMEOUT_S = 5.0
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST = (10071, 10164)  # JetStream's err_code of a wrong last (subject) sequence


class Window:
    """At most `size` holders at once; the others wait and are let in first come, first served. What
    asyncio.Semaphore does, at O(1) per release: Python 3.11's walks every waiter it already woke, which made a burst
    of a bulk submit's writes quadratic (cProfile: 600k `done()` calls for 36k releases)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # let in, then cancelled before it ran: the place goes to the next
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place passes to it
                return
        self.free += 1


class PipelinedWriter:
    def __init__(self, store: Store, *, window: int = WINDOW, timeout: float = ACK_TIMEOUT_S) -> None:
        assert store.bus is not None
        self.store = store
        self.nc = store.bus.nc
        self.timeout = timeout
        self._window = Window(window)
        self._futures: dict[str, asyncio.Future[Any]] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._sub: Any = None
        self._subject = f"$KV.{store.bucket}."

    async def start(self) -> None:
        if self._sub is None:
            base = self.nc.new_inbox()
            self._prefix = base + "."
            self._sub = await self.nc.subscribe(base + ".*", cb=self._on_ack)

    async def _on_ack(self, msg: Any) -> None:
        fut = self._futures.pop(msg.subject[len(self._prefix):], None)
        if fut is None or fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_result({"error": {"code": 503, "description": "no JetStream stream answered"}})
            return
        try:
            ack = json.loads(msg.data)
        except ValueError:
            ack = None
        fut.set_result(ack if isinstance(ack, dict) else {"error": {"code": 0, "description": "malformed ack"}})

    async def _write(self, key: str, value: bytes, headers: dict[str, str], what: str) -> int:
        if self._sub is None:
            await self.start()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        await self._window.acquire()
        token = str(next(self._tokens))
        fut: asyncio.Future[Any] = loop.create_future()
        self._futures[token] = fut
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            await self.nc.publish(self._subject + key, value, reply=self._prefix + token, headers=headers)
            ack = await fut
        except (TimeoutError, nats.errors.Error) as exc:
            raise self.store._failed(what, exc, started) from exc
        finally:
            timer.cancel()
            self._futures.pop(token, None)
            self._window.release()
        err = ack.get("error")
        if err is None:
            seq = ack.get("seq")
            if not isinstance(seq, int):
                raise TransientError(f"{what} failed: malformed ack")
            return seq
        if isinstance(err, dict) and err.get("err_code") in WRONG_LAST:
            raise Conflict(f"{self.store.bucket}/{key} changed (expected {headers.get(EXPECTED_LAST)})")
        raise TransientError(f"{what} failed: {err.get('description') if isinstance(err, dict) else err}")

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; Conflict otherwise."""
        try:
            return await self._write(key, value, {EXPECTED_LAST: "0"}, f"KV create {self.store.bucket}/{key}")
        except Conflict:
            return await self.store.create(key, value)  # a delete marker, or really there (Conflict)

    async def update(self, key: str, value: bytes, last: int, *, ttl: float | None = None) -> int:
        """Write only if the key is still at revision `last`; Conflict otherwise (`ttl`: as Store.update)."""
        headers = {EXPECTED_LAST: str(last)}
        if ttl is not None:
            headers["Nats-TTL"] = str(int(ttl))
        return await self._write(key, value, headers, f"KV update {self.store.bucket}/{key}")


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no acknowledgement in time"))

