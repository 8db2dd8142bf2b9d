"""Which `fleet server` replica dispatches: a lease in KV (bucket fleet-v1-dispatch, key `leader`, entries expire
after TTL_S) taken by `create` and renewed every RENEW_S by compare-and-set on its own revision.

One replica holds it and dispatches; the others wait and take over within about TTL_S when the holder dies (a
SIGKILLed replica stops renewing; its entry expires). A holder that cannot renew in time steps down before the
entry can expire (it stops at last renewal + TTL_S - MARGIN_S by its own clock), so two replicas never dispatch at
once; and every session write is a compare-and-set on the session's revision, so even a holder that lingered could
not overwrite the new one's work. Used by fleet.service.server with fleet.dispatch.dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.kv import Store, open_store
from fleet.errors import Conflict, FleetError

log = logging.getLogger(__name__)

TTL_S = 3.0
RENEW_S = 1.0
MARGIN_S = 0.75
KEY = "leader"


class Lease:
    def __init__(self, store: Store, holder: str, on_elected: Callable[[], Awaitable[None]],
                 on_lost: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self.holder = holder
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.revision: int | None = None
        self.renewed_at = 0.0

    @classmethod
    async def open(cls, bus: Bus, holder: str, on_elected: Callable[[], Awaitable[None]],
                   on_lost: Callable[[], Awaitable[None]]) -> Lease:
        store = await open_store(bus, subjects.BUCKET_DISPATCH, history=1, ttl=TTL_S)
        return cls(store, holder, on_elected, on_lost)

    @property
    def held(self) -> bool:
        return self.revision is not None and time.monotonic() < self.renewed_at + TTL_S - MARGIN_S

    async def run(self) -> None:
        payload = json.dumps({"holder": self.holder}).encode()
        while True:
            try:
                if self.revision is None:
                    with contextlib.suppress(Conflict):
                        self.revision = await self.store.create(KEY, payload)
                        self.renewed_at = time.monotonic()
                        log.info("this replica (%s) now dispatches", self.holder)
                        await self.on_elected()
                else:
                    try:
                        self.revision = await self.store.update(KEY, payload, last=self.revision)
                        self.renewed_at = time.monotonic()
                    except Conflict:
                        await self._lose("another replica holds the lease")
            except FleetError as exc:
                log.warning("dispatcher lease: %s", exc.message)
            if self.revision is not None and not self.held:
                await self._lose("it could not renew the lease in time")
            await asyncio.sleep(RENEW_S if self.revision is not None else RENEW_S / 2)

    async def _lose(self, why: str) -> None:
        log.warning("this replica (%s) stops dispatching: %s", self.holder, why)
        self.revision = None
        await self.on_lost()

    async def release(self) -> None:
        """Give the lease up at once (a clean shutdown), so that another replica takes over without waiting."""
        if self.revision is not None:
            rev, self.revision = self.revision, None
            with contextlib.suppress(FleetError):
                await self.store.delete(KEY, last=rev)
