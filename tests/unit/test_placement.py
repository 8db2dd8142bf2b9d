"""The dispatcher's routing decision (fleet.dispatch.placement) and pending queue (fleet.dispatch.queue), table-driven,
plus a property: on any fleet of persistent pools, `place()` chooses the pool that fleet.routing.decide (what `fleet
route test` and the plan's consequences use) chooses, and never a host the hard filters exclude."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.dispatch.placement import DispatchHost, PoolIndex, Route, place, why_waiting
from fleet.dispatch.queue import PendingQueue
from fleet.routing import PoolView, RouteView, decide, ineligibility, pool_capacity


def host(mid: str, *, tenant: str = "fin", pools: tuple[str, ...] = ("main",), labels: tuple[str, ...] = (),
         models: tuple[str, ...] = (), status: str = "active", slots: int = 2, running: int = 0) -> DispatchHost:
    h = DispatchHost(mid, tenant, pools, frozenset(labels), frozenset(models), status, slots, hostname=mid)
    h.sessions = {f"{mid}-s{i}" for i in range(running)}
    return h


def index(hosts: list[DispatchHost], models: dict[str, tuple[str, ...]] | None = None) -> dict[str, PoolIndex]:
    out: dict[str, PoolIndex] = {}
    for h in hosts:
        for p in h.pools:
            out.setdefault(p, PoolIndex(frozenset((models or {}).get(p, ())))).put(h)
    return out


ROUTE = {"tenant": "fin", "mode": "preferred-with-fallback", "preferred_pool": "main", "fallback_pool": "cloud"}
ONLY = {"tenant": "fin", "mode": "preferred-only", "preferred_pool": "main"}

# (name, route spec, session labels, model, hosts, expected (pool, host) or None)
CASES = [
    ("preferred has room", ROUTE, (), None, [host("a", running=1), host("c", pools=("cloud",))], ("main", "a")),
    ("least loaded in the pool", ROUTE, (), None, [host("a", running=1), host("b")], ("main", "b")),
    ("preferred full -> fallback", ROUTE, (), None, [host("a", running=2), host("c", pools=("cloud",))], ("cloud", "c")),
    ("both full -> pending", ROUTE, (), None,
     [host("a", running=2), host("c", pools=("cloud",), running=2)], None),
    ("preferred-only full -> pending, fallback ignored", {**ONLY, "fallback_pool": "cloud"}, (), None,
     [host("a", running=2), host("c", pools=("cloud",))], None),
    ("other tenant's free host never", ONLY, (), None, [host("a", running=2), host("x", tenant="health")], None),
    ("paused host skipped", ONLY, (), None, [host("a", status="paused"), host("b", running=1)], ("main", "b")),
    ("draining host skipped", ONLY, (), None, [host("a", status="draining")], None),
    ("offline host skipped", ONLY, (), None, [host("a", status="offline")], None),
    ("revoked host skipped", ONLY, (), None, [host("a", status="revoked")], None),
    ("zero slots never", ONLY, (), None, [host("a", slots=0)], None),
    ("labels must be a subset", ONLY, ("gpu",), None, [host("a"), host("b", labels=("gpu", "x"), running=1)],
     ("main", "b")),
    ("label missing everywhere", ONLY, ("gpu",), None, [host("a")], None),
    ("route's required labels count", {**ONLY, "required_labels": ["tier=prod"]}, (), None,
     [host("a"), host("b", labels=("tier=prod",), running=1)], ("main", "b")),
    ("model served by the host", ONLY, (), "sonnet", [host("a", models=("opus",)), host("b", models=("sonnet",))],
     ("main", "b")),
    ("host without models serves any", ONLY, (), "sonnet", [host("a")], ("main", "a")),
    ("adaptive: least loaded among candidates",
     {"tenant": "fin", "mode": "adaptive", "preferred_pool": "main", "candidates": ["cloud"]}, (), None,
     [host("a", running=1), host("c", pools=("cloud",))], ("cloud", "c")),
]


@pytest.mark.parametrize(("name", "spec", "labels", "model", "hosts", "expected"), CASES, ids=[c[0] for c in CASES])
def test_place(name, spec, labels, model, hosts, expected):
    placement = place(Route.of("app", spec, labels, model), index(hosts))
    got = None if placement is None else (placement.pool, placement.host.machine_id)
    assert got == expected


def test_pool_models_apply_to_hosts_that_list_none():
    hosts = [host("a")]
    route = Route.of("app", ONLY, (), "sonnet")
    assert place(route, index(hosts, {"main": ("opus",)})) is None
    assert place(route, index(hosts, {"main": ("sonnet",)})) is not None


def test_ties_are_broken_at_random():
    hosts = [host(f"h{i}") for i in range(4)]
    chosen = {place(Route.of("app", ONLY), index(hosts)).host.machine_id for _ in range(200)}  # type: ignore[union-attr]
    assert len(chosen) == 4


def test_index_follows_load_changes():
    a, b = host("a"), host("b")
    pools = index([a, b])
    for _ in range(4):  # 2 hosts x 2 slots, always to the least loaded
        p = place(Route.of("app", ONLY), pools)
        assert p is not None
        p.host.sessions.add(f"s{random.random()}")
        p.host.version += 1
        pools["main"].put(p.host)
    assert len(a.sessions) == len(b.sessions) == 2
    assert place(Route.of("app", ONLY), pools) is None


WHY = [
    ("full, no fallback", ONLY, (), [host("a", running=2), host("b", running=2)],
     "preferred main FULL [4/4], no fallback"),
    ("fallback full too", ROUTE, (), [host("a", running=2), host("c", pools=("cloud",), running=3, slots=3)],
     "preferred main FULL [2/2], fallback cloud FULL [3/3]"),
    ("label", ONLY, ("gpu",), [host("a")], "preferred pool main: no host has label gpu, no fallback"),
    ("tenant", ONLY, (), [host("x", tenant="health")], "preferred pool main: tenant fin has no host there, no fallback"),
    ("no host", ONLY, (), [], "preferred pool main has no host, no fallback"),
    ("none active", ONLY, (), [host("a", status="paused"), host("b", status="offline")],
     "preferred pool main: no active host (1 offline, 1 paused), no fallback"),
]


@pytest.mark.parametrize(("name", "spec", "labels", "hosts", "expected"), WHY, ids=[w[0] for w in WHY])
def test_why_waiting(name, spec, labels, hosts, expected):
    route = Route.of("app", spec, labels)
    assert place(route, index(hosts)) is None
    assert why_waiting(route, hosts, {"main": "persistent", "cloud": "persistent"}) == expected


# ------------------------------------------------------------------------------------------- the pending queue

def test_queue_fifo_within_priority_and_groups_do_not_block_each_other():
    q = PendingQueue()
    gpu = ("app", frozenset({"gpu"}), None)
    plain = ("app", frozenset(), None)
    q.add("s1", gpu, 0)
    q.add("s2", plain, 0)
    q.add("s3", plain, 5)
    q.add("s4", plain, 0)
    groups = q.ordered_groups()
    assert [g.key for g in groups] == [plain, gpu]  # the priority-5 head first
    order = []
    while groups[0].heap:
        order.append(q.pop_head(groups[0]))
    assert order == ["s3", "s2", "s4"]
    assert len(q) == 1 and "s1" in q


def test_queue_remove_is_lazy_but_exact():
    q = PendingQueue()
    key = ("app", frozenset(), None)
    for i in range(5):
        q.add(f"s{i}", key, 0)
    assert q.remove("s0") and q.remove("s3") and not q.remove("s3")
    assert q.position("s4") == 2
    group = q.ordered_groups()[0]
    assert [q.pop_head(group) for _ in range(3)] == ["s1", "s2", "s4"]
    assert len(q) == 0 and not q.groups


# ------------------------------------------------------------------------------------------- place() == decide()

@dataclass
class HostRow:
    """fleet.routing's HostView of a DispatchHost."""

    machine_id: str
    tenant: str
    pools: tuple[str, ...]
    labels: tuple[str, ...]
    models: tuple[str, ...]
    status: str
    running: int
    max_sessions: int


hosts_strategy = st.lists(st.builds(
    lambda i, tenant, pools, labels, models, status, slots, used: host(
        f"h{i}", tenant=tenant, pools=pools, labels=labels, models=models, status=status, slots=slots,
        running=min(used, slots)),
    st.integers(0, 10_000), st.sampled_from(["fin", "health"]),
    st.sampled_from([("main",), ("cloud",), ("main", "cloud"), ("gpu",)]),
    st.lists(st.sampled_from(["gpu", "tier=prod"]), max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from(["sonnet", "opus"]), max_size=2, unique=True).map(tuple),
    st.sampled_from(["active", "active", "active", "paused", "draining", "offline", "revoked"]),
    st.integers(0, 3), st.integers(0, 3)), max_size=12, unique_by=lambda h: h.machine_id)


@settings(max_examples=400, deadline=None)
@given(hosts=hosts_strategy,
       mode=st.sampled_from(["preferred-only", "preferred-with-fallback"]),
       fallback=st.sampled_from([None, "cloud", "gpu"]),
       labels=st.lists(st.sampled_from(["gpu", "tier=prod"]), max_size=2, unique=True),
       model=st.sampled_from([None, "sonnet"]),
       pool_models=st.sampled_from([(), ("sonnet",), ("opus",)]))
def test_place_agrees_with_route_test(hosts, mode, fallback, labels, model, pool_models):
    spec = {"tenant": "fin", "mode": mode, "preferred_pool": "main", "fallback_pool": fallback}
    route = Route.of("app", spec, labels, model)
    placement = place(route, index(hosts, {"main": pool_models, "cloud": pool_models, "gpu": pool_models}))

    rv = RouteView.from_spec("app", spec)
    rv = RouteView(**{**rv.__dict__, "required_labels": tuple(labels), "model": model})
    rows = [HostRow(h.machine_id, h.tenant, h.pools, tuple(h.labels), tuple(h.models), h.status, len(h.sessions),
                    h.slots) for h in hosts]
    caps = {}
    for pool_id in rv.pools:
        pv = PoolView(pool_id, "fin", "local", "persistent", 2, models=pool_models)
        # only hosts that can take a session count (a 0-slot host has no slot to offer)
        caps[pool_id] = pool_capacity(pv, [r for r in rows if r.max_sessions > 0], rv)
    decision = decide(rv, caps)
    assert (placement.pool if placement else None) == decision.pool
    if placement is not None:
        row = next(r for r in rows if r.machine_id == placement.host.machine_id)
        pv = PoolView(placement.pool, "fin", "local", "persistent", 2, models=pool_models)
        assert ineligibility(row, pv, rv) == []
