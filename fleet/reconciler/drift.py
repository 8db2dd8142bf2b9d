"""Drift: observed state that differs from applied state, made outside fleet.

Hosts that serve a pool the applied config does not know, hosts whose tenant differs from their pool's, hosts
lacking the labels their pool declares, hosts whose status differs from the one fleet.yaml declared, persistent/hybrid
pools with fewer live hosts than hosts.min, pools with more registered (not revoked) hosts than hosts.max (the max was
lowered below what is enrolled: new enrollments are refused until hosts are removed), and
backend instances recorded by the controller but gone (deleted by hand) or present without an applied pool.
Shown separately from config changes; `fleet plan --refresh-only` shows drift alone. Pure; called by make_plan.
"""

from __future__ import annotations

from fleet.hosts.model import LIVE_STATUSES
from fleet.reconciler.live import LiveState
from fleet.reconciler.plan import DriftItem

LIVE = LIVE_STATUSES


def drift(live: LiveState) -> list[DriftItem]:
    pools = live.applied_of("pool")
    items: list[DriftItem] = []
    count: dict[str, int] = {}
    members: dict[str, int] = {}
    for h in live.hosts:
        if h.status == "revoked":
            continue
        name = h.hostname or h.machine_id
        for p in h.pools:
            members[p] = members.get(p, 0) + 1
            applied = pools.get(p)
            if applied is None:
                if pools:
                    items.append(DriftItem(address=f"host.{h.machine_id}", kind="host", tenant=h.tenant, pool=p,
                                           message=f"host {name} serves pool {p}, which is not in the applied config"))
                continue
            if h.status in LIVE:
                count[p] = count.get(p, 0) + 1
            ptenant = applied.spec.get("tenant")
            if ptenant and ptenant != h.tenant:
                items.append(DriftItem(address=f"host.{h.machine_id}", kind="host", tenant=h.tenant, pool=p,
                                       message=f"host {name} of tenant {h.tenant} serves pool {p} of tenant {ptenant}"))
            missing = [lbl for lbl in applied.spec.get("labels") or [] if lbl not in h.labels]
            if missing:
                items.append(DriftItem(address=f"host.{h.machine_id}", kind="host", tenant=h.tenant, pool=p,
                                       message=f"host {name} in pool {p} lacks the pool's labels {', '.join(missing)}"))
    declared = live.applied_of("host")
    for h in live.hosts:
        want = declared[h.machine_id].spec.get("status") if h.machine_id in declared else None
        if want and h.status in LIVE and h.status != want:
            items.append(DriftItem(address=f"host.{h.machine_id}", kind="host", tenant=h.tenant,
                                   message=f"host {h.hostname or h.machine_id} is {h.status}; the applied state says {want}"))
    if live.hosts_observed:
        for pid, res in sorted(pools.items()):
            spec = res.spec
            want = (spec.get("hosts") or {}).get("min") or 0
            if spec.get("mode") in ("persistent", "hybrid") and count.get(pid, 0) < want:
                items.append(DriftItem(address=f"pool.{pid}", kind="pool", tenant=spec.get("tenant"), pool=pid,
                                       message=f"pool {pid} has {count.get(pid, 0)} of its {want} required hosts"))
            most = (spec.get("hosts") or {}).get("max")
            if most is not None and members.get(pid, 0) > most:
                items.append(DriftItem(address=f"pool.{pid}", kind="pool", tenant=spec.get("tenant"), pool=pid,
                                       message=f"pool {pid} has {members[pid]} registered hosts, above its hosts.max of "
                                               f"{most} (remove some with `fleet hosts rm`)"))
    if live.instances_observed:
        for inst in live.instances:
            if inst.pool not in pools:
                items.append(DriftItem(address=f"instance.{inst.instance_id}", kind="instance", pool=inst.pool,
                                       message=f"{inst.backend} instance {inst.instance_id} belongs to pool {inst.pool}, "
                                               "which is not in the applied config"))
            elif inst.state == "missing":
                items.append(DriftItem(address=f"instance.{inst.instance_id}", kind="instance", pool=inst.pool,
                                       tenant=pools[inst.pool].spec.get("tenant"),
                                       message=f"{inst.backend} instance {inst.instance_id} of pool {inst.pool} is gone "
                                               "(deleted outside fleet?)"))
    return items
