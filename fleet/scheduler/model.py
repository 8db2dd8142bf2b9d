"""The scheduler's plain data: what it reads (HostState, Route, Snapshot, PendingGroup), what it answers
about a pool or a waiting session (PoolStatus, Reason) and the hard filters (`serves`, `suits`). Pure.
`Route` and `serves` are fleet.routing's (the one route model and its model rule), pools are fleet.schema.models.Pool
(the one pool model); both are re-exported here. `HostState` is the scheduler's host: fleet.routing.HostView plus the
version its index ranks by. The plan it answers with (DispatchPlan and its parts) is in
fleet.scheduler.plan.

Read by fleet.scheduler.core (which decides) and by its callers through fleet.scheduler: the dispatcher keeps a
`Snapshot` current host by host, `fleet route test` and the plan's consequences build one-off ones
(fleet.scheduler.probe.snapshot_of). The reason kinds (REASON_KINDS) are what the session API and docs/protocol.md
call `wait_kind`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.routing.rules import Route, serves
from fleet.scheduler.index import Entry, PoolIndex, SlotHost, load_of
from fleet.schema.models import Pool

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


@dataclass(slots=True, eq=False)
class HostState:
    """A host as the scheduler sees it (fleet.scheduler.index.SlotHost): the one host model of placement.

    Its slots in use are `running` (the sessions a one-off snapshot saw it report: `fleet route test`, the plan's
    consequences) plus `sessions` (the IDs of the sessions the dispatcher's leader gave it: it needs them to re-queue
    them when the host goes away; empty in a one-off snapshot). Whoever changes its load bumps `version` and
    re-ranks it (`Snapshot.rank`): the index keeps an entry while its version is current."""

    machine_id: str
    tenant: str
    pools: tuple[str, ...]
    labels: frozenset[str]
    models: frozenset[str]
    status: str
    slots: int
    running: int = 0
    hostname: str = ""
    version: int = 0
    sessions: set[str] = field(default_factory=set)

    @property
    def used(self) -> int:
        return self.running + len(self.sessions)

    @property
    def free(self) -> int:
        return self.slots - self.used

    @classmethod
    def of(cls, host: Any, slots: int | None = None) -> HostState:
        """From a fleet.hosts.model.Host (or any fleet.routing.HostView)."""
        return cls(host.machine_id, host.tenant, tuple(host.pools), frozenset(host.labels), frozenset(host.models),
                   host.status, host.slots if slots is None else slots, host.used, host.hostname)

    @classmethod
    def tracked(cls, host: Any, current: HostState | None = None) -> HostState:
        """The dispatcher's view of registry host `host`: its load is the sessions the leader gave it (`current`'s,
        kept), not what it reports; its version is bumped past `current`'s (so the index re-ranks it)."""
        view = cls(host.machine_id, host.tenant, tuple(host.pools), frozenset(host.labels), frozenset(host.models),
                   host.status, host.max_sessions, 0, host.hostname)
        if current is not None:
            view.sessions, view.version = current.sessions, current.version + 1
        return view


def suits(route: Route, host: SlotHost, pool_models: frozenset[str]) -> bool:
    """The hard filters but status and free slots (the index holds only active hosts; `pick` checks slots)."""
    return host.tenant == route.tenant and route.labels <= host.labels and serves(route, host, pool_models)


class Snapshot:
    """Hosts, pools and routes, plus the indexes the scheduler reads them through (per pool: every member, and the
    active ones by load). Whoever owns a snapshot keeps it current with `put_host` / `drop_host` / `set_config`;
    `schedule` only reads it."""

    def __init__(self) -> None:
        self.hosts: dict[str, SlotHost] = {}
        self.pools: dict[str, Pool] = {}
        self.routes: dict[str, Route] = {}
        self.index: dict[str, PoolIndex] = {}  # pool -> its active hosts by load
        self.members: dict[str, dict[str, SlotHost]] = {}  # pool -> every host that serves it, any status
        self.pool_models: dict[str, frozenset[str]] = {}

    @classmethod
    def build(cls, hosts: Iterable[SlotHost], pools: Mapping[str, Pool], routes: Mapping[str, Route]) -> Snapshot:
        snap = cls()
        snap.set_config(pools, routes)
        for host in hosts:
            snap.put_host(host)
        return snap

    def set_config(self, pools: Mapping[str, Pool], routes: Mapping[str, Route]) -> None:
        self.pools, self.routes = dict(pools), dict(routes)
        self.pool_models = {pid: frozenset(p.models) for pid, p in self.pools.items()}

    def set_pool(self, pool_id: str, pool: Pool | None) -> None:
        """One pool applied, changed (or, None, deleted): a config change costs one pool, not all of them."""
        if pool is None:
            self.pools.pop(pool_id, None)
            self.pool_models.pop(pool_id, None)
        else:
            self.pools[pool_id], self.pool_models[pool_id] = pool, frozenset(pool.models)

    def set_route(self, project: str, route: Route | None) -> None:
        if route is None:
            self.routes.pop(project, None)
        else:
            self.routes[project] = route

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
class PendingGroup:
    """Sessions that ask for the same thing, in the order they are to be placed. `sessions` is read lazily, only as
    far as the scheduler places them (plus the one it cannot place); `size` counts them all."""

    project: str
    labels: frozenset[str]
    model: str | None
    sessions: Iterable[str]
    size: int


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
