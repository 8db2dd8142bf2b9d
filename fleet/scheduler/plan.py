"""The plan a scheduling pass answers with: `DispatchPlan` (assignments, unplaced sessions with their one reason,
re-queues, stops, failures, resends) and the unplaced demand per pool (`PoolDemand`). Plain data. Pure.

`fleet.scheduler.core.schedule` makes the assignments and the unplaced part; the dispatcher's reconciliation
(fleet.dispatch.reconcile) the rest; the plan applier (fleet.dispatch.applier) applies it; the capacity controller
and the views read `demand()`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.scheduler.model import Reason


@dataclass(frozen=True, slots=True)
class Assignment:
    """Session -> host. `revision`: the session's revision the plan was made on; the applier writes the assignment
    by compare-and-set on it, and the fencing token the host gets is the revision that write lands at (DESIGN.md §6:
    the KV revision of the claim), so a token can never be reused. None: `schedule` does not know revisions (the
    dispatcher fills it in when it turns the scheduler's plan into the one it applies)."""

    session: str
    project: str
    host: str
    pool: str
    role: str  # preferred | fallback | candidate
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class Requeue:
    """A session lost with its host (`why`): queued again (attempt + 1), or failed when out of attempts, or
    cancelled when a cancel was pending."""

    session: str
    why: str


@dataclass(frozen=True, slots=True)
class Stop:
    """An order to host `host` to stop session `session` (under fencing token `fence`, None: any)."""

    host: str
    session: str
    fence: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A session the server ends itself, in final phase `phase` (its host did not: a cancel not confirmed, a
    timeout passed); its host is told to stop it."""

    session: str
    phase: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resend:
    """An assignment a live host has not taken up yet, sent to it again."""

    session: str


@dataclass(frozen=True, slots=True)
class Unplaced:
    """`count` sessions of one group that wait, the first being `head`, all for one reason."""

    project: str
    labels: frozenset[str]
    model: str | None
    head: str
    count: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class PoolDemand:
    """Sessions that wait for one pool, by reason kind (plain data for the capacity controller)."""

    pool: str
    sessions: int
    by_reason: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class DispatchPlan:
    """What a pass decided. `schedule` fills in assignments and unplaced; the dispatcher's reconciliation
    (fleet.dispatch.reconcile) adds requeues, stops, failures and resends; the plan applier
    (fleet.dispatch.applier) applies exactly that."""

    assignments: tuple[Assignment, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    at: float = 0.0
    requeues: tuple[Requeue, ...] = ()
    stops: tuple[Stop, ...] = ()
    failures: tuple[Failure, ...] = ()
    resends: tuple[Resend, ...] = ()

    def demand(self) -> dict[str, PoolDemand]:
        """Unplaced demand per pool: how many sessions wait for it, and why (sessions of an unknown project wait for
        no pool and are only in `unplaced`)."""
        counts: dict[str, Counter[str]] = {}
        for u in self.unplaced:
            if u.reason.pool is not None:
                counts.setdefault(u.reason.pool, Counter())[u.reason.kind] += u.count
        return {p: PoolDemand(p, sum(c.values()), dict(c)) for p, c in sorted(counts.items())}

    def reason_of(self, session: str) -> Reason | None:
        return next((u.reason for u in self.unplaced if u.head == session), None)
