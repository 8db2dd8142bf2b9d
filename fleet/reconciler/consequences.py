"""Consequences: what a plan does to dispatch, the section no other infrastructure tool shows.

For every project: session slots before (applied routing and pools, live hosts) and after (desired routing and
pools, the hosts that stay eligible), counting only live hosts' slots: capacity that an on_demand or hybrid pool's
backend might create is not slots (it only keeps a route from being "without capacity"). Routes whose preferred or
fallback pool loses all capacity. Hosts that a key change locks out (key deleted, tenant changed, pool dropped
from its scope) or that a pool removal orphans. Hosts that fleet.yaml pauses, drains or resumes (`hosts:`), and
declared hosts that are not registered. Queued sessions that become unroutable: those the scheduler would leave
waiting after the change for a reason other than capacity (a full pool, a backend yet to add a host). Pure: reads
every pool and route through the dispatcher's own scheduler (fleet.scheduler: `snapshot_of`, `statuses`,
`schedule`) on a snapshot before and one after; called by fleet.reconciler.diff.make_plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleet.hosts.model import LIVE_STATUSES, host_slots
from fleet.reconciler.desired import Resource
from fleet.reconciler.live import LiveState, ObservedHost
from fleet.reconciler.plan import Change, Consequence, Consequences, ProjectCapacity
from fleet.scheduler import (
    WAITS_FOR_CAPACITY,
    PendingGroup,
    PoolStatus,
    Snapshot,
    schedule,
    snapshot_of,
    statuses,
)


def _specs(resources: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {r.id: r.spec for r in resources.values() if r.kind == kind}


def _slots(project: str, snapshot: Snapshot) -> tuple[int, dict[str, PoolStatus]]:
    """Live slots a project's route can use over its pools (hosts that suit it), and each pool's status."""
    route = snapshot.routes.get(project)
    if route is None:
        return 0, {}
    found = {s.pool: s for s in statuses(route, snapshot) if s.pool in snapshot.pools}
    return sum(s.total for s in found.values()), found


def _grows(caps: Mapping[str, PoolStatus]) -> bool:
    return any(s.grows for s in caps.values())


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
    after_hosts: list[ObservedHost] = []
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
    before_snap = snapshot_of(live.hosts, applied_pools, applied_routes)
    after_slots = {h.machine_id: host_slots(((desired_pools.get(p) or {}).get("capacity") or {}).get("max_concurrent_sessions")
                                            for p in h.pools) or h.max_sessions for h in after_hosts}
    after_snap = snapshot_of(after_hosts, desired_pools, desired_routes, slots=after_slots)

    capacity = []
    for project in sorted(applied_routes.keys() | desired_routes.keys()):
        before, caps_b = _slots(project, before_snap)
        after, caps_a = _slots(project, after_snap)
        used = sum(c.used for c in caps_b.values())
        spec = desired_routes.get(project) or applied_routes.get(project) or {}
        tenant = spec.get("tenant")
        capacity.append(ProjectCapacity(project=project, tenant=tenant, before=before, after=after, used=used))
        route = after_snap.routes.get(project)
        if route is None:
            continue
        for role, pool_id in (("preferred", route.preferred),
                              ("fallback", route.fallback if route.mode == "preferred-with-fallback" else None)):
            if not pool_id:
                continue
            cap_a = caps_a.get(pool_id)
            cap_b = caps_b.get(pool_id)
            had = cap_b is not None and (cap_b.total != 0 or cap_b.grows)
            deleted = pool_id not in desired_pools
            # without observed hosts, a persistent pool's capacity is unknown: only a deletion is certain
            if (cap_a is None or (cap_a.total == 0 and not cap_a.grows)) and (deleted or (had and live.hosts_observed)):
                items.append(Consequence(kind="route-without-capacity", subject=f"route.{project}", tenant=route.tenant,
                                         pool=pool_id, message=f"route {project}: {role} pool {pool_id} "
                                                               + ("is deleted" if deleted else "loses all capacity")))
        if after == 0 and not _grows(caps_a) and (before != 0 or _grows(caps_b)) and live.hosts_observed:
            items.append(Consequence(kind="project-unroutable", subject=f"project.{project}", tenant=route.tenant,
                                     message=f"project {project} has no slots left: its sessions will wait in the pending queue"))

    for s in live.queued:
        if s.project not in desired_routes:
            items.append(Consequence(kind="session-unroutable", subject=s.session_id, tenant=s.tenant,
                                     message=f"queued session {s.session_id} of project {s.project}: the project is deleted"))
            continue
        plan = schedule(after_snap, [PendingGroup(s.project, frozenset(s.required_labels), s.model, (s.session_id,), 1)])
        if plan.unplaced and plan.unplaced[0].reason.kind not in WAITS_FOR_CAPACITY:
            items.append(Consequence(kind="session-unroutable", subject=s.session_id, tenant=s.tenant,
                                     message=f"queued session {s.session_id} of project {s.project}: no pool of its "
                                             f"route can take it ({plan.unplaced[0].reason.message})"))
    return Consequences(capacity=tuple(capacity), items=tuple(items))
