"""fleet.scheduler: the one pure placement engine (`schedule(snapshot, pending, now) -> DispatchPlan`) and the
session phase table. Called by the dispatcher (fleet.dispatch), `fleet route test` (fleet.cli.route_cmds) and the
plan's consequences (fleet.reconciler.consequences); it sits on the floor beside fleet.routing so that the
reconciler, which may not import its sibling fleet.dispatch, calls the same code. Imports only fleet.routing.
"""

from fleet.scheduler.core import (
    REASON_KINDS,
    WAITS_FOR_CAPACITY,
    Assignment,
    DispatchPlan,
    HostState,
    Pass,
    PendingGroup,
    Placement,
    PoolDemand,
    PoolStatus,
    Probe,
    Reason,
    Route,
    Snapshot,
    Unplaced,
    group,
    place,
    pool_status,
    probe,
    schedule,
    snapshot_of,
    statuses,
    why,
)
from fleet.scheduler.index import PoolIndex, SlotHost

__all__ = ["REASON_KINDS", "WAITS_FOR_CAPACITY", "Assignment", "DispatchPlan", "HostState", "Pass", "PendingGroup",
           "Placement", "PoolDemand", "PoolIndex", "Probe", "PoolStatus", "Reason", "Route", "SlotHost", "Snapshot", "Unplaced",
           "group", "place", "pool_status", "probe", "schedule", "snapshot_of", "statuses", "why"]
