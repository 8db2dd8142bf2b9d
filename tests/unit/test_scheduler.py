"""The pure scheduler (fleet.scheduler): every waiting reason and every phase transition, table-driven; a pass that
spreads by load; the unplaced demand per pool; and properties over generated fleets (elastic, full and labelled
pools, models, every host status, two tenants): never a host that is not active or of another tenant, never over a
host's slots or past the hosts a pool has, every pending session placed or waiting for exactly one reason, and the
decision of `fleet route test` equal to the dispatcher's. No NATS."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.bus.messages import FINAL_PHASES, LIVE_PHASES, SessionPhase
from fleet.hosts.model import LIVE_STATUSES, STATUSES, Host
from fleet.scheduler import (
    REASON_KINDS,
    HostState,
    PendingGroup,
    Route,
    Snapshot,
    group,
    probe,
    schedule,
    snapshot_of,
    statuses,
)
from fleet.scheduler import core as sched_core
from fleet.scheduler import model as sched
from fleet.scheduler.phases import FINAL, LIVE, PHASES, TRANSITIONS, allowed, successors
from fleet.schema.models import Pool

T = "fin"


def H(mid: str, *pools: str, tenant: str = T, status: str = "active", labels: tuple[str, ...] = (),
      models: tuple[str, ...] = (), slots: int = 2, used: int = 0) -> HostState:
    return HostState(mid, tenant, pools or ("main",), frozenset(labels), frozenset(models), status, slots, used)


def P(pid: str, mode: str = "persistent", *, hosts_max: int | None = None, tenant: str = T,
      labels: tuple[str, ...] = (), models: tuple[str, ...] = (), slots: int = 2) -> Pool:
    return Pool.from_spec(pid, {"tenant": tenant, "backend": "local", "mode": mode, "hosts": {"max": hosts_max},
                                "capacity": {"max_concurrent_sessions": slots}, "labels": labels, "models": models})


def R(preferred: str = "main", fallback: str | None = None, *, mode: str | None = None,
      candidates: tuple[str, ...] = (), labels: tuple[str, ...] = (), model: str | None = None) -> Route:
    mode = mode or ("preferred-with-fallback" if fallback else "preferred-only")
    return Route("app", T, mode, preferred, fallback, candidates, frozenset(labels), model)


def one(hosts, pools, route, labels=(), model=None):
    snap = Snapshot.build(hosts, {p.id: p for p in pools}, {"app": route})
    return snap, schedule(snap, [PendingGroup("app", frozenset(labels), model, ["s1"], 1)])


# ------------------------------------------------------------------------------------------- waiting reasons

# (name, hosts, pools, route, session labels, model, kind, pool it waits for, words it says)
WAITS = [
    ("persistent pool without a host", [], [P("main")], R(), (), None, sched.NO_HOST, "main",
     "preferred pool main has no host, no fallback"),
    ("on_demand pool without a host waits for its backend", [], [P("main", "on_demand", hosts_max=3)], R(), (), None,
     sched.WAITS_FOR_BACKEND, "main", "pool main has no host yet: waits for its backend (on demand, up to 3 hosts)"),
    ("hybrid pool full below its max waits for its backend", [H("a", used=2)], [P("main", "hybrid", hosts_max=3)],
     R(), (), None, sched.WAITS_FOR_BACKEND, "main", "main FULL [2/2]: waits for its backend to add a host (hybrid"),
    ("elastic pool at its max is full", [H("a", used=2)], [P("main", "hybrid", hosts_max=1)], R(), (), None,
     sched.POOL_FULL, "main", "main FULL [2/2], at its max of 1 hosts"),
    ("persistent pool full", [H("a", used=2), H("b", used=2)], [P("main")], R(), (), None, sched.POOL_FULL, "main",
     "preferred main FULL [4/4], no fallback"),
    ("only another tenant's hosts", [H("x", tenant="health")], [P("main")], R(), (), None, sched.TENANT_HAS_NONE,
     "main", "tenant fin has no host there"),
    ("pool of another tenant", [], [P("main", tenant="health")], R(), (), None, sched.TENANT_HAS_NONE, "main",
     "pool main belongs to tenant health"),
    ("no host with the label", [H("a", labels=("ssd",))], [P("main")], R(), ("gpu",), None, sched.MISSING_LABEL,
     "main", "pool main: no host has label gpu"),
    ("route's required label", [H("a")], [P("main")], R(labels=("tier=prod",)), (), None, sched.MISSING_LABEL, "main",
     "no host has label tier=prod"),
    ("elastic pool whose new hosts would lack the label", [], [P("main", "on_demand")], R(), ("gpu",), None,
     sched.MISSING_LABEL, "main", "no host has label gpu (nor would one its backend adds)"),
    ("model served nowhere", [H("a", models=("opus",))], [P("main")], R(), (), "gpt-4", sched.MODEL_UNSERVED, "main",
     "pool main: no host serves model gpt-4"),
    ("pool's models exclude it", [H("a")], [P("main", models=("opus",))], R(), (), "gpt-4", sched.MODEL_UNSERVED,
     "main", "no host serves model gpt-4"),
    ("elastic pool whose new hosts would not serve the model", [], [P("main", "hybrid", models=("opus",))], R(), (),
     "gpt-4", sched.MODEL_UNSERVED, "main", "(nor would one its backend adds)"),
    ("paused", [H("a", status="paused")], [P("main")], R(), (), None, sched.NOT_ACTIVE, "main",
     "no active host (1 paused)"),
    ("draining", [H("a", status="draining"), H("b", status="paused")], [P("main")], R(), (), None, sched.NOT_ACTIVE,
     "main", "no active host (1 draining, 1 paused)"),
    ("offline and revoked are not live", [H("a", status="offline"), H("b", status="revoked")], [P("main")], R(), (),
     None, sched.NO_HOST, "main", "no live host (1 offline, 1 revoked)"),
    ("zero slots", [H("a", slots=0)], [P("main")], R(), (), None, sched.NOT_ACTIVE, "main", "no active host (1 active)"),
    ("route to a pool not applied", [H("a", "ghost")], [P("main")], R("ghost"), (), None, sched.UNKNOWN_POOL, "ghost",
     "pool ghost is not applied"),
    ("preferred full, elastic fallback without a host: waits for the fallback's backend", [H("a", used=2)],
     [P("main"), P("cloud", "on_demand", hosts_max=2)], R("main", "cloud"), (), None, sched.WAITS_FOR_BACKEND, "cloud",
     "preferred main FULL [2/2], fallback pool cloud has no host yet"),
    ("preferred full, persistent fallback without a host: the preferred's reason", [H("a", used=2)],
     [P("main"), P("cloud")], R("main", "cloud"), (), None, sched.POOL_FULL, "main",
     "preferred main FULL [2/2], fallback pool cloud has no host"),
    ("adaptive: every candidate full", [H("a", used=2), H("c", "cloud", used=2)], [P("main"), P("cloud")],
     R(mode="adaptive", candidates=("cloud",)), (), None, sched.POOL_FULL, "main",
     "preferred main FULL [2/2], candidate cloud FULL [2/2]"),
]


@pytest.mark.parametrize(("name", "hosts", "pools", "route", "labels", "model", "kind", "pool", "words"), WAITS,
                         ids=[w[0] for w in WAITS])
def test_every_waiting_reason(name, hosts, pools, route, labels, model, kind, pool, words):
    _, plan = one(hosts, pools, route, labels, model)
    assert plan.assignments == ()
    [u] = plan.unplaced
    assert (u.reason.kind, u.reason.pool, u.head, u.count) == (kind, pool, "s1", 1)
    assert words in u.reason.message
    assert plan.demand()[pool].by_reason == {kind: 1}
    assert u.reason.remedy  # every kind says what would place it


def test_every_reason_kind_has_a_case():
    assert {w[6] for w in WAITS} | {sched.UNKNOWN_PROJECT} == set(REASON_KINDS)


def test_unknown_project_waits_for_no_pool():
    snap = Snapshot.build([H("a")], {"main": P("main")}, {})
    plan = schedule(snap, [PendingGroup("ghost", frozenset(), None, ["s1", "s2"], 2)])
    [u] = plan.unplaced
    assert (u.reason.kind, u.reason.pool, u.count) == (sched.UNKNOWN_PROJECT, None, 2)
    assert plan.demand() == {}


# (name, hosts, pools, route, pool status label, state word)
STATUS = [
    ("persistent with room", [H("a", used=1), H("b", used=1)], [P("main")], R(), "[2/4 slots used]", "AVAILABLE"),
    ("elastic without a host", [], [P("main", "on_demand", hosts_max=2)], R(), "[0/0 slots, elastic up to 2 hosts]",
     "WAITS FOR BACKEND"),
    ("elastic without a limit", [], [P("main", "hybrid")], R(), "[0/0 slots, elastic no host limit]",
     "WAITS FOR BACKEND"),
    ("persistent full", [H("a", used=2)], [P("main")], R(), "[2/2 slots used]", "FULL"),
    ("paused hosts' slots do not count", [H("a", status="paused")], [P("main")], R(), "[0/0 slots used]",
     "NO ACTIVE HOST"),
]


@pytest.mark.parametrize(("name", "hosts", "pools", "route", "label", "state"), STATUS, ids=[s[0] for s in STATUS])
def test_pool_status_words(name, hosts, pools, route, label, state):
    snap = Snapshot.build(hosts, {p.id: p for p in pools}, {"app": route})
    [status] = statuses(route, snap)
    assert (status.label, status.state) == (label, state)


# ------------------------------------------------------------------------------------------- placement

# (name, hosts, pools, route, labels, model, expected (pool, host, role))
PLACE = [
    ("preferred first", [H("a"), H("c", "cloud")], [P("main"), P("cloud")], R("main", "cloud"), (), None,
     ("main", "a", "preferred")),
    ("fallback when preferred is full", [H("a", used=2), H("c", "cloud")], [P("main"), P("cloud")], R("main", "cloud"),
     (), None, ("cloud", "c", "fallback")),
    ("preferred-only ignores the fallback", [H("a", used=2), H("c", "cloud")], [P("main"), P("cloud")],
     R("main", "cloud", mode="preferred-only"), (), None, None),
    ("an elastic pool with a live host takes sessions", [H("a", "od")], [P("od", "on_demand")], R("od"), (), None,
     ("od", "a", "preferred")),
    ("adaptive takes the least loaded", [H("a", used=1), H("c", "cloud")], [P("main"), P("cloud")],
     R(mode="adaptive", candidates=("cloud",)), (), None, ("cloud", "c", "candidate")),
    ("labels and models filter", [H("a"), H("b", labels=("gpu",), models=("opus",), used=1)], [P("main")], R(),
     ("gpu",), "opus", ("main", "b", "preferred")),
]


@pytest.mark.parametrize(("name", "hosts", "pools", "route", "labels", "model", "expected"), PLACE,
                         ids=[p[0] for p in PLACE])
def test_placement(name, hosts, pools, route, labels, model, expected):
    _, plan = one(hosts, pools, route, labels, model)
    got = [(a.pool, a.host, a.role) for a in plan.assignments]
    assert got == ([expected] if expected else [])
    assert len(plan.unplaced) == (0 if expected else 1)


def test_a_pass_spreads_by_load_and_stops_a_group_at_its_first_unplaced_session():
    hosts = [H("a", slots=2), H("b", slots=2, used=1), H("c", slots=3)]
    snap = Snapshot.build(hosts, {"main": P("main")}, {"app": R()})
    ids = [f"s{i}" for i in range(9)]
    plan = schedule(snap, [PendingGroup("app", frozenset(), None, iter(ids), len(ids))])
    per_host = {h: sum(a.host == h for a in plan.assignments) for h in "abc"}
    assert per_host == {"a": 2, "b": 1, "c": 3}  # every free slot, none more
    assert [a.session for a in plan.assignments] == ids[:6]  # in order
    [u] = plan.unplaced
    assert (u.head, u.count, u.reason.kind) == ("s6", 3, sched.POOL_FULL)
    # after the first two placements (one each on a and c, the least loaded), b (1/2) is as loaded as them
    first_two = {a.host for a in plan.assignments[:2]}
    assert first_two == {"a", "c"}
    assert all(h.used == u for h, u in zip(hosts, (0, 1, 0), strict=True))  # the snapshot is unchanged


def test_demand_per_pool_counts_sessions_by_reason():
    pools = {"main": P("main"), "od": P("od", "on_demand", hosts_max=4)}
    routes = {"app": R("main"), "burst": Route("burst", T, "preferred-only", "od")}
    snap = Snapshot.build([H("a", used=2)], pools, routes)
    plan = schedule(snap, group([("s1", "app", (), None), ("s2", "burst", (), None), ("s3", "burst", (), None),
                                 ("s4", "app", ("gpu",), None)]))
    demand = plan.demand()
    assert {p: (d.sessions, d.by_reason) for p, d in demand.items()} == {
        "main": (2, {sched.POOL_FULL: 1, sched.MISSING_LABEL: 1}), "od": (2, {sched.WAITS_FOR_BACKEND: 2})}
    assert plan.reason_of("s4").kind == sched.MISSING_LABEL  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------- phases

def test_every_transition_in_the_table_is_allowed_and_nothing_else():
    for before, after in itertools.product(PHASES, PHASES):
        assert allowed(before, after) == ((before, after) in TRANSITIONS)


# (from, to, allowed) cases a dispatcher takes, and some it must never take
PHASE_CASES = [
    ("queued", "assigned", True), ("assigned", "running", True), ("running", "succeeded", True),
    ("running", "failed", True), ("running", "cancelled", True), ("running", "timed_out", True),
    ("assigned", "cancelled", True), ("assigned", "timed_out", True), ("queued", "cancelled", True),
    ("assigned", "lost", True), ("running", "lost", True), ("lost", "queued", True), ("lost", "failed", True),
    ("lost", "cancelled", True),
    ("queued", "running", False), ("queued", "succeeded", False), ("assigned", "assigned", False),
    ("running", "assigned", False), ("running", "queued", False), ("succeeded", "running", False),
    ("cancelled", "queued", False), ("failed", "lost", False), ("lost", "running", False),
    ("timed_out", "succeeded", False),
]


@pytest.mark.parametrize(("before", "after", "ok"), PHASE_CASES, ids=[f"{a}->{b}" for a, b, _ in PHASE_CASES])
def test_phase_transition(before, after, ok):
    assert allowed(before, after) is ok


def test_final_phases_have_no_way_out_and_every_other_phase_has_one():
    for phase in PHASES:
        assert (successors(phase) == ()) == (phase in FINAL)


def test_phase_table_matches_the_wire():
    assert set(get_args(SessionPhase)) == set(PHASES)
    assert FINAL_PHASES == FINAL and LIVE_PHASES == LIVE
    assert LIVE_STATUSES is sched_core.LIVE_STATUSES  # one definition (fleet.schema.vocabulary)


# ------------------------------------------------------------------------------------------- properties

POOL_IDS = ("main", "cloud", "od", "gpu")
LABELS = ("gpu", "ssd")
MODELS = ("sonnet", "opus")


@st.composite
def fleets(draw):
    pools = {}
    for pid in POOL_IDS:
        pools[pid] = P(pid, draw(st.sampled_from(["persistent", "on_demand", "hybrid"])),
                       tenant=draw(st.sampled_from([T, T, T, "health"])), slots=draw(st.integers(1, 3)),
                       hosts_max=draw(st.sampled_from([None, 0, 1, 2, 3])),
                       labels=tuple(draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=2))),
                       models=tuple(draw(st.lists(st.sampled_from(MODELS), unique=True, max_size=1))))
    hosts = []
    for i in range(draw(st.integers(0, 10))):
        slots = draw(st.integers(0, 3))
        hosts.append(Host(machine_id=f"{i:08x}-0000-4000-8000-000000000000", tenant=draw(st.sampled_from([T, "health"])),
                          hostname=f"h{i}", pools=tuple(draw(st.lists(st.sampled_from(POOL_IDS), min_size=1,
                                                                      max_size=2, unique=True))),
                          labels=tuple(draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=2))),
                          models=tuple(draw(st.lists(st.sampled_from(MODELS), unique=True, max_size=2))),
                          status=draw(st.sampled_from(STATUSES)), max_sessions=slots,
                          running=draw(st.integers(0, slots + 1))))
    mode = draw(st.sampled_from(["preferred-only", "preferred-with-fallback", "adaptive"]))
    preferred = draw(st.sampled_from(POOL_IDS))
    others = [p for p in POOL_IDS if p != preferred]
    spec = {"tenant": T, "mode": mode, "preferred_pool": preferred,
            "fallback_pool": draw(st.sampled_from([None, *others])) if mode != "adaptive" else None,
            "candidates": draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if mode == "adaptive" else [],
            "required_labels": draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=1)),
            "model": draw(st.sampled_from([None, *MODELS]))}
    pending = [(f"s{i}", "app", tuple(draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=1))),
                draw(st.sampled_from([None, *MODELS]))) for i in range(draw(st.integers(0, 12)))]
    return hosts, pools, spec, pending


def dispatcher_snapshot(hosts, pools, spec) -> Snapshot:
    """The snapshot as the dispatcher keeps it: its own HostStates (HostState.tracked), put in one by one, then re-ranked."""
    snap = Snapshot()
    snap.set_config(pools, {"app": Route.of("app", spec)})
    for h in hosts:
        view = HostState.tracked(h)
        view.sessions = {f"{h.machine_id}-{i}" for i in range(h.running)}
        snap.put_host(view)
        again = HostState.tracked(h, view)  # a heartbeat later: same host, new version
        snap.put_host(again)
    return snap


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_scheduler_properties(fleet):
    hosts, pools, spec, pending = fleet
    snap = Snapshot.build([HostState.of(h) for h in hosts], pools, {"app": Route.of("app", spec)})
    base = snap.routes["app"]
    plan = schedule(snap, group(pending))
    by_id = {h.machine_id: h for h in hosts}
    given_to: dict[str, int] = {}
    request = {sid: (frozenset(labels), model) for sid, _, labels, model in pending}
    for a in plan.assignments:
        h = by_id[a.host]
        route = base.for_session(*request[a.session])
        assert h.status == "active" and h.tenant == T and a.pool in h.pools and a.pool in route.pools
        assert route.labels <= set(h.labels)
        served = set(h.models) or set(pools[a.pool].models)
        assert route.model is None or not served or route.model in served
        given_to[a.host] = given_to.get(a.host, 0) + 1
    for mid, n in given_to.items():
        assert by_id[mid].running + n <= by_id[mid].max_sessions  # never over a host's slots
    for pid in POOL_IDS:  # never more than the live hosts of a pool have: capacity a backend might create is none
        free = sum(max(0, h.max_sessions - h.running) for h in hosts if pid in h.pools and h.status == "active")
        assert sum(a.pool == pid for a in plan.assignments) <= free
    # every pending session is placed, or waits (with its group) for exactly one reason
    placed = [a.session for a in plan.assignments]
    assert len(placed) == len(set(placed))
    for g in group(pending):
        waiting = [u for u in plan.unplaced if (u.project, u.labels, u.model) == (g.project, g.labels, g.model)]
        assert len(waiting) <= 1
        n_placed = sum(s in placed for s in g.sessions)
        assert n_placed + (waiting[0].count if waiting else 0) == g.size
        if waiting:
            u = waiting[0]
            assert u.head not in placed and u.reason.kind in REASON_KINDS and u.reason.message
            assert u.reason.pool in base.for_session(g.labels, g.model).pools
            assert list(g.sessions).index(u.head) == n_placed  # FIFO: everything before the head was placed
    assert sum(d.sessions for d in plan.demand().values()) == sum(u.count for u in plan.unplaced)


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_route_test_decides_what_the_dispatcher_does(fleet):
    """`fleet route test`'s decision (its own snapshot of the observed hosts and fleet.yaml's pools and route)
    equals the dispatcher's (its snapshot of its HostStates, kept up to date host by host) on a session."""
    hosts, pools, spec, _ = fleet
    specs = {pid: {"tenant": p.tenant, "backend": "local", "mode": p.mode,
                   "capacity": {"max_concurrent_sessions": p.max_concurrent_sessions},
                   "hosts": {"max": p.hosts_max} if p.hosts_max is not None else {}, "labels": list(p.labels),
                   "models": list(p.models)} for pid, p in pools.items()}
    tested = probe(snapshot_of(hosts, specs, {"app": spec}), "app")
    plan = schedule(dispatcher_snapshot(hosts, pools, spec), [PendingGroup("app", frozenset(), None, ["s"], 1)])
    if plan.assignments:
        [a] = plan.assignments
        assert (tested.pool, tested.role) == (a.pool, a.role)
        load = {h.machine_id: h.running / h.max_sessions for h in hosts if h.max_sessions}
        assert load[tested.host] == load[a.host]  # the same host, or one as loaded (ties are broken at random)
    else:
        [u] = plan.unplaced
        assert tested.pool is None and tested.reason == u.reason


def test_a_config_change_updates_one_pool_or_route_of_a_kept_snapshot():
    snap = Snapshot.build([H("a"), H("c", "cloud")], {"main": P("main"), "cloud": P("cloud")}, {"app": R()})
    assert [a.pool for a in schedule(snap, group([("s1", "app", (), None)])).assignments] == ["main"]
    snap.set_pool("main", None)  # deleted from the applied config
    [u] = schedule(snap, group([("s1", "app", (), None)])).unplaced
    assert (u.reason.kind, u.reason.pool) == (sched.UNKNOWN_POOL, "main")
    snap.set_route("app", R("cloud"))
    assert [a.pool for a in schedule(snap, group([("s1", "app", (), None)])).assignments] == ["cloud"]
    snap.set_pool("main", P("main", models=("opus",)))
    snap.set_route("app", None)
    [u] = schedule(snap, group([("s1", "app", (), None)])).unplaced
    assert u.reason.kind == sched.UNKNOWN_PROJECT
    assert snap.pool_models["main"] == frozenset({"opus"})
