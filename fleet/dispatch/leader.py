"""Which `fleet server` replica dispatches: a lease in KV (bucket fleet-v1-dispatch, key `leader`, entries expire
after TTL_S) taken by `create` and renewed every RENEW_S by compare-and-set on its own revision.

One replica holds it and dispatches; the others wait and take over within about TTL_S when the holder dies (a
SIGKILLed replica stops renewing; its entry expires). A holder that cannot renew in time steps down before the
entry can expire (it stops at last renewal + TTL_S - MARGIN_S by its own clock), so two replicas never dispatch at
once; and every session write is a compare-and-set on the session's revision, so even a holder that lingered could
not overwrite the new one's work. `Lease.tick()` is one step (take it if free, else renew it): the manager of
`fleet server` (fleet.service.manager) calls it every RENEW_S from a task of its own, and starts and stops the
leader's runnables (fleet.dispatch.dispatcher, the janitor) in other tasks, so that no takeover, however long, can
delay a renewal. Used by fleet.service.server through that manager.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

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
    renew_every = RENEW_S

    def __init__(self, store: Store, holder: str) -> None:
        self.store = store
        self.holder = holder
        self.revision: int | None = None
        self.renewed_at = 0.0
        self.renewals = 0
        #: why this replica last stopped holding it (for the log and `fleet ping`)
        self.lost_why: str | None = None
        self._payload = json.dumps({"holder": holder}).encode()

    @classmethod
    async def open(cls, bus: Bus, holder: str) -> Lease:
        store = await open_store(bus, subjects.BUCKET_DISPATCH, history=1, ttl=TTL_S)
        return cls(store, holder)

    @property
    def held(self) -> bool:
        return self.revision is not None and time.monotonic() < self.renewed_at + TTL_S - MARGIN_S

    async def tick(self) -> bool:
        """Take the lease if it is free, renew it if it is ours; whether this replica holds it now. A failure to
        reach the store raises its FleetError (the lease is kept until `held` says its time is up)."""
        if self.revision is None:
            with contextlib.suppress(Conflict):
                self.revision = await self.store.create(KEY, self._payload)
                self.renewed_at = time.monotonic()
                self.lost_why = None
                log.info("this replica (%s) now dispatches", self.holder)
        elif self.held:
            try:
                self.revision = await self.store.update(KEY, self._payload, last=self.revision)
                self.renewed_at = time.monotonic()
                self.renewals += 1
            except Conflict:
                self._drop("another replica holds the lease")
        if self.revision is not None and not self.held:
            self._drop("it could not renew the lease in time")
        return self.held

    def expire_if_late(self) -> bool:
        """After a failed tick: drop the lease if its time is up; whether it is still held."""
        if self.revision is not None and not self.held:
            self._drop("it could not renew the lease in time")
        return self.held

    def _drop(self, why: str) -> None:
        log.warning("this replica (%s) stops dispatching: %s", self.holder, why)
        self.revision = None
        self.lost_why = why

    async def release(self) -> None:
        """Give the lease up at once (a clean shutdown), so that another replica takes over without waiting."""
        if self.revision is not None:
            rev, self.revision = self.revision, None
            with contextlib.suppress(FleetError):
                await self.store.delete(KEY, last=rev)
