"""JetStream KV helpers: open-or-create buckets, a JSON record codec, compare-and-set and counters.

Used by fleet.service (host registry, enrollment counters, applied config), by `fleet keys` and later by the
reconciler. Writes to contested keys go through `create` (only if absent) and `update(last=revision)`; a lost
race raises fleet.errors.Conflict, a missing key returns None. nats' own exceptions never leave this module.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.api
import nats.js.errors

from fleet.bus.connection import Bus
from fleet.errors import Conflict, TransientError


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    revision: int

    def json(self) -> Any:
        return json.loads(self.value)


class Store:
    """One KV bucket."""

    def __init__(self, kv: Any, bucket: str) -> None:
        self._kv = kv
        self.bucket = bucket

    async def get(self, key: str) -> Entry | None:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV get {self.bucket}/{key} failed: {exc}") from exc
        if entry.value is None:
            return None
        return Entry(key, entry.value, entry.revision)

    async def put(self, key: str, value: bytes) -> int:
        """Unconditional write: only for keys nobody else writes."""
        try:
            return await self._kv.put(key, value)
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV put {self.bucket}/{key} failed: {exc}") from exc

    async def create(self, key: str, value: bytes) -> int:
        """Write only if `key` does not exist; Conflict otherwise."""
        try:
            return await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} already exists") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV create {self.bucket}/{key} failed: {exc}") from exc

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Write only if the key is still at revision `last`; Conflict otherwise."""
        try:
            return await self._kv.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV update {self.bucket}/{key} failed: {exc}") from exc

    async def delete(self, key: str, last: int | None = None) -> None:
        """Delete `key`; with `last`, only if it is still at that revision (Conflict otherwise)."""
        try:
            await self._kv.delete(key, last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):  # wrong last sequence, as a plain API error
                raise Conflict(f"{self.bucket}/{key} changed (expected revision {last})") from exc
            raise TransientError(f"KV delete {self.bucket}/{key} failed: {exc}") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV delete {self.bucket}/{key} failed: {exc}") from exc

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

    async def keys(self, prefix: str = "") -> list[str]:
        try:
            keys = await self._kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV keys {self.bucket} failed: {exc}") from exc
        return sorted(k for k in keys if k.startswith(prefix))

    async def revision(self) -> int:
        """The bucket's last stream sequence: moves on every write, deletes included (0: never written)."""
        try:
            status = await self._kv.status()
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV status {self.bucket} failed: {exc}") from exc
        return int(status.stream_info.state.last_seq)

    async def snapshot(self, prefix: str = "", *, idle_timeout: float = 10.0) -> list[Entry]:
        """Every live entry (latest revision of each key starting with `prefix`) in one ordered watch.

        One pass over the bucket instead of keys() plus one get per key: `fleet server` loads a registry of
        100k hosts this way at start. Entries come in stream order. TransientError if the stream stalls for
        `idle_timeout` seconds.
        """
        out: list[Entry] = []
        try:
            watcher = await self._kv.watch(">", ignore_deletes=True)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(idle_timeout) as deadline:
                    async for entry in watcher:
                        if entry is None:  # the watcher's marker: every current value was delivered
                            break
                        deadline.reschedule(loop.time() + idle_timeout)
                        if entry.value is None or entry.operation is not None or not entry.key.startswith(prefix):
                            continue
                        out.append(Entry(entry.key, entry.value, entry.revision))
            finally:
                await watcher.stop()
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"KV snapshot {self.bucket} failed: {exc}") from exc
        return out

    async def entries(self, prefix: str = "") -> list[Entry]:
        out = []
        for key in await self.keys(prefix):
            entry = await self.get(key)
            if entry is not None:
                out.append(entry)
        return out

    async def increment(self, key: str, *, limit: int | None = None, attempts: int = 50) -> int | None:
        """Add one to the counter at `key` by compare-and-set; None (and no change) if it is at `limit`.

        N concurrent callers never push the counter past `limit`: each write is conditional on the
        revision it read, and a loser re-reads and retries.
        """
        for _ in range(attempts):
            entry = await self.get(key)
            current = int(entry.value) if entry is not None else 0
            if limit is not None and current >= limit:
                return None
            try:
                if entry is None:
                    await self.create(key, str(current + 1).encode())
                else:
                    await self.update(key, str(current + 1).encode(), last=entry.revision)
                return current + 1
            except Conflict:
                await asyncio.sleep(0.005)
        raise Conflict(f"{self.bucket}/{key}: too much contention, gave up after {attempts} attempts")


async def open_store(bus: Bus, bucket: str, *, create: bool = True, history: int = 5, ttl: float | None = None) -> Store:
    """Open bucket `bucket`, creating it (file storage; entries expiring after `ttl` seconds if given) when missing
    and `create` is set. Idempotent."""
    js = bus.js
    try:
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
    except nats.js.errors.ServiceUnavailableError as exc:
        raise TransientError(f"JetStream is not enabled on {bus.url}", hint="run nats-server with -js") from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise TransientError(f"cannot open KV bucket {bucket} at {bus.url}: {exc}") from exc
    return Store(kv, bucket)
