"""The applied-state store and the apply lock, for the reconciler's edge (gather and apply).

`ConfigStore` wraps KV bucket fleet-v1-config: `snapshot()` reads every record with its revision in one ordered
watch (fast for tens of thousands of records) plus the bucket's stream revision; `create`/`update`/`delete` are
compare-and-set writes that report a lost race as fleet.errors.Conflict. `ApplyLock` is one key in bucket
fleet-v1-locks whose entries expire after the bucket TTL; the holder refreshes it while it works, so a killed
apply frees it by TTL. Called by fleet.reconciler.gather / .apply and `fleet force-unlock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.api
import nats.js.errors

from fleet.bus.connection import Bus
from fleet.bus.records import decode_record, encode_record
from fleet.bus.subjects import BUCKET_CONFIG
from fleet.errors import Conflict, FleetError, TransientError

BUCKET_LOCKS = "fleet-v1-locks"
APPLY_LOCK_KEY = "apply"
DEFAULT_LOCK_TTL = 30.0
META_KEY = "meta.applied"


@dataclass(frozen=True)
class StoredRecord:
    kind: str
    id: str
    spec: dict[str, Any]
    revision: int


@dataclass(frozen=True)
class Snapshot:
    records: dict[str, StoredRecord]  # by KV key (`kind.id`), meta records excluded
    revision: int  # last sequence of the bucket's stream: moves on every write, deletes included
    meta: dict[str, Any] | None = None
    meta_revision: int = 0


def _wrap(exc: BaseException, what: str) -> TransientError:
    return TransientError(f"{what} failed: {exc}")


async def _bucket(bus: Bus, name: str, *, ttl: float | None = None, history: int = 5) -> Any:
    js = bus.js
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    except nats.js.errors.ServiceUnavailableError as exc:
        raise TransientError(f"JetStream is not enabled on {bus.url}", hint="run nats-server with -js") from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise _wrap(exc, f"opening KV bucket {name}") from exc
    try:
        return await js.create_key_value(config=nats.js.api.KeyValueConfig(
            bucket=name, history=history, ttl=ttl, storage=nats.js.api.StorageType.FILE))
    except nats.js.errors.BadRequestError:
        return await js.key_value(name)
    except (TimeoutError, nats.errors.Error) as exc:
        raise _wrap(exc, f"creating KV bucket {name}") from exc


class ConfigStore:
    """The applied config (bucket fleet-v1-config)."""

    def __init__(self, bus: Bus, kv: Any) -> None:
        self.bus = bus
        self._kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> ConfigStore:
        return cls(bus, await _bucket(bus, BUCKET_CONFIG))

    async def _last_seq(self) -> int:
        try:
            info = await self.bus.js.stream_info(f"KV_{BUCKET_CONFIG}")
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, "reading the applied-state revision") from exc
        return int(info.state.last_seq)

    async def snapshot(self, attempts: int = 5) -> Snapshot:
        """Every live record and the store revision, consistent (re-read if a write lands meanwhile)."""
        for _ in range(attempts):
            before = await self._last_seq()
            records: dict[str, StoredRecord] = {}
            meta, meta_rev = None, 0
            if before:
                try:
                    watcher = await self._kv.watch(">", ignore_deletes=True)
                    async for entry in watcher:
                        if entry is None:
                            break
                        if entry.value is None or entry.operation is not None:
                            continue
                        if entry.key == META_KEY:
                            meta, meta_rev = json.loads(entry.value), entry.revision
                            continue
                        rec = decode_record(entry.value)
                        records[entry.key] = StoredRecord(rec.kind, rec.id, rec.spec, entry.revision)
                    await watcher.stop()
                except (TimeoutError, nats.errors.Error) as exc:
                    raise _wrap(exc, "reading the applied state") from exc
            if await self._last_seq() == before:
                return Snapshot(records, before, meta, meta_rev)
        raise Conflict("the applied state kept changing while it was read", hint="another apply is running? retry")

    async def get(self, key: str) -> StoredRecord | None:
        try:
            entry = await self._kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, f"reading {key}") from exc
        if entry.value is None:
            return None
        rec = decode_record(entry.value)
        return StoredRecord(rec.kind, rec.id, rec.spec, entry.revision)

    async def create(self, kind: str, ident: str, spec: dict[str, Any]) -> int:
        try:
            return await self._kv.create(f"{kind}.{ident}", encode_record(kind, ident, spec))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{kind}.{ident} already exists") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, f"creating {kind}.{ident}") from exc

    async def update(self, kind: str, ident: str, spec: dict[str, Any], last: int) -> int:
        try:
            return await self._kv.update(f"{kind}.{ident}", encode_record(kind, ident, spec), last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{kind}.{ident} changed since revision {last}") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, f"updating {kind}.{ident}") from exc

    async def delete(self, kind: str, ident: str, last: int) -> None:
        try:
            await self._kv.delete(f"{kind}.{ident}", last=last)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(f"{kind}.{ident} changed since revision {last}") from exc
        except nats.js.errors.APIError as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):
                raise Conflict(f"{kind}.{ident} changed since revision {last}") from exc
            raise _wrap(exc, f"deleting {kind}.{ident}") from exc
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, f"deleting {kind}.{ident}") from exc

    async def write_meta(self, meta: dict[str, Any]) -> int:
        try:
            return await self._kv.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, "recording the apply") from exc


@dataclass(frozen=True)
class LockInfo:
    id: str
    holder: str
    command: str
    acquired_at: float
    revision: int = 0

    def describe(self) -> str:
        age = max(0.0, time.time() - self.acquired_at)
        return f"lock {self.id} held by {self.holder} since {age:.0f}s ago ({self.command})"


class LockHeld(FleetError):
    """Another process holds the apply lock."""

    def __init__(self, info: LockInfo) -> None:
        super().__init__(f"the apply lock is held: {info.describe()}",
                         hint=f"wait with --lock-timeout, or if that process is gone: fleet force-unlock {info.id}")
        self.info = info


class ApplyLock:
    """One writer at a time (bucket fleet-v1-locks, TTL-expiring entries refreshed by the holder)."""

    def __init__(self, bus: Bus, kv: Any, ttl: float) -> None:
        self.bus = bus
        self._kv = kv
        self.ttl = ttl
        self.info: LockInfo | None = None
        self._refresher: asyncio.Task | None = None

    @classmethod
    async def open(cls, bus: Bus, ttl: float | None = None) -> ApplyLock:
        ttl = ttl or float(os.environ.get("FLEET_LOCK_TTL", DEFAULT_LOCK_TTL))
        kv = await _bucket(bus, BUCKET_LOCKS, ttl=ttl, history=1)
        try:
            status = await kv.status()
            ttl = status.ttl or ttl
        except (TimeoutError, nats.errors.Error):
            pass
        return cls(bus, kv, ttl)

    async def current(self) -> LockInfo | None:
        try:
            entry = await self._kv.get(APPLY_LOCK_KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise _wrap(exc, "reading the apply lock") from exc
        if not entry.value:
            return None
        data = json.loads(entry.value)
        return LockInfo(data["id"], data["holder"], data.get("command", ""), data.get("acquired_at", 0.0), entry.revision)

    async def acquire(self, command: str, *, timeout: float = 0.0) -> LockInfo:
        """Take the lock or raise LockHeld (after waiting up to `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        info = LockInfo(uuid.uuid4().hex[:12], f"{os.environ.get('USER', 'user')}@{socket.gethostname()} pid {os.getpid()}",
                        command, time.time())
        payload = json.dumps(info.__dict__ | {"revision": 0}).encode()
        while True:
            try:
                rev = await self._kv.create(APPLY_LOCK_KEY, payload)
                self.info = LockInfo(info.id, info.holder, info.command, info.acquired_at, rev)
                self._refresher = asyncio.create_task(self._refresh(payload))
                return self.info
            except nats.js.errors.KeyWrongLastSequenceError:
                held = await self.current()
                if held is None:
                    continue
                if time.monotonic() >= deadline:
                    raise LockHeld(held) from None
                await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
            except (TimeoutError, nats.errors.Error) as exc:
                raise _wrap(exc, "taking the apply lock") from exc

    async def _refresh(self, payload: bytes) -> None:
        while self.info is not None:
            await asyncio.sleep(self.ttl / 3)
            if self.info is None:
                return
            try:
                rev = await self._kv.update(APPLY_LOCK_KEY, payload, last=self.info.revision)
                self.info = LockInfo(self.info.id, self.info.holder, self.info.command, self.info.acquired_at, rev)
            except Exception:  # lost it (force-unlocked) or NATS is away: stop refreshing; CAS writes still protect
                return

    async def release(self) -> None:
        info, self.info = self.info, None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresher
        if info is None:
            return
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
            await self._kv.delete(APPLY_LOCK_KEY, last=info.revision)

    async def force_unlock(self, lock_id: str) -> LockInfo:
        held = await self.current()
        if held is None:
            raise FleetError(f"no apply lock is held (looked for {lock_id})")
        if held.id != lock_id:
            raise FleetError(f"the apply lock is {held.id}, not {lock_id}: {held.describe()}",
                             hint=f"fleet force-unlock {held.id}")
        try:
            await self._kv.delete(APPLY_LOCK_KEY, last=held.revision)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
            raise _wrap(exc, "removing the apply lock") from exc
        return held


class RecordWatch:
    """Watch some applied records (e.g. `pool.pool-local-main`, `host.<id>`): `on_change(key, record | None)` is
    called with each record's current value first, then on every change (None when it is deleted).

    Used by the agent to converge on applied pool capacity, labels and its declared status. `restart()` after a
    reconnection re-reads the current values (an ordered consumer may not survive a server restart).
    """

    def __init__(self, bus: Bus, keys: list[str], on_change: Any) -> None:
        self.bus = bus
        self.keys = keys
        self.on_change = on_change
        self._tasks: list[asyncio.Task] = []
        self._watchers: list[Any] = []

    async def start(self) -> None:
        kv = await _bucket(self.bus, BUCKET_CONFIG)
        for key in self.keys:
            try:
                watcher = await kv.watch(key)
            except (TimeoutError, nats.errors.Error) as exc:
                raise _wrap(exc, f"watching {key}") from exc
            self._watchers.append(watcher)
            self._tasks.append(asyncio.create_task(self._pump(key, watcher)))

    async def _pump(self, key: str, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            record = None
            if entry.value and entry.operation is None:
                try:
                    rec = decode_record(entry.value)
                    record = StoredRecord(rec.kind, rec.id, rec.spec, entry.revision)
                except FleetError:
                    continue
            with contextlib.suppress(Exception):
                await self.on_change(key, record)

    async def stop(self) -> None:
        for watcher in self._watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._watchers = [], []

    async def restart(self) -> None:
        await self.stop()
        await self.start()
