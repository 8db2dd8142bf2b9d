"""The dispatcher's hosts as the scheduler reads them. Pure.

`DispatchHost` is what dispatch keeps of a host: what the scheduler reads (tenant, pools, labels, models, status,
slots, `used`: fleet.scheduler.SlotHost) plus the sessions the leader gave it, which the dispatcher needs to
re-queue them when the host goes away. `dispatch_host()` makes one from a registry host (fleet.hosts.model.Host),
keeping the sessions of the view it replaces. The dispatcher (fleet.dispatch.dispatcher) keeps them in its
fleet.scheduler.Snapshot and places sessions only through fleet.scheduler.schedule: there are no placement rules
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class DispatchHost:
    machine_id: str
    tenant: str
    pools: tuple[str, ...]
    labels: frozenset[str]
    models: frozenset[str]
    status: str
    slots: int
    hostname: str = ""
    sessions: set[str] = field(default_factory=set)
    version: int = 0

    @property
    def used(self) -> int:
        return len(self.sessions)

    @property
    def free(self) -> int:
        return self.slots - len(self.sessions)


def dispatch_host(host: Any, current: DispatchHost | None = None) -> DispatchHost:
    """The dispatcher's view of registry host `host` (a fleet.hosts.model.Host), keeping `current`'s sessions and
    bumping its version (so the scheduler's index re-ranks it)."""
    view = DispatchHost(host.machine_id, host.tenant, tuple(host.pools), frozenset(host.labels),
                        frozenset(host.models), host.status, host.max_sessions, host.hostname)
    if current is not None:
        view.sessions, view.version = current.sessions, current.version + 1
    return view
