"""JetStream KV at fleet's boundary: buckets, compare-and-set writes, complete snapshots and a continuous informer.

Used by fleet.hosts (the host registry and enrollment), fleet.bus.applied (the applied config and the apply
lock) and the CLI. Writes to contested keys go through `create` (only if absent), `update(last=revision)` or
`modify` (read-modify-write by compare-and-set, the one retry loop); a lost race raises fleet.errors.Conflict, a
missing key reads as None. `update(ttl=…)` writes a value nats-server removes after `ttl` seconds (the sessions
bucket's finished sessions; `allow_message_ttls` turns per-message TTLs on in a bucket made without them). nats' own
exceptions never leave this module.

Reading a whole bucket: nats-py's KV watch signals "every current value delivered" with a `None` marker that it
computes from a consumer-info request; the server can answer that request before it has flushed the messages its
consumer already counts as delivered, so the marker can come before any entry (7 of 1,000 snapshots of a 213-key
bucket came back empty on a busy machine). `Feed` does not use that marker: every JetStream message carries the
number of messages still pending for its consumer, and the values current at the start have all been handled
exactly when a message with `num_pending == 0` has been handled; consumer info is trusted only to say that the
consumer has nothing at all to deliver (`delivered.consumer_seq == 0` and `num_pending == 0`). `Store.snapshot`
and `Informer` are both built on it (docs/protocol.md, "Reading a bucket").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.api
import nats.js.errors

from fleet.bus.connection import Bus
from fleet.errors import Conflict, FleetError, PermissionDenied, TransientError
from fleet.retry import Backoff, retrying

log = logging.getLogger(__name__)

#: between the attempts of a compare-and-set that lost its race: full jitter, 2 ms doubling up to 250 ms
CAS_BACKOFF = Backoff(0.002, 0.25)
#: between the attempts of a bucket's opening while JetStream starts: 0.1 s doubling up to 3.2 s (75-100%)
STARTUP_BACKOFF = Backoff(0.1, 3.2, floor=0.75)


class _LostRace(Exception):
    """A compare-and-set of Store.modify lost to another writer: retried, then reported as Conflict."""

_KV_OP = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+: markers of TTL expiry and purges


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int

    def json(self) -> Any:
        return json.loads(self.value)


#: what a Feed hands on for each message: the key, its value (None when deleted or purged) and its revision
OnEntry = Callable[[str, bytes | None, int], None]


class Feed:
    """One ordered push consumer over the keys of a bucket under `prefix`: the last value of every key first,
    then every change in stream order. `synced` is set once the values current at the start were all handled.

    `on_entry` is called synchronously for every message (keep it fast: it runs in the NATS read path).
    """

    def __init__(self, store: Store, prefix: str, on_entry: OnEntry) -> None:
        self.store = store
        self.prefix = prefix
        self.on_entry = on_entry
        self.synced = asyncio.Event()
        self.last_activity = 0.0
        self._sub: Any = None
        self._stopped = False

    async def start(self) -> None:
        store = self.store
        pre = f"$KV.{store.bucket}."
        # A prefix that ends at a token boundary is filtered by the server; any other is filtered here.
        server_side = self.prefix == "" or self.prefix.endswith(".")
        subject = f"{pre}{self.prefix}>" if server_side else f"{pre}>"
        cut, prefix, on_entry, synced = len(pre), self.prefix, self.on_entry, self.synced
        loop = asyncio.get_running_loop()

        async def on_msg(msg: Any) -> None:
            if self._stopped:
                return
            self.last_activity = loop.time()
            meta = msg.metadata
            key = msg.subject[cut:]
            if server_side or key.startswith(prefix):
                headers = msg.headers
                deleted = bool(headers) and (_KV_OP in headers or _MARKER_REASON in headers)
                on_entry(key, None if deleted else msg.data, meta.sequence.stream)
            if meta.num_pending == 0:
                synced.set()

        started = time.monotonic()
        try:
            self._sub = await store.js.subscribe(
                subject, stream=f"KV_{store.bucket}", cb=on_msg, ordered_consumer=True,
                deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=300.0,
            )
            if not synced.is_set():
                info = await self._sub.consumer_info()
                if info.num_pending == 0 and info.delivered.consumer_seq == 0 and self._sub.delivered == 0:
                    synced.set()  # the consumer has nothing to deliver: the prefix holds no keys
        except (TimeoutError, nats.errors.Error) as exc:
            await self.stop()
            raise store._failed(f"reading KV bucket {store.bucket}", exc, started) from exc

    async def wait_synced(self, idle_timeout: float) -> None:
        """Until `synced`; TransientError if no message arrives for `idle_timeout` seconds before that."""
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        while not self.synced.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.synced.wait(), 0.25)
            if not self.synced.is_set() and loop.time() - self.last_activity > idle_timeout:
                raise TransientError(f"reading KV bucket {self.store.bucket} stalled for {idle_timeout:g}s")

    async def stop(self) -> None:
        self._stopped = True
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


class Store:
    """One KV bucket."""

    def __init__(self, kv: Any, bucket: str, js: Any = None, bus: Bus | None = None) -> None:
        self._kv = kv
        self.bucket = bucket
        self.js = js
        self.bus = bus

    def _failed(self, what: str, exc: BaseException, started: float) -> FleetError:
        """The error to raise for a failed KV operation: PermissionDenied if the NATS server refused this identity
        the subject meanwhile (nats-py only tells error_cb; the operation itself just times out), else transient."""
        refusal = self.bus.denied(f"$KV.{self.bucket}", started) if self.bus is not None else None
        if refusal is not None:
            return PermissionDenied(f"{what}: NATS refused it ({refusal})",
                                    hint="this identity may not write there (a viewer cannot apply); use the "
                                         "admin credentials")
        return TransientError(f"{what} failed: {exc}")

    async def get(self, key: str) -> Entry | None:
        started = time.monotonic()
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failed(f"KV get {self.bucket}/{key}", exc, started) from exc
        if entry.value is None:
            return None
        return Entry(key, entry.value, entry.revision)

    async def put(self, key: str, value: bytes) -> int:
        """Unconditional write: only for keys nobody else writes."""
        started = time.monotonic()
        try:
            return await self._kv.put(key, value)
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failed(f"KV put {self.bucket}/{key}", exc, started) from exc

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; Conflict otherwise."""
        started = time.monotonic()
        try:
            return await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} already exists") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failed(f"KV create {self.bucket}/{key}", exc, started) from exc

    async def update(self, key: str, value: bytes, last: int, *, ttl: float | None = None) -> int:
        """Write only if the key is still at revision `last`; Conflict otherwise. With `ttl`, nats-server removes
        this value (and so the key) `ttl` seconds later unless it is written again (a per-message TTL: the bucket
        must allow them, see `allow_message_ttls`)."""
        started = time.monotonic()
        try:
            if ttl is None:
                return await self._kv.update(key, value, last=last)
            ack = await self.js.publish(f"$KV.{self.bucket}.{key}", value, msg_ttl=ttl,
                                        headers={nats.js.api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})
            return ack.seq
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):  # wrong last sequence, as a plain API error
                raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
            raise self._failed(f"KV update {self.bucket}/{key}", exc, started) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failed(f"KV update {self.bucket}/{key}", exc, started) from exc

    async def delete(self, key: str, last: int | None = None) -> None:
        """Delete `key`; with `last`, only if it is still at that revision (Conflict otherwise)."""
        started = time.monotonic()
        try:
            await self._kv.delete(key, last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):  # wrong last sequence, as a plain API error
                raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
            raise self._failed(f"KV delete {self.bucket}/{key}", exc, started) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise self._failed(f"KV delete {self.bucket}/{key}", exc, started) from exc

    async def modify(self, key: str, change: Callable[[Entry | None], bytes | None], *,
                     attempts: int = 30) -> Entry | None:
        """Read-modify-write by compare-and-set, retried with jittered backoff when another writer wins.

        `change(current)` returns the new value, or None to leave the key as it is (then the current entry is
        returned); it may raise a FleetError to refuse (nothing is written). Conflict after `attempts` lost races.
        This is the one CAS retry loop of fleet: counters, host records and pool memberships all go through it.
        """
        try:
            async for attempt in retrying(retry_on=_LostRace, attempts=attempts, wait=CAS_BACKOFF):
                with attempt:
                    current = await self.get(key)
                    value = change(current)
                    if value is None:
                        return current
                    try:
                        if current is None:
                            revision = await self.create(key, value)
                        else:
                            revision = await self.update(key, value, last=current.revision)
                    except Conflict as exc:
                        raise _LostRace from exc
                    return Entry(key, value, revision)
        except _LostRace:
            pass
        raise Conflict(f"{self.bucket}/{key}: too much contention, gave up after {attempts} attempts",
                       hint="retry; if it persists, something writes this key in a loop")

    async def increment(self, key: str, *, by: int = 1, limit: int | None = None) -> int | None:
        """Add `by` to the counter at `key`; None (and no change) if that would pass `limit` (or go below 0).

        N concurrent callers never push the counter past `limit` (each write is conditional on what it read).
        """
        outcome: list[int | None] = [None]

        def change(current: Entry | None) -> bytes | None:
            value = (int(current.value) if current is not None else 0) + by
            if value < 0 or (limit is not None and by > 0 and value > limit):
                outcome[0] = None
                return None
            outcome[0] = value
            return str(value).encode()

        await self.modify(key, change)
        return outcome[0]

    async def watch(self, key: str) -> Any:
        """A nats KeyWatcher of `key` (its current value first, then every change); used by RecordWatch."""
        try:
            return await self._kv.watch(key)
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV watch {self.bucket}/{key} failed: {exc}") from exc

    async def ttl(self) -> float | None:
        """The bucket's entry TTL in seconds (None: entries never expire)."""
        try:
            return (await self._kv.status()).ttl
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV status {self.bucket} failed: {exc}") from exc

    async def revision(self) -> int:
        """The bucket's last stream sequence: moves on every write, deletes included (0: never written)."""
        try:
            status = await self._kv.status()
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV status {self.bucket} failed: {exc}") from exc
        return int(status.stream_info.state.last_seq)

    async def snapshot(self, prefix: str = "", *, idle_timeout: float = 10.0) -> list[Entry]:
        """Every live entry (the latest revision of each key starting with `prefix`), in stream order, complete by
        construction (see the module docstring). TransientError if the stream stalls for `idle_timeout` seconds.

        One ordered consumer instead of keys() plus one get per key: `fleet server` reads 100k hosts this way.
        """
        latest: dict[str, Entry] = {}

        def on_entry(key: str, value: bytes | None, revision: int) -> None:
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = Entry(key, value, revision)

        feed = Feed(self, prefix, on_entry)
        await feed.start()
        try:
            await feed.wait_synced(idle_timeout)
        finally:
            await feed.stop()
        return sorted(latest.values(), key=lambda e: e.revision)

    async def keys(self, prefix: str = "") -> list[str]:
        return sorted(e.key for e in await self.snapshot(prefix))


class Informer:
    """A bucket mirrored continuously: `on_change(key, entry | None)` for every key as it is now, then for every
    change, in stream order (None when a key is deleted). Level-based: `resync()` (on a NATS reconnect, or
    whenever the caller doubts the feed) reads the whole bucket again through a new consumer and reports only
    what differs from what was reported before, deletions included. Used by the host registry and the config
    cache of `fleet server`, so that every replica converges on every change.
    """

    def __init__(self, store: Store, on_change: Callable[[str, Entry | None], None], *, prefix: str = "",
                 idle_timeout: float = 10.0) -> None:
        self.store = store
        self.prefix = prefix
        self.on_change = on_change
        self.idle_timeout = idle_timeout
        self.resyncs = 0
        self._known: dict[str, int] = {}  # key -> revision reported
        self._feed: Feed | None = None
        self._lock = asyncio.Lock()

    @property
    def synced(self) -> bool:
        return self._feed is not None and self._feed.synced.is_set()

    async def start(self) -> None:
        """Read every current value (raises TransientError if the bucket cannot be read); then follow changes."""
        await self.resync()

    async def resync(self) -> None:
        async with self._lock:
            old, self._feed = self._feed, None
            if old is not None:
                await old.stop()
            seen: set[str] = set()
            known, on_change = self._known, self.on_change

            def on_entry(key: str, value: bytes | None, revision: int) -> None:
                seen.add(key)
                if value is None:
                    if known.pop(key, None) is not None:
                        on_change(key, None)
                elif known.get(key) != revision:
                    known[key] = revision
                    on_change(key, Entry(key, value, revision))

            feed = Feed(self.store, self.prefix, on_entry)
            await feed.start()
            try:
                await feed.wait_synced(self.idle_timeout)
            except BaseException:
                await feed.stop()
                raise
            for key in [k for k in known if k not in seen]:  # gone while we were not listening
                del known[key]
                on_change(key, None)
            self._feed = feed
            self.resyncs += 1

    async def stop(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.stop()


async def open_store(bus: Bus, bucket: str, *, create: bool = True, history: int = 5, ttl: float | None = None) -> Store:
    """Open bucket `bucket`, creating it (file storage; entries expiring after `ttl` seconds if given) when missing
    and `create` is set. Idempotent."""
    # JetStream answers 503 for a moment after nats-server starts: 7 attempts, about 6 s in all
    async for attempt in retrying(retry_on=JetStreamUnavailable, attempts=7, wait=STARTUP_BACKOFF):
        with attempt:
            return await _open_store(bus, bucket, create=create, history=history, ttl=ttl)
    raise AssertionError("not reached")


async def allow_message_ttls(store: Store) -> None:
    """Let `store`'s bucket take values with a TTL of their own (Store.update(ttl=…)). Buckets that nats-py
    created allow them from the start; one created by an older client is updated (a setting nats-server lets one
    turn on, never off). Idempotent."""
    stream = f"KV_{store.bucket}"
    try:
        async for attempt in retrying(retry_on=nats.js.errors.ServiceUnavailableError, attempts=7,
                                      wait=STARTUP_BACKOFF):
            with attempt:  # a 503 for a moment after nats-server starts
                info = await store.js.stream_info(stream)
                if not info.config.allow_msg_ttl:
                    await store.js.update_stream(dataclasses.replace(info.config, allow_msg_ttl=True))
                    log.info("KV bucket %s now allows values with a TTL of their own", store.bucket)
    except nats.js.errors.ServiceUnavailableError as exc:
        raise TransientError(f"cannot allow TTLs in KV bucket {store.bucket}: {exc}",
                             hint="is JetStream enabled on this nats-server?") from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise TransientError(f"cannot allow TTLs in KV bucket {store.bucket}: {exc}",
                                 hint="nats-server 2.11 or newer is needed") from exc


class JetStreamUnavailable(TransientError):
    """JetStream answered 503: not enabled, or not ready yet (right after nats-server started)."""


async def _open_store(bus: Bus, bucket: str, *, create: bool, history: int, ttl: float | None) -> Store:
    js = bus.js
    started = time.monotonic()
    try:
        with bus.refusable(f"$JS.API.STREAM.INFO.KV_{bucket}"):  # a refusal ends it at once, not after 5 s
            kv = await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError as exc:
        if not create:
            raise TransientError(f"KV bucket {bucket} does not exist at {bus.url}",
                                 hint="start the control plane with `fleet server` or `fleet up`") from exc
        try:
            kv = await js.create_key_value(
                config=nats.js.api.KeyValueConfig(bucket=bucket, history=history, ttl=ttl,
                                                  storage=nats.js.api.StorageType.FILE)
            )
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(bucket)  # another process created it in the meantime
        except nats.js.errors.ServiceUnavailableError as exc:  # JetStream not ready yet: open_store retries
            raise JetStreamUnavailable(f"JetStream is not ready on {bus.url} (creating KV bucket {bucket})",
                                       hint="run nats-server with -js") from exc
    except nats.js.errors.ServiceUnavailableError as exc:
        raise JetStreamUnavailable(f"JetStream is not enabled (or not ready) on {bus.url}",
                                   hint="run nats-server with -js") from exc
    except (TimeoutError, nats.errors.Error) as exc:
        refusal = bus.denied(f"$JS.API.STREAM.INFO.KV_{bucket}", started)
        if refusal is not None:
            raise PermissionDenied(f"cannot open KV bucket {bucket}: NATS refused it ({refusal})",
                                   hint="this identity may not read that bucket") from exc
        raise TransientError(f"cannot open KV bucket {bucket} at {bus.url}: {exc}") from exc
    return Store(kv, bucket, js, bus)


async def unbound_consumers(bus: Bus, bucket: str) -> list[str]:
    """The consumers of `bucket`'s stream that nobody listens to now: durable ones (fleet makes none), pull consumers
    (fleet makes none) and push consumers whose deliver subject has no subscriber. Used by `fleet server` to clear
    away consumers that readers of a bucket (admins, viewers) created and left behind."""
    stream = f"KV_{bucket}"
    found: list[str] = []
    offset = 0
    try:
        while True:
            page = await bus.js.consumers_info(stream, offset=offset or None)
            for info in page:
                cfg = info.config
                if cfg.durable_name or not cfg.deliver_subject or not info.push_bound:
                    found.append(info.name)
            if len(page) < 256:
                return found
            offset += len(page)
    except nats.js.errors.NotFoundError:
        return []  # no such bucket (yet)
    except (TimeoutError, nats.errors.Error) as exc:
        raise TransientError(f"listing the consumers of {stream} failed: {exc}") from exc


async def delete_consumer(bus: Bus, bucket: str, name: str) -> bool:
    """Delete consumer `name` of `bucket`'s stream (False: it was gone already)."""
    try:
        return bool(await bus.js.delete_consumer(f"KV_{bucket}", name))
    except nats.js.errors.NotFoundError:
        return False
    except (TimeoutError, nats.errors.Error) as exc:
        raise TransientError(f"deleting consumer {name} of KV_{bucket} failed: {exc}") from exc
