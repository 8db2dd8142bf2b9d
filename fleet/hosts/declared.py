"""The declared-status controller: a host that fleet.yaml declares paused, draining or active (`hosts:`) is told so.

Level-based: every INTERVAL_S it compares, for each declared host that is live, the status its heartbeats report
with the declared one, and sends the agent the control command that closes the gap (on the host's own control
subject), at most once per RETRY_S per host, a few at a time. A host that was offline gets it when it returns; a
host is also told at (re)registration, in its JoinReply. Agents never read the store for this. Every replica
runs it: the commands are idempotent. Run by fleet.service.server's manager; `fleet apply` waits until hosts
converge.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import ControlCommand
from fleet.errors import FleetError
from fleet.hosts.registry import Registry

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
RETRY_S = 3.0
CONCURRENCY = 16
ACTIONS = {"active": "resume", "paused": "pause", "draining": "drain"}


class DeclaredStatus:
    def __init__(self, registry: Registry, bus: Bus) -> None:
        self.registry = registry
        self.bus = bus
        self._sent: dict[str, float] = {}
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task] = set()

    def gaps(self) -> list[tuple[str, str]]:
        """(machine ID, action) for every live declared host whose reported status differs from its declaration."""
        out = []
        for mid, want in self.registry.config.declared.items():
            entry = self.registry.entries.get(mid)
            if entry is None or not entry.live or entry.beat is None or entry.record.revoked:
                continue
            if entry.beat.status != want:
                out.append((mid, ACTIONS[want]))
        return out

    def tick(self) -> None:
        """One pass: send what closes each gap not told within RETRY_S (the server's manager runs it every
        INTERVAL_S: fleet.service.manager.every)."""
        now = time.monotonic()
        for mid, action in self.gaps():
            if now - self._sent.get(mid, 0.0) < RETRY_S:
                continue
            self._sent[mid] = now
            task = asyncio.get_running_loop().create_task(self._tell(mid, action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tell(self, mid: str, action: str) -> None:
        async with self._sem:
            log.info("host %s: fleet.yaml declares it %s; sending %s", mid, self.registry.config.declared.get(mid),
                     action)
            try:
                await self.bus.request(subjects.host_control(mid), ControlCommand(action=action).encode(),  # type: ignore[arg-type]
                                       timeout=2.0, what=f"host {mid}")
            except FleetError as exc:
                log.info("host %s did not take %s: %s", mid, action, exc)
