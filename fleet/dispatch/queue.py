"""The pending queue: sessions that wait for a slot, FIFO within priority, grouped by what they ask for. Pure.

Sessions that ask for the same thing (project, labels, model) form a group, ordered by (-priority, arrival); a
dispatch pass hands the groups, in the order of their heads, to the scheduler (fleet.scheduler.schedule), which
places head after head until a group cannot place its head (then that group waits and the next one is tried);
`in_order` reads a group lazily, as far as the scheduler gets. So a session that nothing can take (no host has its
label) never blocks others, a pass costs O(groups + placements) rather than O(pending), and within a group the
order is strict. Used by fleet.dispatch.dispatcher.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

GroupKey = tuple[str, frozenset[str], str | None]  # project, labels, model


@dataclass
class Group:
    key: GroupKey
    heap: list[tuple[int, int, str]] = field(default_factory=list)  # (-priority, seq, session id)
    reason: str = ""  # why its head waits (set by the dispatcher when a pass could not place it)
    count: int = 0  # sessions in it (the heap may also hold removed ones until they reach its top)
    wait_kind: str | None = None  # the kind of that reason (fleet.scheduler REASON_KINDS) and its pool
    wait_pool: str | None = None

    def head(self) -> tuple[int, int, str] | None:
        return self.heap[0] if self.heap else None


class PendingQueue:
    def __init__(self) -> None:
        self.groups: dict[GroupKey, Group] = {}
        self.where: dict[str, GroupKey] = {}  # session id -> its group
        self._seq = itertools.count()
        self._gone: set[str] = set()  # removed but still in a heap (lazy deletion)

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self.where

    def add(self, session_id: str, key: GroupKey, priority: int, seq: int | None = None) -> None:
        """Queue a session (seq: its place among equals; default: after everything queued so far)."""
        if session_id in self.where:
            return
        self._gone.discard(session_id)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key)
        heapq.heappush(group.heap, (-priority, next(self._seq) if seq is None else seq, session_id))
        group.count += 1
        self.where[session_id] = key

    def remove(self, session_id: str) -> bool:
        key = self.where.pop(session_id, None)
        if key is None:
            return False
        self._gone.add(session_id)
        self.groups[key].count -= 1
        self._tidy(self.groups[key])
        return True

    def _tidy(self, group: Group) -> None:
        while group.heap and group.heap[0][2] in self._gone:
            self._gone.discard(heapq.heappop(group.heap)[2])
        if not group.heap:
            del self.groups[group.key]

    def pop_head(self, group: Group) -> str:
        _, _, session_id = heapq.heappop(group.heap)
        del self.where[session_id]
        group.count -= 1
        self._tidy(group)
        return session_id

    def ordered_groups(self) -> list[Group]:
        """Groups by their heads: higher priority first, then the one that waited longest."""
        return sorted((g for g in self.groups.values() if g.heap), key=lambda g: g.heap[0][:2])

    def in_order(self, group: Group) -> Iterator[str]:
        """The sessions of `group` in order, read lazily from its heap without changing it (O(k log k) for the
        first k): the scheduler reads a group only as far as it places it. The heap must not change meanwhile."""
        heap, gone = group.heap, self._gone
        if not heap:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            entry, i = heapq.heappop(frontier)
            if entry[2] not in gone:
                yield entry[2]
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def position(self, session_id: str) -> int | None:
        """0-based place of a session within its group (None if not queued)."""
        key = self.where.get(session_id)
        if key is None:
            return None
        ordered = sorted(e for e in self.groups[key].heap if e[2] not in self._gone)
        return next((i for i, e in enumerate(ordered) if e[2] == session_id), None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.where))
