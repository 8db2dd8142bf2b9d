"""Table-driven tests of the per-host routing explanation (fleet.routing.ineligibility: every reason, for `route test
--explain`) and of the host envelope rule. Capacity and decisions are the scheduler's: tests/unit/test_scheduler.py."""

from __future__ import annotations

import pytest

from fleet.hosts.model import Host, host_slots
from fleet.routing import Route, ineligibility
from fleet.schema.models import Pool

LOCAL = Pool.from_spec("pool-local-main", {"tenant": "fin-prod", "backend": "local", "mode": "persistent",
                                           "capacity": {"max_concurrent_sessions": 4}, "hosts": {"max": 4},
                                           "labels": ["region=eu-west"], "models": ["claude-3-5-sonnet"]})
ROUTE = Route(project="my-fintech-app", tenant="fin-prod", mode="preferred-with-fallback", preferred="pool-local-main",
              fallback="pool-cloud-e2b", labels=frozenset({"region=eu-west"}), model="claude-3-5-sonnet")


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


@pytest.mark.parametrize("slots,expected", [([4, 1], 1), ([None, 6], 6), ([], None), ([None], None)])
def test_host_slots_is_the_smallest_envelope(slots, expected):
    assert host_slots(slots) == expected
