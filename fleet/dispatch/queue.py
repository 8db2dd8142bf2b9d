"""The pending queue: sessions that wait for a slot, FIFO within priority, grouped by what they ask for. Pure.

Sessions that ask for the same thing (project, labels, model) form a group, ordered by (-priority, arrival); a
dispatch pass takes the groups in the order of their heads and places head after head until a group cannot place
its head (then that group waits and the next one is tried). So a session that nothing can take (no host has its
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
        self.where[session_id] = key

    def remove(self, session_id: str) -> bool:
        key = self.where.pop(session_id, None)
        if key is None:
            return False
        self._gone.add(session_id)
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
        self._tidy(group)
        return session_id

    def ordered_groups(self) -> list[Group]:
        """Groups by their heads: higher priority first, then the one that waited longest."""
        return sorted((g for g in self.groups.values() if g.heap), key=lambda g: g.heap[0][:2])

    def position(self, session_id: str) -> int | None:
        """0-based place of a session within its group (None if not queued)."""
        key = self.where.get(session_id)
        if key is None:
            return None
        ordered = sorted(e for e in self.groups[key].heap if e[2] not in self._gone)
        return next((i for i, e in enumerate(ordered) if e[2] == session_id), None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.where))
