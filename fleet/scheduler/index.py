"""The scheduler's fast path: the active hosts of one pool in a heap by load. Pure.

`PoolIndex` holds the dispatchable hosts of one pool ordered by load (sessions / slots, ties broken at random) with
lazy deletion, so that picking the least loaded host that suits a session costs O(log n), not a scan: a decision
over 1,000 candidate hosts is a few microseconds. It is an index of a fleet.scheduler.model.Snapshot, not a second
set of rules: `pick` takes the rule as a predicate (fleet.scheduler.model.suits and free slots) and the slots a
scheduling pass has already taken (`taken`, `local`), so one pass spreads its sessions by load without changing the
index (every entry it looks at is put back). Kept current by whoever owns the snapshot (the dispatcher, on every host
change; `Snapshot.build` for a one-off snapshot).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping
from typing import Protocol

from fleet.routing.rules import HostView
from fleet.schema.vocabulary import ACTIVE


class SlotHost(HostView, Protocol):
    """What the scheduler reads of a host: the one host shape (fleet.routing.HostView), its labels and models as
    sets, plus the version the index ranks it by. fleet.scheduler.model.HostState (the one host model) has it."""

    @property
    def labels(self) -> frozenset[str]: ...
    @property
    def models(self) -> frozenset[str]: ...
    @property
    def version(self) -> int: ...


Entry = tuple[float, float, int, str]  # (load, tie-breaker, host version, machine id)


def load_of(used: int, slots: int) -> float:
    return used / slots if slots > 0 else 1.0


def dispatchable(host: SlotHost) -> bool:
    """Active with slots: the only hosts the index holds (the only ones a session may go to)."""
    return host.status == ACTIVE and host.slots > 0


class PoolIndex:
    """The active hosts of one pool, least loaded first (a heap with lazy deletion: an entry is current while its
    host's version is the one it was pushed with)."""

    def __init__(self) -> None:
        self.hosts: dict[str, SlotHost] = {}
        self._heap: list[Entry] = []

    def put(self, host: SlotHost) -> None:
        """Add or re-rank `host` (call after its sessions, slots or status changed and its version was bumped)."""
        if not dispatchable(host):
            self.hosts.pop(host.machine_id, None)
            return
        self.hosts[host.machine_id] = host
        heapq.heappush(self._heap, (load_of(host.used, host.slots), random.random(), host.version, host.machine_id))
        if len(self._heap) > 4 * len(self.hosts) + 64:
            self._compact()

    def drop(self, machine_id: str) -> None:
        self.hosts.pop(machine_id, None)

    def _compact(self) -> None:
        self._heap = [(load_of(h.used, h.slots), random.random(), h.version, h.machine_id) for h in self.hosts.values()]
        heapq.heapify(self._heap)

    def pick(self, ok: Callable[[SlotHost], bool], taken: Mapping[str, int] | None = None,
             local: list[Entry] | None = None) -> SlotHost | None:
        """The least loaded host with a free slot that `ok` accepts (ties at random), or None.

        `taken`: slots this pass already gave each host; such a host is ranked by `local` (a pass-local heap with
        its new load) instead of its entry here. Both heaps are as they were when this returns."""
        heap, mine = self._heap, local if local is not None else []
        taken = taken or {}
        skipped: list[tuple[list[Entry], Entry]] = []
        found = None
        while True:
            while heap:  # drop stale entries; set aside (and put back later) those a pass re-ranked
                _, _, version, mid = heap[0]
                host = self.hosts.get(mid)
                if host is None or host.version != version:
                    heapq.heappop(heap)
                elif mid in taken:
                    skipped.append((heap, heapq.heappop(heap)))
                else:
                    break
            while mine and _stale_local(self.hosts.get(mine[0][3]), mine[0], taken):
                heapq.heappop(mine)
            source = heap if heap and (not mine or heap[0] < mine[0]) else mine
            if not source or source[0][0] >= 1.0:
                break  # the least loaded is full: all are
            entry = heapq.heappop(source)
            skipped.append((source, entry))
            host = self.hosts[entry[3]]
            if host.used + taken.get(host.machine_id, 0) < host.slots and ok(host):
                found = host
                break
        for source, entry in skipped:
            heapq.heappush(source, entry)
        return found


def _stale_local(host: SlotHost | None, entry: Entry, taken: Mapping[str, int]) -> bool:
    """A pass-local entry is current while its host is unchanged and it carries the host's load as of this pass."""
    return host is None or host.version != entry[2] or entry[0] != load_of(host.used + taken.get(entry[3], 0), host.slots)
