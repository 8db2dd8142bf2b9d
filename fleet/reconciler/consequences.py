"""Consequences: what a plan does to dispatch, the section no other infrastructure tool shows.

For every project: session slots before (applied routing and pools, live hosts) and after (desired routing and
pools, the hosts that stay eligible). Routes whose preferred or fallback pool loses all capacity. Hosts that a
key change locks out (key deleted, tenant changed, pool dropped from its scope) or that a pool removal orphans.
Hosts that fleet.yaml pauses, drains or resumes (`hosts:`), and declared hosts that are not registered.
Queued sessions that become unroutable. Pure: uses fleet.routing rules on desired/applied specs and live hosts;
called by fleet.reconciler.diff.make_plan.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

from fleet.hosts.model import LIVE_STATUSES
from fleet.reconciler.desired import Resource
from fleet.reconciler.live import LiveState, ObservedHost
from fleet.reconciler.plan import Change, Consequence, Consequences, ProjectCapacity
from fleet.routing import HostView, PoolView, RouteView, decide, pool_capacity


def _specs(resources: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {r.id: r.spec for r in resources.values() if r.kind == kind}


def _by_pool(hosts: Iterable[HostView]) -> dict[str, list[HostView]]:
    """Hosts indexed by the pools they serve (in their original order): a host outside a pool is never eligible
    in it, so pool_capacity over this list equals pool_capacity over all hosts, without O(routes × hosts)."""
    index: dict[str, list[HostView]] = {}
    for h in hosts:
        for p in dict.fromkeys(h.pools):
            index.setdefault(p, []).append(h)
    return index


def _slots(route: RouteView | None, pools: Mapping[str, dict], hosts: Mapping[str, list[HostView]], *,
           after: bool) -> tuple[int | None, dict]:
    """Total slots a route can use over its pools (None = ∞), and the per-pool Capacity (`hosts` by pool)."""
    if route is None:
        return 0, {}
    caps = {}
    total: int | None = 0
    for pool_id in route.pools:
        spec = pools.get(pool_id)
        if spec is None:
            continue
        view = PoolView.from_spec(pool_id, spec)
        cap = pool_capacity(view, hosts.get(pool_id, ()), route, slots_per_host=view.max_concurrent_sessions if after else None)
        caps[pool_id] = cap
        total = None if (total is None or cap.total is None) else total + cap.total
    return total, caps


def _host_label(h: ObservedHost) -> str:
    return f"{h.hostname} ({h.machine_id[:8]})" if h.hostname else h.machine_id


def consequences(desired: Mapping[str, Resource], live: LiveState, changes: list[Change]) -> Consequences:
    applied_pools, desired_pools = _specs(live.applied, "pool"), _specs(desired, "pool")
    applied_routes, desired_routes = _specs(live.applied, "route"), _specs(desired, "route")
    applied_keys, desired_keys = _specs(live.applied, "key"), _specs(desired, "key")
    items: list[Consequence] = []

    declared = _specs(desired, "host")
    known = {h.machine_id for h in live.hosts}
    if live.hosts_observed:
        for host_id in sorted(declared.keys() - known):
            items.append(Consequence(kind="host-not-registered", subject=host_id,
                                     message=f"host {host_id} is declared in fleet.yaml but not registered: nothing to pause or drain"))

    undeclared = _specs(live.applied, "host").keys() - declared.keys()
    for h in live.hosts:
        if h.machine_id in undeclared and h.status in ("paused", "draining"):
            items.append(Consequence(kind="host-status", subject=h.machine_id, tenant=h.tenant,
                                     message=f"host {_host_label(h)} stays {h.status}: fleet.yaml no longer declares it "
                                             f"(resume it with `fleet hosts resume {h.machine_id[:8]}`)"))

    # hosts after the change: locked out by key changes, orphaned by pool removals, paused/drained by the file
    after_hosts: list[HostView] = []
    # The hosts serve as their own `before` views, and as `after` views when the change leaves them alone (no copy
    # per host); a host the change affects is copied with its new pools and status.
    for h in live.hosts:
        pools = h.pools
        reason = None
        status = h.status
        want = (declared.get(h.machine_id) or {}).get("status")
        if want and h.status in LIVE_STATUSES and want != h.status:
            status = want
            note = (declared[h.machine_id].get("note") or "").strip()
            effect = "takes sessions again" if want == "active" else f"is {want}: it takes no new sessions"
            items.append(Consequence(kind="host-status", subject=h.machine_id, tenant=h.tenant,
                                     message=f"host {_host_label(h)} {effect}" + (f" ({note})" if note else "")))
        if h.status != "revoked" and h.key_id and h.key_id in applied_keys:
            new_key = desired_keys.get(h.key_id)
            if new_key is None:
                reason = f"its enrollment key {h.key_id} is deleted"
            elif new_key.get("tenant") != applied_keys[h.key_id].get("tenant"):
                reason = f"its enrollment key {h.key_id} moves to tenant {new_key.get('tenant')}"
            else:
                old_pools = applied_keys[h.key_id].get("pools") or []
                dropped = [p for p in pools if p in old_pools and p not in (new_key.get("pools") or [])]
                if dropped:
                    items.append(Consequence(kind="host-locked-out", subject=h.machine_id, tenant=h.tenant, pool=dropped[0],
                                             message=f"host {_host_label(h)} loses pool(s) {', '.join(dropped)}: "
                                                     f"key {h.key_id} no longer admits them"))
                    pools = tuple(p for p in pools if p not in dropped)
        if reason:
            items.append(Consequence(kind="host-locked-out", subject=h.machine_id, tenant=h.tenant,
                                     message=f"host {_host_label(h)} is locked out: {reason}"))
            continue
        for p in pools:
            if p in applied_pools and p not in desired_pools and h.status != "revoked":
                items.append(Consequence(kind="host-orphaned", subject=h.machine_id, tenant=h.tenant, pool=p,
                                         message=f"host {_host_label(h)} serves pool {p}, which is deleted: it is orphaned"))
        pools = tuple(p for p in pools if p in desired_pools or p not in applied_pools)
        after_hosts.append(h if pools == h.pools and status == h.status else h.replace(pools=pools, status=status))
    before_hosts = _by_pool(live.hosts)
    unchanged = len(after_hosts) == len(live.hosts) and all(map(operator.is_, after_hosts, live.hosts))
    after_by_pool = before_hosts if unchanged else _by_pool(after_hosts)

    capacity = []
    for project in sorted(applied_routes.keys() | desired_routes.keys()):
        rb = RouteView.from_spec(project, applied_routes[project]) if project in applied_routes else None
        ra = RouteView.from_spec(project, desired_routes[project]) if project in desired_routes else None
        before, caps_b = _slots(rb, applied_pools, before_hosts, after=False)
        after, caps_a = _slots(ra, desired_pools, after_by_pool, after=True)
        used = sum(c.used for c in caps_b.values())
        view = ra or rb
        tenant = view.tenant if view is not None else None
        capacity.append(ProjectCapacity(project=project, tenant=tenant, before=before, after=after, used=used))
        if ra is None:
            continue
        for role, pool_id in (("preferred", ra.preferred_pool), ("fallback", ra.fallback_pool if ra.mode == "preferred-with-fallback" else None)):
            if not pool_id:
                continue
            cap_a = caps_a.get(pool_id)
            cap_b = caps_b.get(pool_id) if rb and pool_id in rb.pools else None
            had = cap_b is not None and cap_b.total != 0
            deleted = pool_id not in desired_pools
            # without observed hosts, a persistent pool's capacity is unknown: only a deletion is certain
            if (cap_a is None or cap_a.total == 0) and (deleted or (had and live.hosts_observed)):
                items.append(Consequence(kind="route-without-capacity", subject=f"route.{project}", tenant=ra.tenant, pool=pool_id,
                                         message=f"route {project}: {role} pool {pool_id} "
                                                 + ("is deleted" if deleted else "loses all capacity")))
        if after == 0 and before != 0 and live.hosts_observed:
            items.append(Consequence(kind="project-unroutable", subject=f"project.{project}", tenant=ra.tenant,
                                     message=f"project {project} has no slots left: its sessions will wait in the pending queue"))

    for s in live.queued:
        route = desired_routes.get(s.project)
        if route is None:
            items.append(Consequence(kind="session-unroutable", subject=s.session_id, tenant=s.tenant,
                                     message=f"queued session {s.session_id} of project {s.project}: the project is deleted"))
            continue
        rv = RouteView.from_spec(s.project, route)
        rv = RouteView(**{**rv.__dict__, "required_labels": tuple(sorted({*rv.required_labels, *s.required_labels})),
                          "model": s.model or rv.model})
        _, caps = _slots(rv, desired_pools, after_by_pool, after=True)
        if decide(rv, caps).pending and all((c.total == 0) for c in caps.values()):
            items.append(Consequence(kind="session-unroutable", subject=s.session_id, tenant=s.tenant,
                                     message=f"queued session {s.session_id} of project {s.project}: no pool of its route can ever take it"))
    return Consequences(capacity=tuple(capacity), items=tuple(items))
