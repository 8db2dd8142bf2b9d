"""Desired resources: the FleetConfig flattened into addressable records, the unit the reconciler diffs.

Addresses are `kind.id`: `org.acme`, `tenant.fin-prod`, `project.my-fintech-app`, `pool.pool-local-main`,
`route.my-fintech-app` (a project's routing policy is its own resource so that a routing change reads as one
line), `key.ci-runners`, `host.<machine-id>` (a host's declared admin state). Abstract pools are templates and are not resources. Specs are canonical plain JSON
(sorted label/model/pool sets) so that a reorder in the file is not a change. Key secrets: the spec carries
`secret_source` (never the secret) and `secret_digest`, which the edge fills from the environment (or leaves
None: unknown until apply). Pure; called by fleet.reconciler.diff and the apply edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from fleet.schema.models import FleetConfig, Key, Pool, Project

KIND_ORDER = ("org", "tenant", "project", "pool", "route", "key", "host")
SENSITIVE_ATTRS = frozenset({"secret_digest"})
SENSITIVE = "(sensitive)"
UNKNOWN = "(known after apply)"
#: attributes whose change cannot be made in place
FORCES_REPLACEMENT = {"pool": {"tenant", "backend"}, "project": {"tenant"}, "key": {"tenant"}, "route": set(),
                      "tenant": set(), "org": set(), "host": set()}


class Resource(BaseModel):
    """One desired (or applied) record."""

    model_config = ConfigDict(frozen=True)

    kind: str
    id: str
    spec: dict[str, Any]

    @property
    def address(self) -> str:
        return f"{self.kind}.{self.id}"


def field_order(kind: str) -> list[str]:
    """The top-level fields of a kind's spec in the order the spec builders write them (for rendering: records read
    back from the store have their keys sorted)."""
    return _FIELD_ORDER.get(kind, [])


def pool_spec(pool: Pool) -> dict[str, Any]:
    return {
        "tenant": pool.tenant,
        "backend": pool.backend,
        "mode": pool.mode,
        "description": pool.description,
        "hosts": {"min": pool.hosts.min, "max": pool.hosts.max},
        "capacity": {
            "max_concurrent_sessions": pool.capacity.max_concurrent_sessions,
            "pool_max_disk_gb": pool.capacity.pool_max_disk_gb,
        },
        "labels": sorted(pool.labels),
        "models": sorted(pool.models),
        "cost": pool.cost.model_dump(mode="json"),
        "disconnect_grace_s": pool.disconnect_grace_s,
        "idle_timeout_s": pool.idle_timeout_s,
        "settings": pool.settings,
        **({"isolation": "none"} if pool.isolation == "none" else {}),  # the default (sandbox) is not stored
    }


def route_spec(project: Project) -> dict[str, Any]:
    r = project.routing
    return {
        "tenant": project.tenant,
        "mode": r.mode,
        "preferred_pool": r.preferred_pool,
        "fallback_pool": r.fallback_pool,
        "candidates": list(r.candidates),
        "required_labels": sorted(r.required_labels),
        "model": r.model,
    }


def key_spec(key: Key, secret_digest: str | None) -> dict[str, Any]:
    source = f"env:{key.secret.from_env}" if key.secret.from_env else "generated"
    return {
        "tenant": key.tenant,
        "description": key.description,
        "pools": sorted(key.pools),
        "models": sorted(key.models) if key.models is not None else None,
        "labels": sorted(key.labels),
        "max_uses": key.max_uses,
        "expires": key.expires.isoformat().replace("+00:00", "Z") if key.expires else None,
        "secret_source": source,
        "secret_digest": secret_digest,
    }


def desired_resources(cfg: FleetConfig, key_hashes: Mapping[str, str | None] | None = None) -> dict[str, Resource]:
    """Every resource fleet.yaml declares, by address. `key_hashes[key_id]` is the secret's SHA-256 or None."""
    key_hashes = key_hashes or {}
    out: list[Resource] = [Resource(kind="org", id=cfg.org.id, spec={"name": cfg.org.name})]
    out += [Resource(kind="tenant", id=t.id, spec={"name": t.name, "description": t.description}) for t in cfg.tenants]
    for p in cfg.projects:
        out.append(Resource(kind="project", id=p.id, spec={"tenant": p.tenant, "description": p.description}))
        out.append(Resource(kind="route", id=p.id, spec=route_spec(p)))
    out += [Resource(kind="pool", id=p.id, spec=pool_spec(p)) for p in cfg.pools if not p.abstract]
    out += [Resource(kind="key", id=k.id, spec=key_spec(k, key_hashes.get(k.id))) for k in cfg.keys]
    out += [Resource(kind="host", id=h.id, spec={"status": h.status, "note": h.note}) for h in cfg.hosts]
    return {r.address: r for r in out}


def references(kind: str, ident: str, spec: Mapping[str, Any] | None) -> list[str]:
    """Addresses the resource `kind.ident` with `spec` depends on."""
    if not spec:
        return []
    refs: list[str] = [f"project.{ident}"] if kind == "route" else []
    tenant = spec.get("tenant")
    if kind in ("project", "pool", "key", "route") and tenant:
        refs.append(f"tenant.{tenant}")
    if kind == "route":
        for name in (spec.get("preferred_pool"), spec.get("fallback_pool"), *(spec.get("candidates") or [])):
            if name:
                refs.append(f"pool.{name}")
    if kind == "key":
        refs += [f"pool.{p}" for p in spec.get("pools") or []]
    return refs


def tenant_of(kind: str, ident: str, spec: Mapping[str, Any] | None) -> str | None:
    if kind == "tenant":
        return ident
    return (spec or {}).get("tenant")


_FIELD_ORDER = {
    "org": ["name"],
    "tenant": ["name", "description"],
    "project": ["tenant", "description"],
    "pool": ["tenant", "backend", "mode", "description", "hosts", "capacity", "labels", "models", "cost",
             "disconnect_grace_s", "idle_timeout_s", "settings", "isolation"],
    "route": ["tenant", "mode", "preferred_pool", "fallback_pool", "candidates", "required_labels", "model"],
    "key": ["tenant", "description", "pools", "models", "labels", "max_uses", "expires", "secret_source",
            "secret_digest"],
    "host": ["status", "note"],
}
