"""The one pool model (fleet.schema.models.Pool) from fleet.yaml through the store to the scheduler and the views.

Which bug each test catches: the applied record loses a field on its way back (a host's slots, labels, models, disk
or grace period silently fall back to a default); a newer writer's extra field, or a record without a tenant, is
read differently by one reader than by another (it once was: the registry read raw dicts, enrollment a second
pydantic model, the scheduler a third dataclass).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import fleet
from fleet.bus.kv import Entry
from fleet.bus.records import encode_record
from fleet.hosts.config import AppliedConfig
from fleet.reconciler.converge import pending, targets
from fleet.reconciler.desired import pool_spec
from fleet.reconciler.live import ObservedHost
from fleet.reconciler.plan import Change, Plan
from fleet.scheduler import probe, snapshot_of
from fleet.schema.api import load_fleet
from fleet.schema.models import Pool

EXAMPLE = Path(fleet.__file__).parent.parent / "fleet.yaml.example"


def example_pools() -> list[Pool]:
    result = load_fleet(EXAMPLE)
    assert result.config is not None, result.diagnostics
    return [p for p in result.config.pools if not p.abstract]


def applied(pool: Pool) -> Pool:
    """`pool` as the store holds it: `extends` resolved away, label and model sets sorted (canonical specs)."""
    return pool.model_copy(update={"extends": None, "labels": tuple(sorted(pool.labels)),
                                   "models": tuple(sorted(pool.models))})


def test_every_example_pool_comes_back_from_its_record_as_itself() -> None:
    pools = example_pools()
    assert len(pools) >= 3 and any(p.extends for p in pools)
    for pool in pools:
        back = Pool.from_spec(pool.id, pool_spec(pool))
        assert back == applied(pool)
        assert pool_spec(back) == pool_spec(pool)


def test_a_newer_writers_fields_are_dropped_and_missing_ones_default() -> None:
    pool = Pool.from_spec("p", {"tenant": "t", "zone": "new", "capacity": {"max_concurrent_sessions": 3, "burst": 9},
                                "hosts": {"max": 2, "spare": 1}, "labels": ["gpu"], "description": None})
    assert (pool.tenant, pool.backend, pool.mode, pool.max_concurrent_sessions, pool.hosts_max, pool.labels) == (
        "t", "local", "persistent", 3, 2, ("gpu",))
    bare = Pool.from_spec("q", {"tenant": "t"})
    assert (bare.max_concurrent_sessions, bare.hosts_max, bare.hosts_min, bare.elastic) == (0, None, 0, False)


@pytest.mark.parametrize("spec", [{}, {"tenant": 3}, {"tenant": "t", "capacity": []}, {"tenant": "t", "mode": "x"},
                                  {"tenant": "t", "labels": "gpu"}])
def test_a_malformed_spec_is_a_value_error(spec) -> None:
    with pytest.raises(ValueError):
        Pool.from_spec("p", spec)


def test_a_pool_passes_through() -> None:
    pool = Pool.from_spec("p", {"tenant": "t"})
    assert Pool.from_spec("p", pool) is pool and Pool.from_spec("q", pool).id == "q"


def _entry(kind: str, ident: str, spec: dict) -> Entry:
    return Entry(key=f"{kind}.{ident}", value=encode_record(kind, ident, spec), revision=1)


def test_the_applied_config_holds_pools_and_skips_a_record_without_a_tenant() -> None:
    config = AppliedConfig()
    pool = example_pools()[0]
    config.apply(f"pool.{pool.id}", _entry("pool", pool.id, pool_spec(pool)))
    config.apply("pool.broken", _entry("pool", "broken", {"mode": "persistent"}))
    assert config.pools == {pool.id: applied(pool)}
    assert config.metrics["config_record_skipped"] == 1
    config.apply(f"pool.{pool.id}", None)
    assert config.pools == {}


def test_route_test_and_convergence_read_the_same_pool() -> None:
    """The scheduler's snapshot and convergence take the pool as applied: slots and labels from the one model."""
    pool = Pool.from_spec("main", {"tenant": "t", "capacity": {"max_concurrent_sessions": 3}, "labels": ["gpu"]})
    host = ObservedHost(machine_id="m1", tenant="t", hostname="h1", pools=("main",), labels=(), status="active",
                        max_sessions=2)
    snap = snapshot_of([host], {"main": pool}, {"app": {"tenant": "t", "mode": "preferred-only",
                                                        "preferred_pool": "main"}})
    assert snap.pools["main"] is pool
    assert probe(snap, "app").host == "m1"
    plan = Plan(changes=(Change(address="pool.main", kind="pool", id="main", action="update", before={},
                                after=pool_spec(pool)),))
    assert pending(targets(plan), [host]) == ["h1: 2 slots, main wants 3", "h1: lacks main labels gpu"]


def test_a_record_that_is_no_pool_is_left_out_of_route_test_as_out_of_the_dispatcher() -> None:
    """The dispatcher's applied config skips a pool record without a tenant; route test and the plan's snapshot must
    not count it either (nor fail on it)."""
    snap = snapshot_of([], {"good": {"tenant": "t"}, "bad": {"mode": "persistent"}, "worse": {"tenant": "t",
                                                                                            "hosts": 3}}, {})
    assert set(snap.pools) == {"good"}
    plan = Plan(changes=(Change(address="pool.bad", kind="pool", id="bad", action="create", after={"labels": 1}),))
    assert not targets(plan)
