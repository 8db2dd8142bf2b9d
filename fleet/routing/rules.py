"""Routing vocabulary as pure views, and the per-host explanation of `fleet route test --explain`.

- `PoolView`, `RouteView`: a pool and a route from their specs (the shapes of fleet.reconciler.desired).
- `route_pools(...)`, `ELASTIC_MODES`: the pools a route tries in order, and the pool modes that grow.
- `ineligibility(host, pool, route)`: every reason a host cannot take a route's next session in a pool (not only
  the first): other tenant, not in the pool, status not active, revoked, missing labels, model not served, full.
Where a session goes, and why it waits, is decided in one place only: the scheduler (fleet.scheduler), which reads
pools as PoolView and route order through route_pools. Called by fleet.scheduler and fleet.cli.route_cmds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.schema.vocabulary import ELASTIC_MODES  # pool modes whose backend creates hosts when sessions wait


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
