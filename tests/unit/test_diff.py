"""Table-driven tests of the pure diff and its ordering (fleet.reconciler.diff / .ordering)."""

from __future__ import annotations

import pytest

from fleet.reconciler.desired import SENSITIVE, UNKNOWN, desired_resources
from fleet.reconciler.diff import diff, make_plan
from fleet.reconciler.live import AppliedResource, LiveState
from fleet.reconciler.ordering import batches, order_changes

from .reconciler_fixtures import BASIS, applied_from_example, edited_config, example_config, hashes, live


def changes_for(*edits, applied=None):
    cfg = edited_config(*edits) if edits else example_config()
    state = LiveState(applied=applied if applied is not None else applied_from_example(), revision=100)
    return {c.address: c for c in diff(desired_resources(cfg, hashes(cfg)), state)}


def test_empty_store_creates_everything_parents_first():
    cfg = example_config()
    changes = order_changes(diff(desired_resources(cfg, hashes(cfg)), LiveState()))
    assert {c.action for c in changes} == {"create"}
    order = [c.address for c in changes]
    assert order.index("tenant.fin-prod") < order.index("project.my-fintech-app") < order.index("route.my-fintech-app")
    assert order.index("pool.pool-local-main") < order.index("route.my-fintech-app")
    assert order.index("pool.pool-k8s-batch") < order.index("key.ci-runners")
    assert "pool.k8s-defaults" not in order  # abstract pools are templates, not resources


def test_no_changes_when_applied_matches():
    assert changes_for() == {}


CASES = [
    # (edits as (old, new) pairs, address, action, changed attribute paths); every row is asserted as written
    ([("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6")], "pool.pool-local-main",
     "update", ["capacity.max_concurrent_sessions"]),
    ([("      fallback_pool: pool-cloud-e2b\n", "")], "route.my-fintech-app", "update", ["fallback_pool"]),
    ([("hosts: {min: 2, max: 4}", "hosts: {min: 1, max: 8}")], "pool.pool-local-main", "update",
     ["hosts.max", "hosts.min"]),
    ([("labels: [region=eu-west, tier=dev]\n    models", "labels: [tier=dev, region=eu-west]\n    models")],
     None, None, []),
    # a local pool takes local settings, so the backend change comes with the settings change
    ([("backend: docker\n", "backend: local\n"),
      ("      image: fleet-agent:local\n      network_mode: host\n", "      workdir: .fleet/gpu\n")],
     "pool.pool-docker-gpu", "replace", ["backend", "settings.image", "settings.network_mode", "settings.workdir"]),
    ([("max_uses: 50", "max_uses: 60")], "key.ci-runners", "update", ["max_uses"]),
]


@pytest.mark.parametrize("edits,address,action,paths", CASES)
def test_single_edit(edits, address, action, paths):
    changes = changes_for(*edits)
    if address is None:
        assert changes == {}, "reordering a label set is not a change"
        return
    assert list(changes) == [address]
    change = changes[address]
    assert change.action == action
    assert [a.path for a in change.attributes] == paths
    if action == "replace":
        assert any(a.forces_replacement for a in change.attributes)
        assert "cannot change backend in place" in change.reason


def test_delete_of_pool_waits_for_route_that_stops_using_it():
    changes = changes_for(
        ("      preferred_pool: pool-k8s-batch\n", "      preferred_pool: pool-local-main\n"),
        ("  - id: pool-k8s-batch\n    extends: k8s-defaults\n    hosts: {min: 1, max: 20}\n"
         "    labels: [region=eu-west, batch]\n    models: [claude-3-5-haiku]\n    cost: {currency: USD, per_host_hour: 0.12}\n", ""),
        ("    pools: [pool-k8s-batch, pool-cloud-e2b]", "    pools: [pool-cloud-e2b]"),
    )
    assert changes["pool.pool-k8s-batch"].action == "delete"
    order = [c.address for c in order_changes(list(changes.values()))]
    assert order.index("route.ledger-batch") < order.index("pool.pool-k8s-batch")
    assert order.index("key.ci-runners") < order.index("pool.pool-k8s-batch")
    assert order[-1] == "pool.pool-k8s-batch"


def test_deletes_are_children_first_and_last():
    applied = applied_from_example()
    cfg = example_config()
    changes = order_changes(diff({}, LiveState(applied=applied)))
    order = [c.address for c in changes]
    assert {c.action for c in changes} == {"delete"}
    assert order.index("route.my-fintech-app") < order.index("pool.pool-local-main") < order.index("tenant.fin-prod")
    assert order.index("key.local-dev") < order.index("pool.pool-local-main")
    assert order.index("project.my-fintech-app") < order.index("tenant.fin-prod")
    assert len(order) == len(desired_resources(cfg))


def test_batches_respect_dependencies():
    cfg = example_config()
    changes = diff(desired_resources(cfg, hashes(cfg)), LiveState())
    seen: set[str] = set()
    for batch in batches(changes):
        for c in batch:
            if c.kind == "route":
                assert f"pool.{c.after['preferred_pool']}" in seen
                assert f"project.{c.id}" in seen
            if c.kind in ("project", "pool", "key"):
                assert f"tenant.{c.after['tenant']}" in seen
        seen.update(c.address for c in batch)
    assert len(seen) == len(changes)


def test_secrets_are_masked_and_rotation_is_detected():
    cfg = example_config()
    fresh = diff(desired_resources(cfg, {}), LiveState())
    key = next(c for c in fresh if c.address == "key.local-dev")
    assert key.after["secret_digest"] == UNKNOWN
    applied = applied_from_example()
    rotated = {k.id: ("f" * 64 if k.id == "local-dev" else "0" * 64) for k in cfg.keys}
    changes = diff(desired_resources(cfg, rotated), LiveState(applied=applied))
    assert [c.address for c in changes] == ["key.local-dev"]
    attr = changes[0].attributes[0]
    assert (attr.path, attr.before, attr.after, attr.sensitive) == ("secret_digest", SENSITIVE, SENSITIVE, True)
    assert "f" * 64 not in changes[0].model_dump_json() and "0" * 64 not in changes[0].model_dump_json()


def test_generated_key_keeps_applied_secret():
    cfg = example_config()
    desired = desired_resources(cfg, {k.id: ("0" * 64 if k.secret.from_env else None) for k in cfg.keys})
    assert diff(desired, LiveState(applied=applied_from_example())) == []


def test_plan_no_op_and_summary():
    cfg = example_config()
    plan = make_plan(desired_resources(cfg, hashes(cfg)), live(), BASIS)
    assert plan.no_op and plan.summary.line == "Plan: 0 to add, 0 to change, 0 to destroy."
    assert plan.drift, "the stray host serving an unknown pool is drift"
    refresh = make_plan(desired_resources(cfg, hashes(cfg)), live(), BASIS, refresh_only=True)
    assert not refresh.changes and not refresh.no_op


def test_replace_counts_as_add_and_destroy():
    cfg = edited_config(("  - id: fin-prod\n", "  - id: fin-prod\n"), )
    applied = applied_from_example()
    spec = dict(applied["project.ledger-batch"].spec, tenant="health-prod")
    applied["project.ledger-batch"] = AppliedResource(kind="project", id="ledger-batch", spec=spec, revision=7)
    plan = make_plan(desired_resources(cfg, hashes(cfg)), LiveState(applied=applied), BASIS)
    assert [c.action for c in plan.changes] == ["replace"]
    assert plan.summary.line == "Plan: 1 to add, 0 to change, 1 to destroy."
    assert plan.changes[0].base_revision == 7
