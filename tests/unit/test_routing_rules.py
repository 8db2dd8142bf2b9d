"""Table-driven tests of the pure routing rules (fleet.routing): hard filters, pool capacity, decisions."""

from __future__ import annotations

import pytest

from fleet.hosts.model import Host, host_slots
from fleet.routing import (
    Capacity,
    PoolView,
    RouteView,
    decide,
    ineligibility,
    pool_capacity,
)

LOCAL = PoolView(id="pool-local-main", tenant="fin-prod", backend="local", mode="persistent", max_concurrent_sessions=4,
                 hosts_max=4, labels=("region=eu-west",), models=("claude-3-5-sonnet",))
E2B = PoolView(id="pool-cloud-e2b", tenant="fin-prod", backend="e2b", mode="on_demand", max_concurrent_sessions=1,
               labels=("region=eu-west",), models=("claude-3-5-sonnet",))
K8S = PoolView(id="pool-k8s", tenant="fin-prod", backend="kubernetes", mode="hybrid", max_concurrent_sessions=8, hosts_max=3)
ROUTE = RouteView(project="my-fintech-app", tenant="fin-prod", mode="preferred-with-fallback",
                  preferred_pool="pool-local-main", fallback_pool="pool-cloud-e2b", required_labels=("region=eu-west",),
                  model="claude-3-5-sonnet")


def host(**kw) -> Host:
    base = dict(machine_id="m-1", tenant="fin-prod", pools=("pool-local-main",), labels=("region=eu-west",),
                models=("claude-3-5-sonnet",), status="active", running=0, max_sessions=4)
    return Host(**{**base, **kw})


@pytest.mark.parametrize("h,reasons", [
    (host(), []),
    (host(tenant="health-prod"), ["tenant health-prod (needs fin-prod)"]),
    (host(pools=("pool-other",)), ["not in pool pool-local-main"]),
    (host(status="paused"), ["status paused"]),
    (host(status="revoked"), ["revoked"]),
    (host(labels=()), ["missing labels region=eu-west"]),
    (host(models=("claude-3-5-haiku",)), ["does not serve model claude-3-5-sonnet"]),
    (host(running=4), ["full (4/4)"]),
    # every reason, not only the first
    (host(tenant="health-prod", status="revoked", labels=(), running=4),
     ["tenant health-prod (needs fin-prod)", "revoked", "missing labels region=eu-west", "full (4/4)"]),
])
def test_ineligibility_lists_every_reason(h, reasons):
    assert ineligibility(h, LOCAL, ROUTE) == reasons


@pytest.mark.parametrize("pool,hosts,used,total", [
    (LOCAL, [host(running=2), host(machine_id="m-2")], 2, 8),
    (LOCAL, [host(status="paused"), host(machine_id="m-2", tenant="health-prod")], 0, 0),
    (LOCAL, [], 0, 0),
    (E2B, [], 0, None),  # on_demand without hosts.max: ∞
    (K8S, [], 0, 24),  # hybrid with hosts.max 3 x 8 slots
])
def test_pool_capacity(pool, hosts, used, total):
    route = RouteView(project="p", tenant="fin-prod", mode="preferred-only", preferred_pool=pool.id)
    cap = pool_capacity(pool, hosts, route)
    assert (cap.used, cap.total) == (used, total)


def test_elastic_pool_cannot_grow_hosts_a_route_could_not_use():
    route = RouteView(project="p", tenant="fin-prod", mode="preferred-only", preferred_pool="pool-cloud-e2b",
                      required_labels=("gpu",))
    assert pool_capacity(E2B, [], route).total == 0


@pytest.mark.parametrize("caps,decision", [
    ({"pool-local-main": Capacity("pool-local-main", 2, 4), "pool-cloud-e2b": Capacity("pool-cloud-e2b", 0, None)},
     ("pool-local-main", "preferred")),
    ({"pool-local-main": Capacity("pool-local-main", 4, 4), "pool-cloud-e2b": Capacity("pool-cloud-e2b", 0, None)},
     ("pool-cloud-e2b", "fallback")),
    ({"pool-local-main": Capacity("pool-local-main", 4, 4), "pool-cloud-e2b": Capacity("pool-cloud-e2b", 3, 3)},
     (None, "pending")),
])
def test_decide_preferred_fallback_pending(caps, decision):
    d = decide(ROUTE, caps)
    assert (d.pool, d.role) == decision


def test_preferred_only_never_falls_back():
    route = RouteView(project="p", tenant="fin-prod", mode="preferred-only", preferred_pool="pool-local-main",
                      fallback_pool="pool-cloud-e2b")
    d = decide(route, {"pool-local-main": Capacity("pool-local-main", 4, 4), "pool-cloud-e2b": Capacity("pool-cloud-e2b", 0, None)})
    assert d.pending and [c.pool for c in d.considered] == ["pool-local-main"]


def test_adaptive_picks_the_least_loaded_candidate():
    route = RouteView(project="p", tenant="fin-prod", mode="adaptive", preferred_pool="a", candidates=("b", "c"))
    d = decide(route, {"a": Capacity("a", 3, 4), "b": Capacity("b", 1, 4), "c": Capacity("c", 4, 4)})
    assert (d.pool, d.role) == ("b", "candidate")


def test_capacity_label_in_seed_format():
    assert Capacity("x", 2, 4).label == "[2/4 slots used]"
    assert Capacity("x", 0, None).label == "[0/∞ slots used]"


@pytest.mark.parametrize("slots,expected", [([4, 1], 1), ([None, 6], 6), ([], None), ([None], None)])
def test_host_slots_is_the_smallest_envelope(slots, expected):
    assert host_slots(slots) == expected
