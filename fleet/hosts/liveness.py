"""Liveness at work: the monitor that marks silent hosts offline, the writer that persists what must survive a
restart, and the reminder a revoked host gets when it keeps heartbeating.

`Liveness.check()` runs `Registry.sweep`; the server's manager calls it every monitor interval. `Liveness.writer()` drains `Registry.dirty`
in small concurrent batches and writes, by compare-and-set on the host record, the status the agent reports
(active, paused, draining) and when it was last seen: on every status change and offline transition, never per
heartbeat, so LAST SEEN and the platform version survive a server restart and a storm of transitions cannot
flood the loop. Both are runnables of the server's manager (fleet.service.manager), which restarts them if they fail. Every replica may write the same transition; the second finds the record already there and
writes nothing. Revoked hosts that still heartbeat are told again (at most every REVOKE_NUDGE_S each). Both run as
runnables of fleet.service.server's manager (fleet.service.manager), which restarts them if they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.kv import Store
from fleet.bus.messages import ControlCommand, HostRecord
from fleet.errors import FleetError
from fleet.hosts.enrollment import modify_record
from fleet.hosts.registry import HostEntry, Registry

log = logging.getLogger(__name__)

WRITE_BATCH = 32
REVOKE_NUDGE_S = 5.0
LAST_SEEN_SLACK_S = 1.0  # a stored last_seen this close to the current one is not rewritten


class Liveness:
    def __init__(self, registry: Registry, hosts: Store, bus: Bus | None, *, monitor_interval: float = 0.25) -> None:
        self.registry = registry
        self.hosts = hosts
        self.bus = bus
        self.monitor_interval = monitor_interval
        self.wake = asyncio.Event()
        self._nudged: dict[str, float] = {}

    def check(self) -> None:
        """One pass of the offline monitor (fleet.service.manager.every runs it every monitor interval)."""
        self.registry.sweep()
        if self.registry.dirty or self.registry.revoked_seen:
            self.wake.set()

    async def writer(self) -> None:
        registry = self.registry
        while True:
            await self.wake.wait()
            self.wake.clear()
            while registry.dirty:
                batch = [registry.dirty.pop() for _ in range(min(WRITE_BATCH, len(registry.dirty)))]
                await asyncio.gather(*(self.persist(mid) for mid in batch))
            if registry.revoked_seen:
                await self._nudge_revoked()

    async def persist(self, machine_id: str) -> None:
        """Write the host's reported status and last-seen time into its record, if they moved."""
        entry = self.registry.entries.get(machine_id)
        if entry is None or entry.beat is None:
            return
        beat, live = entry.beat, entry.live

        def change(record: HostRecord) -> HostRecord | None:
            if record.revoked:
                return None
            update: dict[str, object] = {}
            if live and record.admin_status != beat.status:
                update["admin_status"] = beat.status
            if (update or not live) and (record.last_seen or 0.0) < beat.at_wall - LAST_SEEN_SLACK_S:
                update["last_seen"] = beat.at_wall
            if beat.version != record.version:
                update["version"] = beat.version
            return record.model_copy(update=update) if update else None

        if not self._needs_write(entry, change):
            return
        try:
            await modify_record(self.hosts, machine_id, change)
        except FleetError as exc:  # retried at the host's next transition; the registry is right meanwhile
            log.warning("could not persist the state of host %s: %s", machine_id, exc)

    @staticmethod
    def _needs_write(entry: HostEntry, change: object) -> bool:
        """Skip the store round trip when the record we hold already says it all."""
        return change(entry.record) is not None  # type: ignore[operator]

    async def _nudge_revoked(self) -> None:
        now = time.monotonic()
        seen, self.registry.revoked_seen = self.registry.revoked_seen, set()
        for mid in seen:
            if now - self._nudged.get(mid, 0.0) < REVOKE_NUDGE_S or self.bus is None:
                continue
            self._nudged[mid] = now
            with contextlib.suppress(FleetError):
                await self.bus.publish(subjects.host_control(mid), ControlCommand(action="revoke").encode())
        for mid in [m for m, t in self._nudged.items() if now - t > 10 * REVOKE_NUDGE_S]:
            del self._nudged[mid]
