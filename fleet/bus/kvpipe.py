"""Pipelined compare-and-set writes to one KV bucket: many writes in flight, each acknowledged by JetStream.

Used by the dispatcher's session store (fleet.dispatch.store) for the two writes every session costs (its `create`
at submit, the compare-and-set of its completion), in place of fleet.bus.kv.Store's one request per write. A write
is published on the key's subject (`$KV.<bucket>.<key>`) with the expected last revision as a header (0: the key
must not exist; a per-message TTL as `Nats-TTL`) and a reply subject on one inbox subscription of this writer; the
stream's acknowledgement (or its error) comes back there and resolves that write's future. Nothing changes for
durability or fencing: a write returns only once JetStream acknowledged it (its revision), and a wrong last revision
is a Conflict, exactly as Store.create / Store.update. What changes is the cost: no request/reply machinery per
write (one future each, the ack parsed once, one sweeping timer for all), and at most WINDOW writes outstanding at
once (the next write waits for a place; a place is free again when the ack came or the write timed out).
`create_many` sends a batch's creates together and collects their acks without a task per write. A write
unanswered within ACK_TIMEOUT_S (+ up to SWEEP_S) fails (TransientError, or PermissionDenied when nats-server refused
this identity the subject); a `create` that meets an existing revision asks Store.create, which also recreates a
key whose last value was a delete marker.

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
from fleet.errors import Conflict, FleetError, TransientError

WINDOW = 512  # writes awaiting their acknowledgement at once
ACK_TIMEOUT_S = 5.0
SWEEP_S = 0.5  # how often writes past ACK_TIMEOUT_S are failed (one timer, not one per write)
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


def parse_ack(data: bytes) -> dict[str, Any]:
    """A JetStream publish ack as a dict: `{"stream":…,"seq":N…}` read without a JSON parse when it is the plain
    success it nearly always is (an ack is ~40 bytes; json.loads was ~5% of the server's CPU), else parsed; anything
    that is not a JSON object is a malformed ack."""
    if data.startswith(b'{"stream":') and b'"error"' not in data:
        at = data.find(b'"seq":')
        if at > 0:
            end = at + 6
            while end < len(data) and 48 <= data[end] <= 57:
                end += 1
            if end > at + 6 and end < len(data) and data[end] in b",}":
                return {"seq": int(data[at + 6:end])}
    try:
        ack = json.loads(data)
    except ValueError:
        ack = None
    return ack if isinstance(ack, dict) else {"error": {"code": 0, "description": "malformed ack"}}


class PipelinedWriter:
    def __init__(self, store: Store, *, window: int = WINDOW, timeout: float = ACK_TIMEOUT_S) -> None:
        assert store.bus is not None
        self.store = store
        self.nc = store.bus.nc
        self.timeout = timeout
        self._window = Window(window)
        self._futures: dict[str, asyncio.Future[Any]] = {}  # writes awaiting their ack, by token; each holds a place
        self._deadlines: collections.deque[tuple[float, str]] = collections.deque()  # (when it expires, token)
        self._sweeping: asyncio.TimerHandle | None = None
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
        if fut is None:
            return
        self._window.release()
        if fut.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_result({"error": {"code": 503, "description": "no JetStream stream answered"}})
            return
        fut.set_result(parse_ack(msg.data))

    def _sweep(self) -> None:
        """Fail the writes unanswered for `timeout` (one timer for all of them, every SWEEP_S while any is out)."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            fut = self._futures.pop(self._deadlines.popleft()[1], None)
            if fut is not None:
                self._window.release()
                if not fut.done():
                    fut.set_exception(TimeoutError("no acknowledgement in time"))
        if not self._futures:
            self._deadlines.clear()
        self._sweeping = (asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
                          if self._futures else None)

    async def _send(self, key: str, value: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
        """Publish one write (once a place in the window is free); the future of its ack."""
        if self._sub is None:
            await self.start()
        await self._window.acquire()
        token = str(next(self._tokens))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[token] = fut
        self._deadlines.append((time.monotonic() + self.timeout, token))
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        try:
            await self.nc.publish(self._subject + key, value, reply=self._prefix + token, headers=headers)
        except BaseException:
            if self._futures.pop(token, None) is not None:
                self._window.release()
            raise
        return fut

    def _revision(self, ack: dict[str, Any], key: str, headers: dict[str, str], what: str) -> int:
        err = ack.get("error")
        if err is None:
            seq = ack.get("seq")
            if not isinstance(seq, int):
                raise TransientError(f"{what} failed: malformed ack")
            return seq
        if isinstance(err, dict) and err.get("err_code") in WRONG_LAST:
            raise Conflict(f"{self.store.bucket}/{key} changed (expected {headers.get(EXPECTED_LAST)})")
        raise TransientError(f"{what} failed: {err.get('description') if isinstance(err, dict) else err}")

    async def _write(self, key: str, value: bytes, headers: dict[str, str], what: str) -> int:
        started = time.monotonic()
        try:
            ack = await (await self._send(key, value, headers))
        except (TimeoutError, nats.errors.Error) as exc:
            raise self.store._failed(what, exc, started) from exc
        return self._revision(ack, key, headers, what)

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; Conflict otherwise."""
        try:
            return await self._write(key, value, {EXPECTED_LAST: "0"}, f"KV create {self.store.bucket}/{key}")
        except Conflict:
            return await self.store.create(key, value)  # a delete marker, or really there (Conflict)

    async def create_many(self, items: list[tuple[str, bytes]], *, at_once: int = WINDOW // 2
                          ) -> list[int | FleetError]:
        """`create` of each (key, value): at most `at_once` of them in flight at a time, no task per write; each
        one's revision, or its error (Conflict, TransientError, PermissionDenied), in the order given."""
        out: list[int | FleetError] = []
        headers = {EXPECTED_LAST: "0"}
        for start in range(0, len(items), at_once):
            chunk = items[start:start + at_once]
            started = time.monotonic()
            sent: list[asyncio.Future[Any] | FleetError] = []
            for key, value in chunk:
                try:
                    sent.append(await self._send(key, value, headers))
                except (TimeoutError, nats.errors.Error) as exc:
                    sent.append(self.store._failed(f"KV create {self.store.bucket}/{key}", exc, started))
            for (key, value), fut in zip(chunk, sent, strict=True):
                what = f"KV create {self.store.bucket}/{key}"
                try:
                    if isinstance(fut, FleetError):
                        raise fut
                    try:
                        out.append(self._revision(await fut, key, headers, what))
                    except (TimeoutError, nats.errors.Error) as exc:
                        raise self.store._failed(what, exc, started) from exc
                    except Conflict:
                        out.append(await self.store.create(key, value))  # as `create` does
                except FleetError as exc:
                    out.append(exc)
        return out

    async def update(self, key: str, value: bytes, last: int, *, ttl: float | None = None) -> int:
        """Write only if the key is still at revision `last`; Conflict otherwise (`ttl`: as Store.update)."""
        headers = {EXPECTED_LAST: str(last)}
        if ttl is not None:
            headers["Nats-TTL"] = str(int(ttl))
        return await self._write(key, value, headers, f"KV update {self.store.bucket}/{key}")
