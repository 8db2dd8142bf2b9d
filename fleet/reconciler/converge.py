"""Convergence: have the live hosts caught up with what an apply wrote? Pure.

After `fleet apply` writes pool and host records, agents watching the store converge: their capacity and labels
follow their pools, their status follows the `hosts:` declarations. `targets(plan)` extracts what to wait for;
`pending(targets, hosts)` lists, in words, every live host that has not caught up yet (offline and revoked hosts
are skipped: they pick the change up when they return). Called by `fleet apply`, which polls until nothing is
pending or its timeout passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleet.hosts.model import LIVE_STATUSES, host_slots
from fleet.reconciler.live import ObservedHost
from fleet.reconciler.plan import Plan
from fleet.schema.models import Pool

LIVE = LIVE_STATUSES


@dataclass(frozen=True)
class Targets:
    """What an apply asks the live hosts to catch up with: the pools it wrote (the one pool model, as applied) and
    the declared status of each host it wrote."""

    pools: dict[str, Pool] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pools or self.hosts)


def targets(plan: Plan) -> Targets:
    pools: dict[str, Pool] = {}
    hosts: dict[str, str] = {}
    for c in plan.changes:
        if c.action == "delete" or not c.after:
            continue
        if c.kind == "pool":
            try:
                pools[c.id] = Pool.from_spec(c.id, c.after)
            except ValueError:  # not a pool spec (a hand-edited saved plan): nothing a host could converge on
                continue
        elif c.kind == "host" and c.after.get("status"):
            hosts[c.id] = c.after["status"]
    return Targets(pools, hosts)


def pending(t: Targets, hosts: Iterable[ObservedHost], pool_slots: Mapping[str, int | None] | None = None) -> list[str]:
    """What is not converged yet, one line per host and reason; empty when everything has caught up.

    `pool_slots` is max_concurrent_sessions of every applied pool (a host serving several pools converges on the
    smallest, fleet.hosts.model.host_slots); without it only the changed pools are known.
    """
    out: list[str] = []
    slots_of = dict(pool_slots or {})
    for pool_id, target in t.pools.items():
        slots_of.setdefault(pool_id, target.max_concurrent_sessions)
    for h in hosts:
        if h.status not in LIVE:
            continue
        name = h.hostname or h.machine_id[:8]
        if any(p in t.pools for p in h.pools):
            want = host_slots(slots_of.get(p) for p in h.pools)
            if want is not None and h.max_sessions != want:
                wanted_by = ", ".join(p for p in h.pools if slots_of.get(p) == want)
                out.append(f"{name}: {h.max_sessions} slots, {wanted_by} wants {want}")
        for pool_id in h.pools:
            pool_target = t.pools.get(pool_id)
            if pool_target is None:
                continue
            missing = sorted(set(pool_target.labels) - set(h.labels))
            if missing:
                out.append(f"{name}: lacks {pool_id} labels {', '.join(missing)}")
        declared = t.hosts.get(h.machine_id)
        if declared and h.status != declared:
            out.append(f"{name}: {h.status}, fleet.yaml says {declared}")
    return out
