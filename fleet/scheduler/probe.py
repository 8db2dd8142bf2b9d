"""What `fleet route test` and the plan's consequences ask of the scheduler. Pure.

`snapshot_of` builds a one-off fleet.scheduler Snapshot from observed hosts (fleet.hosts.model.Host) and the pool
and routing specs of fleet.yaml or the applied store; `probe` schedules one probe session on it (the dispatcher's own
`schedule`) and says where it would go now, every pool as the route sees it, why it would wait and what would
change that. Called by fleet.cli.route_cmds (route test) and fleet.reconciler.consequences (snapshot_of).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleet.scheduler.core import schedule, statuses
from fleet.scheduler.model import HostState, PendingGroup, PoolStatus, Reason, Route, Snapshot
from fleet.schema.models import Pool


def snapshot_of(hosts: Iterable[Any], pools: Mapping[str, Mapping[str, Any] | Pool],
                routes: Mapping[str, Mapping[str, Any]],
                *, slots: Mapping[str, int] | None = None) -> Snapshot:
    """A one-off snapshot from observed hosts (fleet.hosts.model.Host), pools (Pools or their specs) and routing
    specs (the shapes of fleet.reconciler.desired: what the applied store and fleet.yaml hold). `slots`: a host's slots to use instead
    of its own (machine id -> slots; the plan's `after` side). Used by `fleet route test` and the consequences."""
    slots = slots or {}
    return Snapshot.build((HostState.of(h, slots.get(h.machine_id)) for h in hosts), _pools(pools),
                          {project: Route.of(project, spec) for project, spec in routes.items()})


def _pools(pools: Mapping[str, Mapping[str, Any] | Pool]) -> dict[str, Pool]:
    """The pools that read as Pools; a record that does not (no tenant, a field of the wrong shape) is left out, as
    the dispatcher's applied config leaves it out (fleet.hosts.config), so route test and the plan see its fleet."""
    out = {}
    for pid, spec in pools.items():
        try:
            out[pid] = Pool.from_spec(pid, spec)
        except ValueError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class Probe:
    """Where the next session of a project would go now (`probe`): the decision of `fleet route test`."""

    project: str
    route: Route | None
    statuses: tuple[PoolStatus, ...]
    pool: str | None  # None: it would wait
    role: str  # preferred | fallback | candidate | pending
    host: str | None
    reason: Reason | None  # why it would wait

    @property
    def would_change(self) -> str | None:
        """What would change the decision: what places a waiting session; for one that goes to its fallback or a
        candidate, what frees the preferred pool."""
        if self.reason is not None:
            return self.reason.remedy
        preferred = next((s for s in self.statuses if s.role == "preferred"), None)
        if self.role != "preferred" and preferred is not None and preferred.reason is not None:
            return f"the preferred pool takes it once {preferred.reason.remedy}"
        return None


def probe(snapshot: Snapshot, project: str, labels: Iterable[str] = (), model: str | None = None) -> Probe:
    """Schedule one probe session of `project` on `snapshot` (the same `schedule` as the dispatcher's)."""
    labels = frozenset(labels)
    plan = schedule(snapshot, [PendingGroup(project, labels, model, ("probe",), 1)])
    base = snapshot.routes.get(project)
    route = base.for_session(labels, model) if base is not None else None
    found = tuple(statuses(route, snapshot)) if route is not None else ()
    if plan.assignments:
        a = plan.assignments[0]
        return Probe(project, route, found, a.pool, a.role, a.host, None)
    return Probe(project, route, found, None, "pending", None, plan.unplaced[0].reason)
