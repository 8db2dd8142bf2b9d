"""Typed desired state: pydantic models of a validated, resolved fleet.yaml.

Built by fleet.schema.api after the JSON Schema and reference checks pass, from plain data in which pool
`extends` has been resolved (fleet.schema.references.resolve_pools). Frozen and hashable-free plain data: the
reconciler diffs them, the dispatcher routes by them. Durations are normalised to seconds. Nothing is expanded
per host: a pool of 10,000 hosts is one Pool.

`Pool` is the one pool model from fleet.yaml to the view: the applied config (fleet.hosts.config) reads each pool
record back into a Pool (`Pool.from_spec`), and the host registry, enrollment, convergence, the routing rules and
the scheduler read that same object (docs/architecture.md, "One model per concept"). The enums these models use
are fleet.schema.vocabulary's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.schema.vocabulary import ELASTIC_MODES, AdminStatus, IsolationMode, PoolMode, RoutingMode

__all__ = ["PoolMode", "RoutingMode"]  # re-exported: defined once, in fleet.schema.vocabulary

_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int | None) -> float | None:
    """'30s' -> 30.0, '5m' -> 300.0, '500ms' -> 0.5; numbers pass through (seconds)."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Org(_Model):
    id: str
    name: str | None = None


class Tenant(_Model):
    id: str
    name: str | None = None
    description: str | None = None


class Routing(_Model):
    mode: RoutingMode
    preferred_pool: str
    fallback_pool: str | None = None
    candidates: tuple[str, ...] = ()
    required_labels: tuple[str, ...] = ()
    model: str | None = None


class Project(_Model):
    id: str
    tenant: str
    description: str | None = None
    routing: Routing


class Hosts(_Model):
    min: int = 0
    max: int | None = None


class Capacity(_Model):
    max_concurrent_sessions: int
    pool_max_disk_gb: float | None = None


class Cost(_Model):
    currency: str = "USD"
    per_host_hour: float = 0.0
    per_session_minute: float = 0.0


class Pool(_Model):
    id: str
    tenant: str
    backend: str
    mode: PoolMode
    capacity: Capacity
    hosts: Hosts = Field(default_factory=Hosts)
    abstract: bool = False
    extends: str | None = None
    description: str | None = None
    labels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    cost: Cost = Field(default_factory=Cost)
    disconnect_grace_s: float | None = None
    idle_timeout_s: float | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    isolation: IsolationMode = "sandbox"

    @property
    def unbounded(self) -> bool:
        """True when the pool can always grow (on_demand/hybrid without hosts.max): shown as ∞ slots."""
        return self.mode != "persistent" and self.hosts.max is None

    # what the live fleet reads of a pool (the scheduler, routing, the host registry, enrollment), by short names
    @property
    def elastic(self) -> bool:
        """on_demand and hybrid pools create hosts when sessions wait."""
        return self.mode in ELASTIC_MODES

    @property
    def max_concurrent_sessions(self) -> int:
        """Session slots per host (0: the applied record does not say)."""
        return self.capacity.max_concurrent_sessions

    @property
    def hosts_max(self) -> int | None:
        return self.hosts.max

    @property
    def hosts_min(self) -> int:
        return self.hosts.min

    @classmethod
    def from_spec(cls, pool_id: str, spec: Mapping[str, Any] | Pool) -> Pool:
        """The pool `pool_id` from its applied spec: the record fleet.reconciler.desired.pool_spec writes into the
        config bucket (and a plan's `after`). Read the way a reader of the store must: fields a newer writer added
        are dropped, missing ones take their defaults (0 slots: the record does not say); a spec without a tenant,
        or of the wrong shape, is a ValueError. A Pool passes through (renamed to `pool_id` if it differs)."""
        if isinstance(spec, Pool):
            return spec if spec.id == pool_id else spec.model_copy(update={"id": pool_id})
        if not isinstance(spec, Mapping) or not isinstance(spec.get("tenant"), str):
            raise ValueError(f"pool {pool_id}: the spec has no tenant")
        data = {"backend": "local", "mode": "persistent", **_known(_SPEC_FIELDS["pool"], spec)}
        capacity = _known(_SPEC_FIELDS["capacity"], spec.get("capacity"))
        capacity.setdefault("max_concurrent_sessions", 0)
        return cls.model_validate({**data, "id": pool_id, "capacity": capacity,
                                   "hosts": _known(_SPEC_FIELDS["hosts"], spec.get("hosts")),
                                   "cost": _known(_SPEC_FIELDS["cost"], spec.get("cost"))})


def _known(fields: frozenset[str], value: Any) -> dict[str, Any]:
    """The items of `value` (a mapping, or None) named in `fields`, without None values (None: the default)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object, not {type(value).__name__}")
    return {k: v for k, v in value.items() if k in fields and v is not None}


#: the fields Pool.from_spec reads of a spec, and of its parts (a spec's own `id` and nested objects are not copied)
_SPEC_FIELDS = {"pool": frozenset(Pool.model_fields) - {"id", "capacity", "hosts", "cost"},
                "capacity": frozenset(Capacity.model_fields), "hosts": frozenset(Hosts.model_fields),
                "cost": frozenset(Cost.model_fields)}


class SecretSource(_Model):
    from_env: str | None = None
    generate: bool = False


class Key(_Model):
    id: str
    tenant: str
    pools: tuple[str, ...]
    secret: SecretSource
    description: str | None = None
    models: tuple[str, ...] | None = None
    labels: tuple[str, ...] = ()
    max_uses: int | None = None
    expires: dt.datetime | None = None

    @field_validator("expires", mode="before")
    @classmethod
    def _parse_expires(cls, value: Any) -> Any:
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value)
        return value


class HostState(_Model):
    """A host's admin state declared in fleet.yaml (`hosts:`)."""

    id: str
    status: AdminStatus
    note: str | None = None


class FleetConfig(_Model):
    """The whole desired state of one fleet.yaml."""

    version: Literal[1] = 1
    org: Org
    tenants: tuple[Tenant, ...]
    projects: tuple[Project, ...] = ()
    pools: tuple[Pool, ...] = ()
    keys: tuple[Key, ...] = ()
    hosts: tuple[HostState, ...] = ()
    source_hash: str = ""

    def tenant(self, tenant_id: str) -> Tenant | None:
        return next((t for t in self.tenants if t.id == tenant_id), None)

    def project(self, project_id: str) -> Project | None:
        return next((p for p in self.projects if p.id == project_id), None)

    def pool(self, pool_id: str) -> Pool | None:
        return next((p for p in self.pools if p.id == pool_id), None)

    def key(self, key_id: str) -> Key | None:
        return next((k for k in self.keys if k.id == key_id), None)

    @property
    def pools_by_id(self) -> dict[str, Pool]:
        return {p.id: p for p in self.pools}


def pool_from_resolved(data: dict[str, Any]) -> Pool:
    """A Pool from resolved plain data (durations still as text)."""
    data = dict(data)
    data["disconnect_grace_s"] = parse_duration(data.pop("disconnect_grace", None))
    data["idle_timeout_s"] = parse_duration(data.pop("idle_timeout", None))
    return Pool.model_validate(data)
