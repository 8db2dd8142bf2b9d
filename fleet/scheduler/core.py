"""The scheduler: `schedule(snapshot, pending, now) -> DispatchPlan`, the one placement engine. Pure.

Plain data in, plain data out, no asyncio, no nats. The dispatcher (fleet.dispatch.dispatcher) calls it on every
submit and dispatch pass, `fleet route test` (fleet.cli.route_cmds) on a probe session, and the plan's consequences
(fleet.reconciler.consequences) on the queued sessions, each on a `Snapshot` of the same kind: hosts (status,
tenant, pools, labels, models, slots used/max), pools (fleet.routing.PoolView: mode, hosts min/max, labels,
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

import heapq
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.routing.rules import PoolView, route_pools
from fleet.scheduler.index import Entry, PoolIndex, SlotHost, dispatchable, load_of

LIVE_STATUSES = frozenset({"active", "paused", "draining"})  # = fleet.hosts.model.LIVE_STATUSES (a test holds it)

# the kinds of reason a session waits (one per unplaced session)
WAITS_FOR_BACKEND = "waits_for_backend"  # an elastic pool can add a host that suits it: no host yet, or all full
POOL_FULL = "pool_full"  # every host that suits it is busy, and the pool cannot grow
NO_HOST = "no_host"  # the pool has no live host (and cannot create one)
TENANT_HAS_NONE = "tenant_has_none"  # the pool has hosts, none of the route's tenant
MISSING_LABEL = "missing_label"  # no live host of the pool has a label the session needs
MODEL_UNSERVED = "model_unserved"  # no live host of the pool serves the session's model
NOT_ACTIVE = "not_active"  # the hosts that suit it are paused or draining
UNKNOWN_POOL = "unknown_pool"  # the route names a pool that is not applied
UNKNOWN_PROJECT = "unknown_project"  # the session's project has no applied route
REASON_KINDS = (WAITS_FOR_BACKEND, POOL_FULL, NO_HOST, TENANT_HAS_NONE, MISSING_LABEL, MODEL_UNSERVED, NOT_ACTIVE,
                UNKNOWN_POOL, UNKNOWN_PROJECT)
#: a session waiting for one of these runs once capacity frees or grows; any other needs a change of hosts or config
WAITS_FOR_CAPACITY = frozenset({WAITS_FOR_BACKEND, POOL_FULL})

STATE_WORDS = {None: "AVAILABLE", POOL_FULL: "FULL", WAITS_FOR_BACKEND: "WAITS FOR BACKEND", NO_HOST: "NO HOST",
               TENANT_HAS_NONE: "NO HOST OF TENANT", MISSING_LABEL: "NO HOST WITH LABEL",
               MODEL_UNSERVED: "MODEL NOT SERVED", NOT_ACTIVE: "NO ACTIVE HOST", UNKNOWN_POOL: "NOT APPLIED"}


@dataclass(frozen=True, slots=True)
class HostState:
    """A host as the scheduler sees it (fleet.scheduler.index.SlotHost), for one-off snapshots."""

    machine_id: str
    tenant: str
    pools: tuple[str, ...]
    labels: frozenset[str]
    models: frozenset[str]
    status: str
    slots: int
    used: int = 0
    hostname: str = ""
    version: int = 0

    @classmethod
    def of(cls, host: Any, slots: int | None = None) -> HostState:
        """From a fleet.hosts.model.Host (or anything with its attributes: running, max_sessions)."""
        return cls(host.machine_id, host.tenant, tuple(host.pools), frozenset(host.labels), frozenset(host.models),
                   host.status, host.max_sessions if slots is None else slots, host.running, host.hostname)


@dataclass(frozen=True, slots=True)
class Route:
    """What a session asks of its host: its project's routing plus its own labels and model."""

    project: str
    tenant: str
    mode: str
    preferred: str
    fallback: str | None = None
    candidates: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()
    model: str | None = None

    @property
    def pools(self) -> tuple[str, ...]:
        """The pools this route may use, in the order it tries them (fleet.routing.rules.route_pools)."""
        return route_pools(self.mode, self.preferred, self.fallback, self.candidates)

    def role(self, pool_id: str) -> str:
        if pool_id == self.preferred:
            return "preferred"
        return "candidate" if self.mode == "adaptive" else "fallback"

    def for_session(self, labels: Iterable[str] = (), model: str | None = None) -> Route:
        """This route for a session that also needs `labels` and (instead of the route's) `model`."""
        extra = frozenset(labels)
        if not extra - self.labels and (model is None or model == self.model):
            return self
        return Route(self.project, self.tenant, self.mode, self.preferred, self.fallback, self.candidates,
                     self.labels | extra, model or self.model)

    @classmethod
    def of(cls, project: str, spec: Mapping[str, Any], labels: Iterable[str] = (), model: str | None = None) -> Route:
        """The route of `project` from its routing spec (fleet.reconciler.desired.route_spec), for a session with
        these labels and model."""
        return cls(project=project, tenant=spec.get("tenant", ""), mode=spec.get("mode", "preferred-only"),
                   preferred=spec.get("preferred_pool", ""), fallback=spec.get("fallback_pool"),
                   candidates=tuple(spec.get("candidates") or ()),
                   labels=frozenset(spec.get("required_labels") or ()) | frozenset(labels),
                   model=model or spec.get("model"))


def serves(route: Route, host: SlotHost, pool_models: frozenset[str]) -> bool:
    """The model rule: the host's models if it lists any, else its pool's; nothing listed serves any model."""
    if route.model is None:
        return True
    served = host.models or pool_models
    return not served or route.model in served


def suits(route: Route, host: SlotHost, pool_models: frozenset[str]) -> bool:
    """The hard filters but status and free slots (the index holds only active hosts; `pick` checks slots)."""
    return host.tenant == route.tenant and route.labels <= host.labels and serves(route, host, pool_models)


class Snapshot:
    """Hosts, pools and routes, plus the indexes the scheduler reads them through (per pool: every member, and the
    active ones by load). Whoever owns a snapshot keeps it current with `put_host` / `drop_host` / `set_config`;
    `schedule` only reads it."""

    def __init__(self) -> None:
        self.hosts: dict[str, SlotHost] = {}
        self.pools: dict[str, PoolView] = {}
        self.routes: dict[str, Route] = {}
        self.index: dict[str, PoolIndex] = {}  # pool -> its active hosts by load
        self.members: dict[str, dict[str, SlotHost]] = {}  # pool -> every host that serves it, any status
        self.pool_models: dict[str, frozenset[str]] = {}

    @classmethod
    def build(cls, hosts: Iterable[SlotHost], pools: Mapping[str, PoolView], routes: Mapping[str, Route]) -> Snapshot:
        snap = cls()
        snap.set_config(pools, routes)
        for host in hosts:
            snap.put_host(host)
        return snap

    def set_config(self, pools: Mapping[str, PoolView], routes: Mapping[str, Route]) -> None:
        self.pools, self.routes = dict(pools), dict(routes)
        self.pool_models = {pid: frozenset(p.models) for pid, p in self.pools.items()}

    def put_host(self, host: SlotHost) -> None:
        """Add or replace a host (its version must differ from the one it replaces, if it is re-ranked)."""
        old = self.hosts.get(host.machine_id)
        if old is not None:
            for pool_id in set(old.pools) - set(host.pools):
                self.members.get(pool_id, {}).pop(host.machine_id, None)
                if pool_id in self.index:
                    self.index[pool_id].drop(host.machine_id)
        self.hosts[host.machine_id] = host
        for pool_id in host.pools:
            self.members.setdefault(pool_id, {})[host.machine_id] = host
            self.index_of(pool_id).put(host)

    def drop_host(self, machine_id: str) -> None:
        host = self.hosts.pop(machine_id, None)
        if host is None:
            return
        for pool_id in host.pools:
            self.members.get(pool_id, {}).pop(machine_id, None)
            if pool_id in self.index:
                self.index[pool_id].drop(machine_id)

    def rank(self, host: SlotHost) -> None:
        """Re-rank a host whose load changed (its version bumped) in the pools it serves."""
        for pool_id in host.pools:
            self.index_of(pool_id).put(host)

    def index_of(self, pool_id: str) -> PoolIndex:
        index = self.index.get(pool_id)
        if index is None:
            index = self.index[pool_id] = PoolIndex()
        return index


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a session waits: one kind (REASON_KINDS), the pool it waits for (None: no pool), and words."""

    kind: str
    pool: str | None
    message: str
    detail: str = ""  # what it needs of that pool, for `remedy`: the missing labels, the model, the tenant …

    @property
    def remedy(self) -> str:
        """What would place it."""
        p = self.pool
        return {
            WAITS_FOR_BACKEND: f"the backend of {p} adds a host (the capacity controller acts on this demand)",
            POOL_FULL: f"a slot opens in {p}",
            NO_HOST: f"a host enrolls in {p}",
            TENANT_HAS_NONE: f"a host of tenant {self.detail} enrolls in {p}",
            MISSING_LABEL: f"a host with label {self.detail} serves {p}",
            MODEL_UNSERVED: f"a host of {p} serves model {self.detail}",
            NOT_ACTIVE: f"a host of {p} is resumed (`fleet hosts resume`)",
            UNKNOWN_POOL: f"pool {p} is applied (`fleet apply`)",
            UNKNOWN_PROJECT: "the project is applied (`fleet apply`)",
        }[self.kind]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One pool as a route sees it now: slots of the hosts that suit the route, and why it takes nothing (if)."""

    pool: str
    role: str
    used: int
    total: int
    reason: Reason | None  # None: a host has a free slot
    elastic: bool = False
    mode: str = ""
    hosts_max: int | None = None
    hosts: int = 0  # live hosts of the route's tenant in the pool
    grows: bool = False  # its backend can add a host that suits the route (elastic, below hosts.max)

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def state(self) -> str:
        return STATE_WORDS[self.reason.kind if self.reason else None]

    @property
    def label(self) -> str:
        if not self.elastic:
            return f"[{self.used}/{self.total} slots used]"
        limit = f"up to {self.hosts_max} hosts" if self.hosts_max is not None else "no host limit"
        return f"[{self.used}/{self.total} slots, elastic {limit}]"


@dataclass(frozen=True, slots=True)
class Assignment:
    session: str
    project: str
    host: str
    pool: str
    role: str  # preferred | fallback | candidate


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
    assignments: tuple[Assignment, ...] = ()
    unplaced: tuple[Unplaced, ...] = ()
    at: float = 0.0

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


@dataclass(frozen=True, slots=True)
class PendingGroup:
    """Sessions that ask for the same thing, in the order they are to be placed. `sessions` is read lazily, only as
    far as the scheduler places them (plus the one it cannot place); `size` counts them all."""

    project: str
    labels: frozenset[str]
    model: str | None
    sessions: Iterable[str]
    size: int


def group(requests: Iterable[tuple[str, str, Iterable[str], str | None]]) -> list[PendingGroup]:
    """(session, project, labels, model) in order -> their groups, in the order of each group's first session."""
    groups: dict[tuple[str, frozenset[str], str | None], list[str]] = {}
    for sid, project, labels, model in requests:
        groups.setdefault((project, frozenset(labels), model), []).append(sid)
    return [PendingGroup(p, lb, m, ids, len(ids)) for (p, lb, m), ids in groups.items()]


@dataclass(slots=True)
class Pass:
    """What one scheduling pass has given out so far (the snapshot itself is never changed)."""

    taken: dict[str, int] = field(default_factory=dict)
    local: dict[str, list[Entry]] = field(default_factory=dict)  # pool -> pass-local heap of re-ranked hosts

    def take(self, host: SlotHost) -> None:
        n = self.taken[host.machine_id] = self.taken.get(host.machine_id, 0) + 1
        entry = (load_of(host.used + n, host.slots), random.random(), host.version, host.machine_id)
        for pool_id in host.pools:
            heapq.heappush(self.local.setdefault(pool_id, []), entry)


@dataclass(frozen=True, slots=True)
class Placement:
    pool: str
    host: SlotHost
    role: str  # preferred | fallback | candidate


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


def snapshot_of(hosts: Iterable[Any], pools: Mapping[str, Mapping[str, Any]], routes: Mapping[str, Mapping[str, Any]],
                *, slots: Mapping[str, int] | None = None) -> Snapshot:
    """A one-off snapshot from observed hosts (fleet.hosts.model.Host), pool specs and routing specs (the shapes of
    fleet.reconciler.desired: what the applied store and fleet.yaml hold). `slots`: a host's slots to use instead
    of its own (machine id -> slots; the plan's `after` side). Used by `fleet route test` and the consequences."""
    slots = slots or {}
    return Snapshot.build((HostState.of(h, slots.get(h.machine_id)) for h in hosts),
                          {pid: PoolView.from_spec(pid, spec) for pid, spec in pools.items()},
                          {project: Route.of(project, spec) for project, spec in routes.items()})


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
