"""fleet.scheduler: the one pure placement engine (`schedule(snapshot, pending, now) -> DispatchPlan`) and the
session phase table. Called by the dispatcher (fleet.dispatch), `fleet route test` (fleet.cli.route_cmds) and the
plan's consequences (fleet.reconciler.consequences); it sits on the floor beside fleet.routing so that the
reconciler, which may not import its sibling fleet.dispatch, calls the same code. Imports only fleet.routing and
fleet.schema (the one pool model, the vocabulary).

Modules: `model` (the plain data in and out, the hard filters), `core` (`schedule`, `place`, the one reason a
session waits), `index` (the per-pool heap: the fast path), `probe` (route test's question and one-off snapshots),
`plan` (the DispatchPlan), `phases` (the phase transition table).
"""

from fleet.scheduler.core import group, place, pool_status, schedule, statuses, why
from fleet.scheduler.index import PoolIndex, SlotHost
from fleet.scheduler.model import (
    REASON_KINDS,
    WAITS_FOR_CAPACITY,
    HostState,
    Pass,
    PendingGroup,
    Placement,
    PoolStatus,
    Reason,
    Route,
    Snapshot,
)
from fleet.scheduler.plan import (
    Assignment,
    DispatchPlan,
    Failure,
    PoolDemand,
    Requeue,
    Resend,
    Stop,
    Unplaced,
)
from fleet.scheduler.probe import Probe, probe, snapshot_of

__all__ = ["REASON_KINDS", "WAITS_FOR_CAPACITY", "Assignment", "DispatchPlan", "Failure", "HostState", "Pass", "PendingGroup",
           "Placement", "PoolDemand", "PoolIndex", "PoolStatus", "Probe", "Reason", "Requeue", "Resend", "Route", "SlotHost", "Snapshot", "Stop",
           "Unplaced", "group", "place", "pool_status", "probe", "schedule", "snapshot_of", "statuses", "why"]
