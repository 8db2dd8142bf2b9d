"""Routing rules (Rensei + Sagewai semantics) as pure functions of plain views.

- `ineligibility(host, pool, route)`: every reason a host cannot take a route's next session in a pool (not only
  the first): other tenant, not in the pool, status not active, revoked, missing labels, model not served, full.
- `pool_capacity(pool, hosts, route)`: slots used / total of a pool for a route. Persistent pools count the slots
  of their eligible live hosts; on_demand and hybrid pools can grow to hosts.max (∞ without a max).
- `decide(route, capacities)`: preferred pool if it has a free slot, else fallback (preferred-with-fallback),
  else the pending queue; adaptive picks among preferred + candidates with free slots, the least loaded (Thompson
  sampling is not built yet).
- `route_pools(...)`, `ELASTIC_MODES`: the pools a route tries in order, and the pool modes that grow; shared with
  the dispatcher's placement (fleet.dispatch.placement, whose `place()` a property test holds to `decide()`).
Called by fleet.reconciler.consequences, fleet.cli (route test) and fleet.dispatch.placement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

UNBOUNDED = None
ELASTIC_MODES = ("on_demand", "hybrid")  # pool modes whose backend creates hosts when sessions wait


def route_pools(mode: str, preferred: str, fallback: str | None, candidates: Iterable[str]) -> tuple[str, ...]:
    """The pools a route tries, in order: the preferred pool, then the fallback (preferred-with-fallback) or the
    candidates (adaptive)."""
    out = [preferred]
    if mode == "preferred-with-fallback" and fallback:
        out.append(fallback)
    if mode == "adaptive":
        out += [c for c in candidates if c not in out]
    return tuple(out)


class HostView(Protocol):
    """What the rules read of a host: fleet.hosts.model.Host has these attributes (the rules sit a layer below
    the host registry, so they name the shape, not the class)."""

    @property
    def machine_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def pools(self) -> tuple[str, ...]: ...
    @property
    def labels(self) -> tuple[str, ...]: ...
    @property
    def models(self) -> tuple[str, ...]: ...
    @property
    def status(self) -> str: ...
    @property
    def running(self) -> int: ...
    @property
    def max_sessions(self) -> int: ...


@dataclass(frozen=True)
class PoolView:
    id: str
    tenant: str
    backend: str
    mode: str
    max_concurrent_sessions: int
    hosts_max: int | None = None
    labels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    hosts_min: int = 0

    @property
    def elastic(self) -> bool:
        """on_demand and hybrid pools create hosts when sessions wait."""
        return self.mode in ELASTIC_MODES

    @classmethod
    def from_spec(cls, pool_id: str, spec: Mapping[str, Any]) -> PoolView:
        return cls(
            id=pool_id,
            tenant=spec.get("tenant", ""),
            backend=spec.get("backend", ""),
            mode=spec.get("mode", "persistent"),
            max_concurrent_sessions=int((spec.get("capacity") or {}).get("max_concurrent_sessions") or 0),
            hosts_max=(spec.get("hosts") or {}).get("max"),
            hosts_min=int((spec.get("hosts") or {}).get("min") or 0),
            labels=tuple(spec.get("labels") or ()),
            models=tuple(spec.get("models") or ()),
        )


@dataclass(frozen=True)
class RouteView:
    project: str
    tenant: str
    mode: str
    preferred_pool: str
    fallback_pool: str | None = None
    candidates: tuple[str, ...] = ()
    required_labels: tuple[str, ...] = ()
    model: str | None = None

    @property
    def pools(self) -> tuple[str, ...]:
        return route_pools(self.mode, self.preferred_pool, self.fallback_pool, self.candidates)

    @classmethod
    def from_spec(cls, project: str, spec: Mapping[str, Any]) -> RouteView:
        return cls(
            project=project,
            tenant=spec.get("tenant", ""),
            mode=spec.get("mode", "preferred-only"),
            preferred_pool=spec.get("preferred_pool", ""),
            fallback_pool=spec.get("fallback_pool"),
            candidates=tuple(spec.get("candidates") or ()),
            required_labels=tuple(spec.get("required_labels") or ()),
            model=spec.get("model"),
        )


@dataclass(frozen=True)
class Capacity:
    """Slots of one pool for one route. total None means unbounded (∞)."""

    pool: str
    used: int
    total: int | None
    eligible_hosts: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.total is None or self.used < self.total

    @property
    def label(self) -> str:
        return f"[{self.used}/{'∞' if self.total is None else self.total} slots used]"


@dataclass(frozen=True)
class Decision:
    project: str
    pool: str | None
    role: str  # preferred | fallback | candidate | pending
    considered: tuple[Capacity, ...] = field(default_factory=tuple)

    @property
    def pending(self) -> bool:
        return self.pool is None


def ineligibility(host: HostView, pool: PoolView, route: RouteView | None = None, *, count_full: bool = True) -> list[str]:
    """Every reason `host` cannot take the next session of `route` in `pool`; empty when it can."""
    reasons = []
    tenant = route.tenant if route else pool.tenant
    if host.tenant != tenant:
        reasons.append(f"tenant {host.tenant} (needs {tenant})")
    if pool.id not in host.pools:
        reasons.append(f"not in pool {pool.id}")
    if host.status == "revoked":
        reasons.append("revoked")
    elif host.status != "active":
        reasons.append(f"status {host.status}")
    if route:
        missing = [lbl for lbl in route.required_labels if lbl not in host.labels]
        if missing:
            reasons.append("missing labels " + ", ".join(missing))
        if route.model and host.models and route.model not in host.models or route.model and not host.models and pool.models and route.model not in pool.models:
            reasons.append(f"does not serve model {route.model}")
    if count_full and host.max_sessions and host.running >= host.max_sessions:
        reasons.append(f"full ({host.running}/{host.max_sessions})")
    return reasons


def pool_capacity(pool: PoolView, hosts: Iterable[HostView], route: RouteView | None = None,
                  *, slots_per_host: int | None = None) -> Capacity:
    """Slots used/total of `pool` for `route` (see module docstring)."""
    eligible = [h for h in hosts if not ineligibility(h, pool, route, count_full=False)]
    used = sum(h.running for h in eligible)
    live_total = sum(slots_per_host if slots_per_host is not None else (h.max_sessions or pool.max_concurrent_sessions)
                     for h in eligible)
    ids = tuple(h.machine_id for h in eligible)
    if pool.elastic and _new_hosts_match(pool, route):
        if pool.hosts_max is None:
            return Capacity(pool.id, used, UNBOUNDED, ids)
        return Capacity(pool.id, used, max(live_total, pool.hosts_max * pool.max_concurrent_sessions), ids)
    return Capacity(pool.id, used, live_total, ids)


def _new_hosts_match(pool: PoolView, route: RouteView | None) -> bool:
    """Would a host the backend creates for `pool` (with the pool's labels and models) suit `route`?"""
    if route is None:
        return True
    if route.tenant != pool.tenant:
        return False
    if route.model and pool.models and route.model not in pool.models:
        return False
    return all(lbl in pool.labels for lbl in route.required_labels)


def decide(route: RouteView, capacities: Mapping[str, Capacity]) -> Decision:
    """Which pool takes the route's next session (Rensei semantics), or pending."""
    considered: list[Capacity] = []

    def cap(pool_id: str) -> Capacity:
        c = capacities.get(pool_id) or Capacity(pool_id, 0, 0)
        considered.append(c)
        return c

    preferred = cap(route.preferred_pool)
    if route.mode == "adaptive":
        options = [preferred] + [cap(p) for p in route.candidates if p != route.preferred_pool]
        free = [c for c in options if c.available]
        if not free:
            return Decision(route.project, None, "pending", tuple(considered))
        best = min(free, key=lambda c: (0 if c.total is None else c.used / max(c.total, 1), c.pool != route.preferred_pool))
        return Decision(route.project, best.pool, "preferred" if best.pool == route.preferred_pool else "candidate",
                        tuple(considered))
    if preferred.available:
        return Decision(route.project, preferred.pool, "preferred", tuple(considered))
    if route.mode == "preferred-with-fallback" and route.fallback_pool:
        fallback = cap(route.fallback_pool)
        if fallback.available:
            return Decision(route.project, fallback.pool, "fallback", tuple(considered))
    return Decision(route.project, None, "pending", tuple(considered))
