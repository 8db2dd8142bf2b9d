"""Where a session goes: the dispatcher's view of hosts, pools indexed by load, and the routing decision. Pure.

`DispatchHost` is what dispatch needs of a host (tenant, pools, labels, models, status, slots, the sessions it was
given), kept current by the dispatcher from the host registry. `PoolIndex` holds the active hosts of one pool in a
heap by load (sessions / slots, ties broken at random) with lazy deletion, so that picking the least loaded host
that suits a route costs O(log n), not a scan: a decision over 1,000 candidate hosts is a few microseconds.
`place()` applies the project's routing policy with the hard filters first (tenant, pool membership, status active,
required labels, model, a free slot) and never relaxes them: preferred pool if a host there has a free slot, else
the fallback (preferred-with-fallback), else none (the session waits); adaptive takes the least loaded host among
the preferred pool and the candidates. `why_waiting()` says, in words, why a session cannot be placed now
("preferred pool-local-main FULL [4/4], no fallback", "no active host in pool-gpu has label gpu", "tenant
fin-prod has no host in pool X"). Used by fleet.dispatch.dispatcher; tested table-driven.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.routing.rules import ELASTIC_MODES, route_pools


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
    def free(self) -> int:
        return self.slots - len(self.sessions)

    @property
    def load(self) -> float:
        return len(self.sessions) / self.slots if self.slots > 0 else 1.0

    @property
    def dispatchable(self) -> bool:
        return self.status == "active" and self.slots > 0


@dataclass(frozen=True, slots=True)
class Route:
    """What a session asks of its host: its project's routing plus its own labels and model."""

    project: str
    tenant: str
    mode: str
    preferred: str
    fallback: str | None = None
    candidates: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()
    model: str | None = None

    @property
    def pools(self) -> tuple[str, ...]:
        """The pools this route may use, in the order it tries them (fleet.routing.rules.route_pools)."""
        return route_pools(self.mode, self.preferred, self.fallback, self.candidates)

    def suits(self, host: DispatchHost, pool_models: frozenset[str] = frozenset()) -> bool:
        """The hard filters, but status and free slots (the index holds only active hosts; pick checks slots). The
        model rule is fleet.routing.ineligibility's: the host's models if it lists any, else its pool's."""
        if host.tenant != self.tenant or not self.labels <= host.labels:
            return False
        if self.model is None:
            return True
        served = host.models or pool_models
        return not served or self.model in served

    @classmethod
    def of(cls, project: str, spec: Mapping[str, Any], labels: Iterable[str] = (), model: str | None = None) -> Route:
        """The route of `project` from its applied routing spec, for a session with these labels and model."""
        return cls(project=project, tenant=spec.get("tenant", ""), mode=spec.get("mode", "preferred-only"),
                   preferred=spec.get("preferred_pool", ""), fallback=spec.get("fallback_pool"),
                   candidates=tuple(spec.get("candidates") or ()),
                   labels=frozenset(spec.get("required_labels") or ()) | frozenset(labels),
                   model=model or spec.get("model"))


class PoolIndex:
    """The active hosts of one pool, least loaded first (a heap with lazy deletion: an entry is current while its
    host's version is the one it was pushed with)."""

    def __init__(self, models: frozenset[str] = frozenset()) -> None:
        self.models = models  # the models the pool declares (a host that lists none serves these)
        self.hosts: dict[str, DispatchHost] = {}
        self._heap: list[tuple[float, float, int, str]] = []

    def put(self, host: DispatchHost) -> None:
        """Add or re-rank `host` (call after its sessions, slots or status changed and its version was bumped)."""
        if not host.dispatchable:
            self.hosts.pop(host.machine_id, None)
            return
        self.hosts[host.machine_id] = host
        heapq.heappush(self._heap, (host.load, random.random(), host.version, host.machine_id))
        if len(self._heap) > 4 * len(self.hosts) + 64:
            self._compact()

    def drop(self, machine_id: str) -> None:
        self.hosts.pop(machine_id, None)

    def _compact(self) -> None:
        self._heap = [(h.load, random.random(), h.version, h.machine_id) for h in self.hosts.values()]
        heapq.heapify(self._heap)

    def pick(self, ok: Callable[[DispatchHost], bool]) -> DispatchHost | None:
        """The least loaded host with a free slot that `ok` accepts (ties at random), or None."""
        heap, skipped, found = self._heap, [], None
        while heap:
            load, _, version, mid = heap[0]
            host = self.hosts.get(mid)
            if host is None or host.version != version:
                heapq.heappop(heap)  # stale
                continue
            if load >= 1.0:
                break  # the least loaded is full: all are
            entry = heapq.heappop(heap)
            skipped.append(entry)
            if ok(host):
                found = host
                break
        for entry in skipped:
            heapq.heappush(heap, entry)
        return found


@dataclass(frozen=True, slots=True)
class Placement:
    pool: str
    host: DispatchHost
    role: str  # preferred | fallback | candidate


def place(route: Route, pools: Mapping[str, PoolIndex]) -> Placement | None:
    """The host a session of `route` goes to now, or None (it waits). See the module docstring."""
    if route.mode == "adaptive":
        best: Placement | None = None
        for pool_id in route.pools:
            index = pools.get(pool_id)
            host = _pick(index, route)
            if host is not None and (best is None or host.load < best.host.load):
                best = Placement(pool_id, host, "preferred" if pool_id == route.preferred else "candidate")
        return best
    for role, pool_id in zip(("preferred", "fallback"), route.pools, strict=False):
        host = _pick(pools.get(pool_id), route)
        if host is not None:
            return Placement(pool_id, host, role)
    return None


def _pick(index: PoolIndex | None, route: Route) -> DispatchHost | None:
    if index is None:
        return None
    models = index.models
    return index.pick(lambda host: route.suits(host, models))


def why_waiting(route: Route, hosts: Iterable[DispatchHost], pool_modes: Mapping[str, str],
                pool_models_of: Mapping[str, Iterable[str]] | None = None) -> str:
    """In words: why no host of `route`'s pools can take its next session now."""
    members: dict[str, list[DispatchHost]] = {p: [] for p in route.pools}
    for host in hosts:
        for pool_id in host.pools:
            if pool_id in members:
                members[pool_id].append(host)
    parts = []
    for i, pool_id in enumerate(route.pools):
        role = "preferred" if i == 0 else ("fallback" if route.mode != "adaptive" else "candidate")
        parts.append(f"{role} {_pool_state(route, pool_id, members[pool_id], pool_modes, pool_models_of or {})}")
    if route.mode == "preferred-with-fallback" and not route.fallback or route.mode == "preferred-only":
        parts.append("no fallback")
    return ", ".join(parts)


def _pool_state(route: Route, pool_id: str, members: list[DispatchHost], pool_modes: Mapping[str, str],
                pool_models_of: Mapping[str, Iterable[str]]) -> str:
    if pool_id not in pool_modes:
        return f"pool {pool_id} is not applied"
    elastic = pool_modes[pool_id] in ELASTIC_MODES
    if not members:
        return f"pool {pool_id} has no host" + (" (on demand: waiting for the backend to add one)" if elastic else "")
    ours = [h for h in members if h.tenant == route.tenant]
    if not ours:
        return f"pool {pool_id}: tenant {route.tenant} has no host there"
    fitting = [h for h in ours if route.labels <= h.labels]
    if not fitting:
        missing = sorted(route.labels - set().union(*(h.labels for h in ours)))
        what = f"label {', '.join(missing)}" if missing else "all labels " + ", ".join(sorted(route.labels))
        return f"pool {pool_id}: no host has {what}"
    pool_models = frozenset(pool_models_of.get(pool_id, ()))
    serving = [h for h in fitting if route.suits(h, pool_models)]
    if not serving:
        return f"pool {pool_id}: no host serves model {route.model}"
    active = [h for h in serving if h.dispatchable]
    if not active:
        counts: dict[str, int] = {}
        for h in serving:
            counts[h.status] = counts.get(h.status, 0) + 1
        return f"pool {pool_id}: no active host ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
    used, total = sum(len(h.sessions) for h in active), sum(h.slots for h in active)
    return f"{pool_id} FULL [{used}/{total}]"
