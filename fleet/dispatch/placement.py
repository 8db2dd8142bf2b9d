"""Where the leader's sessions are: its hosts (fleet.scheduler.HostState, each with the sessions the leader gave it),
the scheduler's snapshot of them with the applied pools and routes, and the pending queue. No I/O.

One host model: a host here is the scheduler's own `HostState` (made by `HostState.tracked` from a registry host,
keeping the sessions of the view it replaces); there are no placement rules here (those are fleet.scheduler's).
Shared by the dispatcher (fleet.dispatch.dispatcher: host changes, submits, passes), which replaces it whole when
it takes over, and the plan applier (fleet.dispatch.applier: reservations and releases).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.dispatch.queue import GroupKey, PendingQueue
from fleet.scheduler import HostState, Snapshot

GONE_STATUSES = frozenset({"offline", "revoked"})  # a host in one of these has lost its sessions


def group_key(record: Any) -> GroupKey:
    """The pending group of a session (fleet.bus.messages.SessionRecord): what it asks for."""
    return (record.project, frozenset(record.labels), record.model)


def note_reason(where: Placements, key: GroupKey, reason: Any) -> None:
    """The scheduler's reason (fleet.scheduler.Reason) for the head of pending group `key`: the group keeps it."""
    g = where.pending.groups.get(key)
    if g is not None:
        g.reason, g.wait_kind, g.wait_pool = reason.message, reason.kind, reason.pool


@dataclass(eq=False)
class Placements:
    hosts: dict[str, HostState] = field(default_factory=dict)
    snapshot: Snapshot = field(default_factory=Snapshot)
    pending: PendingQueue = field(default_factory=PendingQueue)
    on_release: Callable[[], None] = lambda: None  # a slot opened: a dispatch pass is wanted

    def reserve(self, host: HostState, session_id: str) -> None:
        host.sessions.add(session_id)
        self.rank(host)

    def release(self, host_id: str | None, session_id: str) -> None:
        host = self.hosts.get(host_id or "")
        if host is not None and session_id in host.sessions:
            host.sessions.discard(session_id)
            self.rank(host)
            self.on_release()

    def rank(self, host: HostState) -> None:
        host.version += 1
        self.snapshot.rank(host)

    def enqueue(self, record: Any) -> None:
        self.pending.add(record.id, group_key(record), record.priority, seq=int(record.submitted_at * 1_000_000))

    def put_host(self, host: Any) -> HostState:
        """Our view of registry host `host` (fleet.hosts.model.Host), in place of the one it replaces."""
        view = HostState.tracked(host, self.hosts.get(host.machine_id))
        self.hosts[host.machine_id] = view
        self.snapshot.put_host(view)
        return view

    def drop_host(self, machine_id: str) -> HostState | None:
        view = self.hosts.pop(machine_id, None)
        if view is not None:
            self.snapshot.drop_host(machine_id)
        return view
