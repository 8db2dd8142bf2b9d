"""Paged host snapshots, the server side of `fleet.v1.api.hosts.page` (the client side is fleet.service.client).

A first request (no snapshot named) captures every host as of now (fleet.hosts.registry.Registry.capture: sorted
by machine ID, immutable parts) and answers its first page; later requests name the snapshot and get rows
[offset, offset+limit) of that same moment, from the replica that holds it. Rows are built per page (100k hosts
never sit in memory twice), in the columns of fleet.hosts.model.HOST_COLUMNS, and a page is cut short to stay
under the NATS max_payload. Snapshots expire TTL_S after their last use; at most MAX_SNAPSHOTS are kept (the
least recently used goes first), so no client can make the server hold unbounded memory. Used by `fleet list`,
`fleet plan` and everything else that reads many hosts; implemented once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fleet.bus.messages import PROTOCOL_VERSION, HostsPageRequest
from fleet.errors import SnapshotExpired
from fleet.hosts.model import HOST_COLUMNS
from fleet.hosts.registry import Beat, Registry

TTL_S = 30.0
MAX_SNAPSHOTS = 8


@dataclass
class Snapshot:
    id: str
    items: list[tuple[Any, Beat | None, bool]]
    used: float


class Snapshots:
    def __init__(self, registry: Registry, server_id: str) -> None:
        self.registry = registry
        self.server_id = server_id
        self._held: dict[str, Snapshot] = {}

    def page(self, req: HostsPageRequest, budget: int, now: float | None = None) -> bytes:
        """The encoded ApiReply with rows [offset, offset+limit) of the named (or a new) snapshot."""
        now = time.monotonic() if now is None else now
        for sid in [sid for sid, snap in self._held.items() if now - snap.used > TTL_S]:
            del self._held[sid]
        if req.snapshot is None:
            snap = self._keep(Snapshot(uuid.uuid4().hex[:12], self.registry.capture(), now))
        else:
            found = self._held.get(req.snapshot)
            if found is None:
                raise SnapshotExpired(f"host snapshot {req.snapshot} is unknown or expired; take a new one")
            snap = found
            snap.used = now
        build = self.registry.build
        rows = [build(*item).to_row() for item in snap.items[req.offset:req.offset + req.limit]]
        return self._encode(snap, req.offset, rows, budget)

    def _keep(self, snap: Snapshot) -> Snapshot:
        while len(self._held) >= MAX_SNAPSHOTS:
            del self._held[min(self._held, key=lambda sid: self._held[sid].used)]
        self._held[snap.id] = snap
        return snap

    def _encode(self, snap: Snapshot, offset: int, rows: list[list[Any]], budget: int) -> bytes:
        """As many of `rows` as fit in `budget` bytes (at least one)."""
        while True:
            data = {"snapshot": snap.id, "server": self.server_id, "total": len(snap.items), "offset": offset,
                    "columns": HOST_COLUMNS, "rows": rows}
            payload = json.dumps({"v": PROTOCOL_VERSION, "ok": True, "data": data}, separators=(",", ":")).encode()
            if len(payload) <= budget or len(rows) <= 1:
                return payload
            rows = rows[:max(1, int(len(rows) * budget / len(payload) * 0.95))]
