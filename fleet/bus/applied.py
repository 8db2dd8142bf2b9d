"""The applied-state store and the apply lock, for the reconciler's edge (gather and apply) and the agents' watch.

Built on fleet.bus.kv.Store. `ConfigStore` is KV bucket fleet-v1-config: `snapshot()` reads every record with its
revision in one ordered watch (fast for tens of thousands of records) plus the bucket's stream revision;
`create`/`update`/`delete` are compare-and-set writes of config records that report a lost race as
fleet.errors.Conflict. `ApplyLock` is key `apply` of bucket fleet-v1-locks, whose entries expire after the bucket
TTL; the holder refreshes it while it works, so a killed apply frees it by TTL. Called by fleet.reconciler
(gather, apply, operation) and `fleet force-unlock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fleet.bus.connection import Bus
from fleet.bus.kv import Store, open_store
from fleet.bus.records import decode_record, encode_record
from fleet.bus.subjects import BUCKET_CONFIG, BUCKET_LOCKS, BUCKET_SECRETS
from fleet.errors import Conflict, FleetError, LockHeld, LockLost, PermissionDenied, TransientError

log = logging.getLogger(__name__)

APPLY_LOCK_KEY = "apply"
UNKNOWN_LOCK = "unknown"  # the ID of a lock record that does not parse
DEFAULT_LOCK_TTL = 30.0
META_KEY = "meta.applied"
PEPPER_KEY = "pepper"


async def load_pepper(bus: Bus, *, create: bool = False) -> bytes | None:
    """The pepper of enrollment key digests (bucket fleet-v1-secrets): created at random when missing and
    `create` (the fleet server does at start; concurrent creators agree: create is compare-and-set). None when this
    identity may not read it (a viewer) or, without `create`, when there is none yet."""
    try:
        store = await open_store(bus, BUCKET_SECRETS, create=create, history=1)
        entry = await store.get(PEPPER_KEY)
        if entry is None and create:
            with contextlib.suppress(Conflict):  # another replica made it first: use theirs
                await store.create(PEPPER_KEY, secrets.token_hex(32).encode())
            entry = await store.get(PEPPER_KEY)
    except PermissionDenied:
        return None
    except TransientError:
        if not create:
            return None
        raise
    if entry is None:
        return None
    try:
        pepper = bytes.fromhex(entry.value.decode())
    except (UnicodeDecodeError, ValueError):
        pepper = b""
    if len(pepper) != 32:
        raise FleetError(f"the pepper of enrollment key digests (bucket {BUCKET_SECRETS}, key {PEPPER_KEY}) is "
                         "malformed: it should be 32 random bytes in hex",
                         hint="restore it from a backup of the JetStream store; or delete that key (the fleet server "
                              "makes a new pepper at start) and run `fleet apply` again, which digests every key anew")
    return pepper


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


class ConfigStore:
    """The applied config (bucket fleet-v1-config)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @classmethod
    async def open(cls, bus: Bus) -> ConfigStore:
        return cls(await open_store(bus, BUCKET_CONFIG))

    async def snapshot(self, attempts: int = 5) -> Snapshot:
        """Every live record and the store revision, consistent (re-read if a write lands meanwhile)."""
        for _ in range(attempts):
            before = await self.store.revision()
            records: dict[str, StoredRecord] = {}
            meta, meta_rev = None, 0
            for entry in (await self.store.snapshot()) if before else []:
                if entry.key == META_KEY:
                    meta, meta_rev = json.loads(entry.value), entry.revision
                    continue
                rec = decode_record(entry.value)
                records[entry.key] = StoredRecord(rec.kind, rec.id, rec.spec, entry.revision)
            if await self.store.revision() == before:
                return Snapshot(records, before, meta, meta_rev)
        raise Conflict("the applied state kept changing while it was read", hint="another apply is running? retry")

    async def get(self, key: str) -> StoredRecord | None:
        entry = await self.store.get(key)
        if entry is None:
            return None
        rec = decode_record(entry.value)
        return StoredRecord(rec.kind, rec.id, rec.spec, entry.revision)

    async def create(self, kind: str, ident: str, spec: dict[str, Any]) -> int:
        return await self.store.create(f"{kind}.{ident}", encode_record(kind, ident, spec))

    async def update(self, kind: str, ident: str, spec: dict[str, Any], last: int) -> int:
        return await self.store.update(f"{kind}.{ident}", encode_record(kind, ident, spec), last=last)

    async def delete(self, kind: str, ident: str, last: int) -> None:
        await self.store.delete(f"{kind}.{ident}", last=last)

    async def write_meta(self, meta: dict[str, Any]) -> int:
        return await self.store.put(META_KEY, json.dumps(meta, sort_keys=True).encode())


def _printable(value: Any, limit: int) -> str:
    """Text from the store as it may be shown on a terminal: printable characters only, bounded."""
    return "".join(c for c in str(value)[:limit] if c.isprintable())


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


class ApplyLock:
    """One writer at a time (bucket fleet-v1-locks, TTL-expiring entries refreshed by the holder)."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self.info: LockInfo | None = None
        self.lost: str | None = None
        self._payload = b""
        self._refresher: asyncio.Task | None = None
        self._renewed = 0.0  # monotonic: the last write of the lock that landed (taken or renewed)

    @classmethod
    async def open(cls, bus: Bus, ttl: float | None = None) -> ApplyLock:
        """The lock bucket; created with `ttl` (default FLEET_LOCK_TTL or 30 s), else the existing bucket's TTL."""
        if ttl is None:
            raw = os.environ.get("FLEET_LOCK_TTL", str(DEFAULT_LOCK_TTL))
            try:
                ttl = float(raw)
            except ValueError:
                ttl = 0.0
            if not ttl > 0:
                raise FleetError(f"FLEET_LOCK_TTL={raw!r} is not a positive number of seconds")
        store = await open_store(bus, BUCKET_LOCKS, history=1, ttl=ttl)
        return cls(store, (await store.ttl()) or ttl)

    async def current(self) -> LockInfo | None:
        """Who holds the lock. A lock record that does not parse is held by "unknown" (its ID is `unknown`, so
        `fleet force-unlock unknown` clears it; otherwise it expires by TTL like any other)."""
        entry = await self.store.get(APPLY_LOCK_KEY)
        if entry is None or not entry.value:
            return None
        try:
            data = json.loads(entry.value)
            return LockInfo(_printable(data["id"], 64), _printable(data["holder"], 200),
                            _printable(data.get("command", ""), 200), float(data.get("acquired_at", 0.0)),
                            entry.revision)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return LockInfo(UNKNOWN_LOCK, "unknown (a malformed lock record)", "", time.time(), entry.revision)

    async def acquire(self, command: str, *, timeout: float = 0.0) -> LockInfo:
        """Take the lock or raise LockHeld (after waiting up to `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        info = LockInfo(uuid.uuid4().hex[:12], f"{os.environ.get('USER', 'user')}@{socket.gethostname()} pid {os.getpid()}",
                        command, time.time())
        payload = json.dumps({"id": info.id, "holder": info.holder, "command": command,
                              "acquired_at": info.acquired_at}).encode()
        while True:
            try:
                rev = await self.store.create(APPLY_LOCK_KEY, payload)
            except Conflict:
                held = await self.current()
                if held is None:
                    continue  # expired or released in between: try again
                if time.monotonic() >= deadline:
                    raise LockHeld(f"the apply lock is held: {held.describe()}", info=held,
                                   hint=f"wait with --lock-timeout, or if that process is gone: fleet force-unlock {held.id}"
                                   ) from None
                await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
                continue
            self.info = LockInfo(info.id, info.holder, info.command, info.acquired_at, rev)
            self._payload = payload
            self.lost = None
            self._renewed = time.monotonic()
            self._refresher = asyncio.create_task(self._refresh())
            return self.info

    async def refresh(self) -> None:
        """Renew the lock now (compare-and-set on our own revision); LockLost if it is no longer ours."""
        if self.info is None:
            raise LockLost("the apply lock is not held")
        if self.lost:
            raise LockLost(self.lost)
        try:
            rev = await self.store.update(APPLY_LOCK_KEY, self._payload, last=self.info.revision)
        except FleetError as exc:
            why = exc.message
            if isinstance(exc, TransientError):
                if time.monotonic() - self._renewed < self.ttl:  # not expired yet: the next refresh tries again
                    raise
                why = f"not renewed within its {self.ttl:g}s TTL ({exc.message})"
            self.lost = f"lost the apply lock {self.info.id}: {why}"
            raise LockLost(self.lost, hint="another apply may have taken it after it expired; run `fleet plan` again") from exc
        self._renewed = time.monotonic()
        self.info = LockInfo(self.info.id, self.info.holder, self.info.command, self.info.acquired_at, rev)

    def check(self) -> None:
        """Raise LockLost if a background refresh failed (called by apply between batches)."""
        if self.lost:
            raise LockLost(self.lost, hint="another apply may have taken it after it expired; run `fleet plan` again")

    async def _refresh(self) -> None:
        while self.info is not None and not self.lost:
            await asyncio.sleep(self.ttl / 3)
            if self.info is None:
                return
            with contextlib.suppress(LockLost, TransientError):  # transient: tried again at the next tick
                await self.refresh()

    async def release(self) -> None:
        info, self.info = self.info, None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refresher
        if info is not None:
            with contextlib.suppress(FleetError):  # gone already: it expires by TTL anyway
                await self.store.delete(APPLY_LOCK_KEY, last=info.revision)

    async def force_unlock(self, lock_id: str) -> LockInfo:
        held = await self.current()
        if held is None:
            raise FleetError(f"no apply lock is held (looked for {lock_id})")
        if held.id != lock_id:
            raise FleetError(f"the apply lock is {held.id}, not {lock_id}: {held.describe()}",
                             hint=f"fleet force-unlock {held.id}")
        await self.store.delete(APPLY_LOCK_KEY, last=held.revision)
        return held
