"""The enrollment rules: may this host join with this key, and with what tenant, pools, labels and capacity?

A pure function of plain data (the key record, the applied pool records, the request, the time), called by the
enrollment authority in fleet.service.server and tested table-driven in tests/unit/test_enrollment_rules.py.
Use counting (max_uses) is not decided here: it needs compare-and-set on the store, done by the server after
these rules pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from fleet.bus.messages import Capacity, EnrollRequest, PoolMembership
from fleet.bus.records import KeySpec, PoolSpec

DEFAULT_MAX_SESSIONS = 4


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str | None = None
    message: str | None = None
    tenant: str | None = None
    pools: list[PoolMembership] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    capacity: Capacity | None = None


def refuse(reason: str, message: str) -> Decision:
    return Decision(ok=False, reason=reason, message=message)


def _union(*lists: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        for item in items:
            seen.setdefault(item, None)
    return list(seen)


def check_enrollment(
    key_id: str, key: KeySpec, pools: dict[str, PoolSpec], request: EnrollRequest, now: datetime
) -> Decision:
    """Apply the rules; the host's tenant is always the key's, whatever the request claims."""
    expires = key.expires_at()
    if expires is not None and now >= expires:
        return refuse("expired", f"enrollment key {key_id} expired at {key.expires}")
    wanted_pools = _union(request.pools) or list(key.pools)
    if not wanted_pools:
        return refuse("pool_out_of_scope", f"enrollment key {key_id} grants no pools")
    outside = [p for p in wanted_pools if p not in key.pools]
    if outside:
        return refuse(
            "pool_out_of_scope",
            f"pool {', '.join(outside)} is outside the scope of enrollment key {key_id} "
            f"(allowed: {', '.join(key.pools) or 'none'})",
        )
    for pool_id in wanted_pools:
        pool = pools.get(pool_id)
        if pool is not None and pool.tenant != key.tenant:
            return refuse(
                "tenant_mismatch",
                f"pool {pool_id} belongs to tenant {pool.tenant}, enrollment key {key_id} to tenant {key.tenant}",
            )
    if key.models is not None:
        bad_models = [m for m in request.models if m not in key.models]
        if bad_models:
            return refuse(
                "model_out_of_scope",
                f"model {', '.join(bad_models)} is outside the scope of enrollment key {key_id} "
                f"(allowed: {', '.join(key.models) or 'none'})",
            )
    allowed_labels = _union(key.labels, *[pools[p].labels for p in wanted_pools if p in pools])
    bad_labels = [label for label in request.labels if label not in allowed_labels]
    if bad_labels:
        return refuse(
            "label_out_of_scope",
            f"label {', '.join(bad_labels)} is outside the scope of enrollment key {key_id} "
            f"(allowed: {', '.join(allowed_labels) or 'none'})",
        )
    applied = [pools[p] for p in wanted_pools if p in pools]
    max_sessions = request.max_sessions
    if max_sessions is None:
        sizes = [p.capacity.max_concurrent_sessions for p in applied if p.capacity.max_concurrent_sessions]
        max_sessions = min(sizes) if sizes else DEFAULT_MAX_SESSIONS
    disk = request.pool_max_disk_gb
    if disk is None:
        disks = [p.capacity.pool_max_disk_gb for p in applied if p.capacity.pool_max_disk_gb is not None]
        disk = min(disks) if disks else None
    models = request.models or list(key.models or []) or _union(*[p.models for p in applied])
    return Decision(
        ok=True,
        tenant=key.tenant,
        pools=[PoolMembership(id=p, mode=pools[p].mode if p in pools else "persistent") for p in wanted_pools],
        labels=_union(key.labels, request.labels),
        models=models,
        capacity=Capacity(max_concurrent_sessions=max_sessions, pool_max_disk_gb=disk),
    )
