"""Table-driven tests of the pure convergence check, declared host states, queued-session consequences, drift."""

from __future__ import annotations

import pytest

from fleet.reconciler.converge import pending, targets
from fleet.reconciler.desired import desired_resources
from fleet.reconciler.diff import make_plan
from fleet.reconciler.live import AppliedResource, LiveState, ObservedHost
from fleet.schema.api import load_fleet_text

from .reconciler_fixtures import BASIS, EXAMPLE, HOSTS, applied_from_example, edited_config, hashes

A, B = HOSTS[0], HOSTS[1]


def plan_for(*edits, hosts=HOSTS):
    cfg = edited_config(*edits)
    return make_plan(desired_resources(cfg, hashes(cfg)), LiveState(applied=applied_from_example(), hosts=hosts), BASIS)


CAPACITY = ("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6")


@pytest.mark.parametrize("host,expected", [
    (A, ["build-01.corp: 4 slots, pool-local-main wants 6"]),
    (A.replace(**{"max_sessions": 6}), []),
    (A.replace(**{"status": "offline"}), []),  # offline hosts catch up when they return
    (A.replace(**{"status": "revoked"}), []),
    (HOSTS[2], []),  # another pool
])
def test_pool_capacity_convergence(host, expected):
    t = targets(plan_for(CAPACITY))
    assert pending(t, [host]) == expected


def test_labels_convergence():
    t = targets(plan_for(("labels: [region=eu-west, tier=dev]\n    models: [claude-3-5-sonnet, claude-3-5-haiku]\n    cost",
                          "labels: [region=eu-west, tier=dev, ssd]\n    models: [claude-3-5-sonnet, claude-3-5-haiku]\n    cost")))
    assert pending(t, [A]) == ["build-01.corp: lacks pool-local-main labels ssd"]
    assert pending(t, [A.replace(**{"labels": (*A.labels, "ssd")})]) == []


def test_declared_host_state_plan_and_convergence():
    cfg_text = f"\nhosts:\n  - id: {A.machine_id}\n    status: draining\n    note: disk swap\n"
    result = load_fleet_text(EXAMPLE.read_text() + cfg_text)
    assert result.ok, [d.format() for d in result.diagnostics]
    cfg = result.config
    plan = make_plan(desired_resources(cfg, hashes(cfg)), LiveState(applied=applied_from_example(), hosts=HOSTS), BASIS)
    assert [(c.address, c.action) for c in plan.changes] == [(f"host.{A.machine_id}", "create")]
    messages = [i.message for i in plan.consequences.items if i.kind == "host-status"]
    assert messages == ["host build-01.corp (b2c4a1e0) is draining: it takes no new sessions (disk swap)"]
    cap = {c.project: (c.before, c.after) for c in plan.consequences.capacity}
    assert cap["ledger-batch"] == (0, 0)  # its on_demand k8s pool has no host: slots a backend might add are none
    before, after = cap["my-fintech-app"]
    assert before is not None and after is not None and after < before  # build-01 drains: its slots go
    t = targets(plan)
    assert pending(t, [A]) == ["build-01.corp: active, fleet.yaml says draining"]
    assert pending(t, [A.replace(**{"status": "draining"})]) == []


def test_declared_unknown_host_is_called_out():
    ghost = "0b0e3c4d-1111-4222-8333-444455556666"
    cfg = load_fleet_text(EXAMPLE.read_text() + f"\nhosts:\n  - id: {ghost}\n    status: paused\n").config
    plan = make_plan(desired_resources(cfg, hashes(cfg)), LiveState(applied=applied_from_example(), hosts=HOSTS), BASIS)
    assert any(i.kind == "host-not-registered" and i.subject == ghost for i in plan.consequences.items)


def test_bad_host_declarations_are_diagnostics():
    r = load_fleet_text(EXAMPLE.read_text() + "\nhosts:\n  - id: not-a-uuid\n    status: sleeping\n", "fleet.yaml")
    messages = [d.format() for d in r.errors]
    assert any("'not-a-uuid' is not valid" in m and "$.hosts[0].id" in m for m in messages), messages
    assert any("'sleeping' is not one of 'active', 'paused', 'draining'" in m for m in messages), messages


def test_host_status_drift():
    applied = applied_from_example()
    applied[f"host.{B.machine_id}"] = AppliedResource(kind="host", id=B.machine_id, spec={"status": "paused", "note": None},
                                                      revision=300)
    cfg = edited_config()
    hosts: tuple[ObservedHost, ...] = (B,)
    plan = make_plan(desired_resources(cfg, hashes(cfg)), LiveState(applied=applied, hosts=hosts), BASIS)
    assert [c.action for c in plan.changes] == ["delete"]  # the file no longer declares it
    assert any(d.message == "host dev-mbp-mark is active; the applied state says paused" for d in plan.drift)


def test_queued_session_of_a_deleted_project_becomes_unroutable():
    from .reconciler_fixtures import QUEUED

    cfg = edited_config(("  - id: ledger-batch\n    tenant: fin-prod\n    routing:\n      mode: preferred-only\n"
                         "      preferred_pool: pool-k8s-batch\n      required_labels: [region=eu-west]\n", ""))
    plan = make_plan(desired_resources(cfg, hashes(cfg)),
                     LiveState(applied=applied_from_example(), hosts=HOSTS, queued=QUEUED), BASIS)
    assert {c.address for c in plan.changes} == {"project.ledger-batch", "route.ledger-batch"}
    items = [(i.kind, i.subject) for i in plan.consequences.items]
    assert ("session-unroutable", "s-1") in items


def test_queued_session_whose_labels_no_pool_offers_becomes_unroutable():
    from fleet.reconciler.live import QueuedSession

    queued = (QueuedSession(session_id="s-gpu", project="ledger-batch", tenant="fin-prod", required_labels=("gpu",)),)
    cfg = edited_config()
    plan = make_plan(desired_resources(cfg, hashes(cfg)),
                     LiveState(applied=applied_from_example(), hosts=HOSTS, queued=queued), BASIS)
    assert [(i.kind, i.subject) for i in plan.consequences.items] == [("session-unroutable", "s-gpu")]


def test_instance_drift():
    from fleet.reconciler.drift import drift
    from fleet.reconciler.live import ObservedInstance

    live = LiveState(applied=applied_from_example(), instances_observed=True, hosts_observed=False, instances=(
        ObservedInstance(backend="docker", pool="pool-docker-gpu", instance_id="c-1", state="missing"),
        ObservedInstance(backend="docker", pool="pool-gone", instance_id="c-2"),
        ObservedInstance(backend="docker", pool="pool-docker-gpu", instance_id="c-3"),
    ))
    messages = [d.message for d in drift(live)]
    assert messages == [
        "docker instance c-1 of pool pool-docker-gpu is gone (deleted outside fleet?)",
        "docker instance c-2 belongs to pool pool-gone, which is not in the applied config",
    ]


def test_host_of_several_pools_converges_on_the_smallest_envelope():
    # a host serving pool-local-main (changed to 6) and pool-cloud-e2b (1 slot): the agent runs min(6, 1) = 1
    host = A.replace(**{"pools": ("pool-local-main", "pool-cloud-e2b"), "max_sessions": 1})
    t = targets(plan_for(CAPACITY))
    assert pending(t, [host], {"pool-local-main": 6, "pool-cloud-e2b": 1}) == []
    assert pending(t, [host.replace(**{"max_sessions": 4})], {"pool-local-main": 6, "pool-cloud-e2b": 1}) == [
        "build-01.corp: 4 slots, pool-cloud-e2b wants 1"]


def test_host_no_longer_declared_stays_paused_and_the_plan_says_so():
    applied = applied_from_example()
    applied[f"host.{B.machine_id}"] = AppliedResource(kind="host", id=B.machine_id, spec={"status": "paused", "note": None},
                                                      revision=300)
    cfg = edited_config()
    plan = make_plan(desired_resources(cfg, hashes(cfg)),
                     LiveState(applied=applied, hosts=(B.replace(**{"status": "paused"}),)), BASIS)
    assert [i.message for i in plan.consequences.items if i.kind == "host-status"] == [
        "host dev-mbp-mark (7f3e9c12) stays paused: fleet.yaml no longer declares it "
        "(resume it with `fleet hosts resume 7f3e9c12`)"]


def test_without_observed_hosts_capacity_losses_are_not_claimed():
    # the e2b fallback is removed; with no hosts observed, the local pool's capacity is unknown, not zero
    edits = (("      fallback_pool: pool-cloud-e2b\n", ""),
             ("      mode: preferred-with-fallback\n      preferred_pool: pool-local-main\n",
              "      mode: preferred-only\n      preferred_pool: pool-local-main\n"))
    cfg = edited_config(*edits)
    blind = make_plan(desired_resources(cfg, hashes(cfg)),
                      LiveState(applied=applied_from_example(), hosts_observed=False), BASIS)
    assert not [i for i in blind.consequences.items if i.kind in ("project-unroutable", "route-without-capacity")]
    seeing = make_plan(desired_resources(cfg, hashes(cfg)),
                       LiveState(applied=applied_from_example(), hosts=(), hosts_observed=True), BASIS)
    assert [i.kind for i in seeing.consequences.items] == ["project-unroutable"]


@pytest.mark.parametrize("hosts_max, registered, revoked, expected", [
    (4, 4, 0, False),  # at the max: fine
    (2, 3, 0, True),  # the max was lowered below what is enrolled
    (2, 3, 1, False),  # a revoked host does not count
    (None, 9, 0, False),  # no max
])
def test_a_pool_above_its_max_is_drift(hosts_max, registered, revoked, expected):
    from fleet.reconciler.drift import drift

    applied = {"pool.p": AppliedResource(kind="pool", id="p", spec={"tenant": "t", "mode": "on_demand",
                                                                    "hosts": {"min": 0, "max": hosts_max}})}
    hosts = tuple(A.replace(machine_id=f"m-{i}", tenant="t", pools=("p",), status="revoked" if i < revoked else "active")
                  for i in range(registered))
    messages = [d.message for d in drift(LiveState(applied=applied, hosts=hosts))]
    above = [m for m in messages if "above its hosts.max" in m]
    assert bool(above) == expected, messages
    if expected:
        assert above == [f"pool p has {registered - revoked} registered hosts, above its hosts.max of {hosts_max} "
                         "(remove some with `fleet hosts rm`)"]
