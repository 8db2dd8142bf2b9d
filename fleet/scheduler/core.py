"""The scheduler: `schedule(snapshot, pending, now) -> DispatchPlan`, the one placement engine. Pure.

Plain data in, plain data out, no asyncio, no nats. The dispatcher (fleet.dispatch.dispatcher) calls it on every
submit and dispatch pass, `fleet route test` (fleet.cli.route_cmds, through fleet.scheduler.probe) on a probe session, and the plan's consequences
(fleet.reconciler.consequences) on the queued sessions, each on a `Snapshot` of the same kind: hosts (status,
tenant, pools, labels, models, slots used/max), pools (fleet.schema.models.Pool: mode, hosts min/max, labels,
models) and routes (`Route`: preferred, fallback, candidates, mode, required labels, model).

Rules (Rensei + Sagewai semantics, DESIGN.md §6): hard filters first, never relaxed: the host's tenant is the
route's, it serves the pool, it is active (not paused, draining, offline or revoked), it has every label the
session needs, it serves its model (the host's models if it lists any, else its pool's; none listed: any), it
has a free slot (slots used < max, counting what this pass already gave it). Then the route: the preferred pool if
a host there has a free slot, else the fallback (preferred-with-fallback), else the session waits; adaptive takes
the least loaded host among the preferred pool and the candidates. Capacity is only what live hosts have now: a
pool whose backend could create hosts (on_demand, hybrid) has no slot until a host exists.

A session that cannot be placed gets exactly one `Reason` (its kind, the pool it waits for, words): the first pool
of its route whose backend can add a host that suits it (WAITS_FOR_BACKEND: that is what will place it), else its
preferred pool's reason. `DispatchPlan.demand()` sums them per pool: the unplaced demand that the capacity
controller reads. Sessions of one group (same project, labels, model) are placed in order; the first that cannot
be placed stops its group (FIFO within a group: the rest wait behind it, with its reason).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from fleet.routing.rules import Route, serves
from fleet.scheduler.index import SlotHost, dispatchable, load_of
from fleet.scheduler.model import (
    MISSING_LABEL,
    MODEL_UNSERVED,
    NO_HOST,
    NOT_ACTIVE,
    POOL_FULL,
    TENANT_HAS_NONE,
    UNKNOWN_POOL,
    UNKNOWN_PROJECT,
    WAITS_FOR_BACKEND,
    Pass,
    PendingGroup,
    Placement,
    PoolStatus,
    Reason,
    Snapshot,
    suits,
)
from fleet.scheduler.plan import Assignment, DispatchPlan, Unplaced
from fleet.schema.vocabulary import LIVE_STATUSES


def group(requests: Iterable[tuple[str, str, Iterable[str], str | None]]) -> list[PendingGroup]:
    """(session, project, labels, model) in order -> their groups, in the order of each group's first session."""
    groups: dict[tuple[str, frozenset[str], str | None], list[str]] = {}
    for sid, project, labels, model in requests:
        groups.setdefault((project, frozenset(labels), model), []).append(sid)
    return [PendingGroup(p, lb, m, ids, len(ids)) for (p, lb, m), ids in groups.items()]


def _pick(snapshot: Snapshot, route: Route, pool_id: str, p: Pass) -> SlotHost | None:
    index = snapshot.index.get(pool_id)
    if index is None or pool_id not in snapshot.pools:
        return None
    models = snapshot.pool_models.get(pool_id, frozenset())
    return index.pick(lambda host: suits(route, host, models), p.taken, p.local.get(pool_id))


def place(route: Route, snapshot: Snapshot, p: Pass | None = None) -> Placement | None:
    """The host one session of `route` goes to now (not taken: `schedule` takes it), or None (it waits)."""
    p = p if p is not None else Pass()
    if route.mode == "adaptive":
        best: Placement | None = None
        best_load = 2.0
        for pool_id in route.pools:
            host = _pick(snapshot, route, pool_id, p)
            if host is not None:
                load = load_of(host.used + p.taken.get(host.machine_id, 0), host.slots)
                if load < best_load:
                    best, best_load = Placement(pool_id, host, route.role(pool_id)), load
        return best
    for pool_id in route.pools:
        host = _pick(snapshot, route, pool_id, p)
        if host is not None:
            return Placement(pool_id, host, route.role(pool_id))
    return None


def schedule(snapshot: Snapshot, pending: Iterable[PendingGroup], now: float = 0.0) -> DispatchPlan:
    """Place the pending sessions, group by group in the order given (see the module docstring)."""
    p = Pass()
    assignments: list[Assignment] = []
    unplaced: list[Unplaced] = []
    for g in pending:
        base = snapshot.routes.get(g.project)
        if base is None:
            head = next(iter(g.sessions), None)
            if head is not None:
                unplaced.append(Unplaced(g.project, g.labels, g.model, head, g.size, Reason(
                    UNKNOWN_PROJECT, None, f"project {g.project} is not in the applied config")))
            continue
        route = base.for_session(g.labels, g.model)
        for placed, sid in enumerate(g.sessions):
            where = place(route, snapshot, p)
            if where is None:
                unplaced.append(Unplaced(g.project, g.labels, g.model, sid, max(g.size - placed, 1),
                                         why(route, snapshot, p)))
                break
            p.take(where.host)
            assignments.append(Assignment(sid, g.project, where.host.machine_id, where.pool, where.role))
    return DispatchPlan(tuple(assignments), tuple(unplaced), now)


def statuses(route: Route, snapshot: Snapshot, p: Pass | None = None) -> list[PoolStatus]:
    """Every pool of the route, in the order it tries them, as the route sees it now."""
    return [pool_status(route, snapshot, pool_id, p) for pool_id in route.pools]


def why(route: Route, snapshot: Snapshot, p: Pass | None = None) -> Reason:
    """The one reason a session of `route` waits (see the module docstring); its words cover every pool."""
    found = statuses(route, snapshot, p)
    reasons = [s.reason for s in found if s.reason is not None]
    if not reasons:  # a pool has a free slot: the session would be placed (callers ask only when it was not)
        return Reason(POOL_FULL, route.preferred, f"preferred {route.preferred} had no free slot in this pass")
    words = ", ".join(f"{s.role} {s.reason.message}" for s in found if s.reason is not None)
    if route.mode == "preferred-only" or route.mode == "preferred-with-fallback" and not route.fallback:
        words += ", no fallback"
    chosen = next((r for r in reasons if r.kind == WAITS_FOR_BACKEND), reasons[0])
    return Reason(chosen.kind, chosen.pool, words, chosen.detail)


def pool_status(route: Route, snapshot: Snapshot, pool_id: str, p: Pass | None = None) -> PoolStatus:
    """One pool for one route: slots of the hosts that suit the route, and the reason it takes nothing now."""
    taken = p.taken if p is not None else {}
    role = route.role(pool_id)
    pool = snapshot.pools.get(pool_id)
    if pool is None:
        return PoolStatus(pool_id, role, 0, 0, Reason(UNKNOWN_POOL, pool_id, f"pool {pool_id} is not applied"))
    members = list(snapshot.members.get(pool_id, {}).values())
    ours = [h for h in members if h.tenant == route.tenant]
    live = [h for h in ours if h.status in LIVE_STATUSES]
    fitting = [h for h in live if route.labels <= h.labels]
    models = snapshot.pool_models.get(pool_id, frozenset())
    serving = [h for h in fitting if serves(route, h, models)]
    active = [h for h in serving if dispatchable(h)]
    used = sum(h.used + taken.get(h.machine_id, 0) for h in active)
    total = sum(h.slots for h in active)
    free = any(h.used + taken.get(h.machine_id, 0) < h.slots for h in active)

    missing_in_pool = sorted(route.labels - set(pool.labels))
    model_in_pool = not route.model or not pool.models or route.model in pool.models
    new_fit = not missing_in_pool and model_in_pool  # a host the backend creates has the pool's labels and models
    can_grow = pool.elastic and (pool.hosts_max is None or len(live) < pool.hosts_max) and pool.tenant == route.tenant

    def status(reason: Reason | None) -> PoolStatus:
        return PoolStatus(pool_id, role, used, total, reason, pool.elastic, pool.mode, pool.hosts_max, len(live),
                          can_grow and new_fit)

    if free:
        return status(None)
    if pool.tenant != route.tenant:
        return status(Reason(TENANT_HAS_NONE, pool_id, f"pool {pool_id} belongs to tenant {pool.tenant}",
                             route.tenant))
    limit = f"up to {pool.hosts_max} hosts" if pool.hosts_max is not None else "no host limit"
    mode = pool.mode.replace("_", " ")
    if can_grow and new_fit:
        if not live:
            text = f"pool {pool_id} has no host yet: waits for its backend ({mode}, {limit})"
        else:
            text = f"{pool_id} FULL [{used}/{total}]: waits for its backend to add a host ({mode}, {limit})"
        return status(Reason(WAITS_FOR_BACKEND, pool_id, text))
    if not live and pool.elastic and missing_in_pool:
        return status(Reason(MISSING_LABEL, pool_id, f"pool {pool_id}: no host has label {', '.join(missing_in_pool)} "
                             "(nor would one its backend adds)", ", ".join(missing_in_pool)))
    if not live and pool.elastic and not model_in_pool:
        return status(Reason(MODEL_UNSERVED, pool_id, f"pool {pool_id}: no host serves model {route.model} "
                             "(nor would one its backend adds)", route.model or ""))
    if not members:
        return status(Reason(NO_HOST, pool_id, f"pool {pool_id} has no host"))
    if not ours:
        return status(Reason(TENANT_HAS_NONE, pool_id, f"pool {pool_id}: tenant {route.tenant} has no host there",
                             route.tenant))
    if not live:
        return status(Reason(NO_HOST, pool_id, f"pool {pool_id} has no live host ({_count(ours)})"))
    if not fitting:
        missing = sorted(route.labels - set().union(*(h.labels for h in live)))
        what = ", ".join(missing) if missing else ", ".join(sorted(route.labels))
        text = f"pool {pool_id}: no host has label {what}" if missing else f"pool {pool_id}: no host has all labels {what}"
        return status(Reason(MISSING_LABEL, pool_id, text, what))
    if not serving:
        return status(Reason(MODEL_UNSERVED, pool_id, f"pool {pool_id}: no host serves model {route.model}",
                             route.model or ""))
    if not active:
        return status(Reason(NOT_ACTIVE, pool_id, f"pool {pool_id}: no active host ({_count(serving)})"))
    at_max = f", at its max of {pool.hosts_max} hosts" if pool.elastic else ""
    return status(Reason(POOL_FULL, pool_id, f"{pool_id} FULL [{used}/{total}]{at_max}"))


def _count(hosts: Iterable[SlotHost]) -> str:
    counts = Counter(h.status for h in hosts)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
