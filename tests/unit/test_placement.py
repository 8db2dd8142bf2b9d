"""Where one session goes (fleet.scheduler.place over the dispatcher's own hosts, fleet.scheduler.HostState, as the dispatcher keeps them),
why it waits (fleet.scheduler.why), and the pending queue (fleet.dispatch.queue), table-driven. The properties over
generated fleets are in test_scheduler.py."""

from __future__ import annotations

import random

import pytest

from fleet.dispatch.queue import PendingQueue
from fleet.scheduler import HostState, Route, Snapshot, place, why
from fleet.schema.models import Pool


def host(mid: str, *, tenant: str = "fin", pools: tuple[str, ...] = ("main",), labels: tuple[str, ...] = (),
         models: tuple[str, ...] = (), status: str = "active", slots: int = 2, running: int = 0) -> HostState:
    h = HostState(mid, tenant, pools, frozenset(labels), frozenset(models), status, slots, hostname=mid)
    h.sessions = {f"{mid}-s{i}" for i in range(running)}
    return h


def index(hosts: list[HostState], models: dict[str, tuple[str, ...]] | None = None) -> Snapshot:
    """A snapshot of `hosts` with persistent pools main, cloud and gpu of tenant fin."""
    pools = {p: Pool.from_spec(p, {"tenant": "fin", "capacity": {"max_concurrent_sessions": 2},
                                   "models": (models or {}).get(p, ())})
             for p in ("main", "cloud", "gpu")}
    return Snapshot.build(hosts, pools, {})


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
        chosen = a if p.host is a else b
        chosen.sessions.add(f"s{random.random()}")
        chosen.version += 1
        pools.rank(chosen)
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
     "preferred pool main: no active host (1 paused), no fallback"),
    ("none live", ONLY, (), [host("a", status="revoked"), host("b", status="offline")],
     "preferred pool main has no live host (1 offline, 1 revoked), no fallback"),
]


@pytest.mark.parametrize(("name", "spec", "labels", "hosts", "expected"), WHY, ids=[w[0] for w in WHY])
def test_why_waiting(name, spec, labels, hosts, expected):
    route = Route.of("app", spec, labels)
    assert place(route, index(hosts)) is None
    assert why(route, index(hosts)).message == expected


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


def test_queue_reads_a_group_in_order_without_changing_it():
    q = PendingQueue()
    key = ("app", frozenset(), None)
    order = [(f"s{i}", random.randrange(3)) for i in range(50)]
    for sid, prio in order:
        q.add(sid, key, prio)
    q.remove("s7")
    group = q.groups[key]
    heap = list(group.heap)
    expected = [sid for sid, _ in sorted(order, key=lambda x: (-x[1], int(x[0][1:]))) if sid != "s7"]
    assert list(q.in_order(group)) == expected and group.heap == heap and group.count == 49
    first = q.in_order(group)
    assert [next(first) for _ in range(3)] == expected[:3]  # lazily: only as far as it is read
