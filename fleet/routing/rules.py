"""The routing vocabulary every layer reads, and the per-host explanation of `fleet route test --explain`. Pure.

- `Route`: the one route model: a project's routing (its applied route record, fleet.reconciler.desired.route_spec)
  and what one session adds to it (labels, a model). The scheduler places by it, `route test` explains by it.
- `HostView`: the one shape of a host that routing and the scheduler read (machine ID, tenant, pools, labels,
  models, status, slots and slots used). fleet.hosts.model.Host has it (this layer sits below the host registry,
  so it names the shape, not the class); the scheduler's own hosts (fleet.scheduler.HostState, the dispatcher's)
  add only the version its index ranks them by (fleet.scheduler.index.SlotHost).
- Pools are fleet.schema.models.Pool, the one pool model.
- `route_pools(...)`, `serves(...)`: the pools a route tries in order, and the model rule.
- `ineligibility(host, pool, route)`: every reason a host cannot take a route's next session in a pool (not only
  the first): other tenant, not in the pool, status not active, revoked, missing labels, model not served, full.
Where a session goes, and why it waits, is decided in one place only: the scheduler (fleet.scheduler). Called by
fleet.scheduler and fleet.cli.route_cmds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.schema.models import Pool
from fleet.schema.vocabulary import ACTIVE, ELASTIC_MODES

__all__ = ["ELASTIC_MODES", "HostView", "Pool", "Route", "ineligibility", "route_pools", "serves"]



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
    """What routing and the scheduler read of a host."""

    @property
    def machine_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def pools(self) -> tuple[str, ...]: ...
    @property
    def labels(self) -> Collection[str]: ...
    @property
    def models(self) -> Collection[str]: ...
    @property
    def status(self) -> str: ...
    @property
    def slots(self) -> int: ...
    @property
    def used(self) -> int: ...


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
        """The pools this route may use, in the order it tries them (`route_pools`)."""
        return route_pools(self.mode, self.preferred, self.fallback, self.candidates)

    def role(self, pool_id: str) -> str:
        if pool_id == self.preferred:
            return "preferred"
        return "candidate" if self.mode == "adaptive" else "fallback"

    def for_session(self, labels: Iterable[str] = (), model: str | None = None) -> Route:
        """This route for a session that also needs `labels` and (instead of the route's) `model`."""
        extra = frozenset(labels)
        if not extra - self.labels and (model is None or model == self.model):
            return self
        return Route(self.project, self.tenant, self.mode, self.preferred, self.fallback, self.candidates,
                     self.labels | extra, model or self.model)

    @classmethod
    def of(cls, project: str, spec: Mapping[str, Any], labels: Iterable[str] = (), model: str | None = None) -> Route:
        """The route of `project` from its routing spec (fleet.reconciler.desired.route_spec), for a session with
        these labels and model."""
        return cls(project=project, tenant=spec.get("tenant", ""), mode=spec.get("mode", "preferred-only"),
                   preferred=spec.get("preferred_pool", ""), fallback=spec.get("fallback_pool"),
                   candidates=tuple(spec.get("candidates") or ()),
                   labels=frozenset(spec.get("required_labels") or ()) | frozenset(labels),
                   model=model or spec.get("model"))


def serves(route: Route, host: HostView, pool_models: Collection[str]) -> bool:
    """The model rule: the host's models if it lists any, else its pool's; nothing listed serves any model."""
    if route.model is None:
        return True
    served = host.models or pool_models
    return not served or route.model in served


def ineligibility(host: HostView, pool: Pool, route: Route | None = None, *, count_full: bool = True) -> list[str]:
    """Every reason `host` cannot take the next session of `route` in `pool`; empty when it can."""
    reasons = []
    tenant = route.tenant if route else pool.tenant
    if host.tenant != tenant:
        reasons.append(f"tenant {host.tenant} (needs {tenant})")
    if pool.id not in host.pools:
        reasons.append(f"not in pool {pool.id}")
    if host.status == "revoked":
        reasons.append("revoked")
    elif host.status != ACTIVE:
        reasons.append(f"status {host.status}")
    if route:
        missing = sorted(route.labels.difference(host.labels))
        if missing:
            reasons.append("missing labels " + ", ".join(missing))
        if not serves(route, host, pool.models):
            reasons.append(f"does not serve model {route.model}")
    if count_full and host.slots and host.used >= host.slots:
        reasons.append(f"full ({host.used}/{host.slots})")
    return reasons
