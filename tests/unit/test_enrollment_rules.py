"""The enrollment rules (fleet.hosts.enrollment.check_enrollment), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleet.bus.messages import EnrollRequest
from fleet.bus.records import KeySpec
from fleet.hosts.enrollment import check_enrollment
from fleet.schema.models import Pool

NOW = datetime(2026, 6, 1, tzinfo=UTC)
KEY = KeySpec(tenant="fin-prod", pools=["pool-local-main", "pool-ci"], models=["m1", "m2"],
              labels=["region=eu-west"], max_uses=3, expires="2027-01-01T00:00:00Z", secret_digest="x")
POOLS = {
    "pool-local-main": Pool.from_spec("pool-local-main", {
        "tenant": "fin-prod", "mode": "persistent", "labels": ["tier=dev"],
        "capacity": {"max_concurrent_sessions": 4, "pool_max_disk_gb": 50}, "disconnect_grace_s": 6}),
    "pool-gpu": Pool.from_spec("pool-gpu", {"tenant": "health-prod", "mode": "hybrid"}),
}


def req(**kw) -> EnrollRequest:
    return EnrollRequest(key="secret", hostname="h", version="1", **kw)


@pytest.mark.parametrize("key, request_, reason", [
    (KEY.model_copy(update={"expires": "2026-01-01T00:00:00Z"}), req(), "expired"),
    (KEY, req(pools=["pool-other"]), "pool_out_of_scope"),
    (KEY, req(models=["m3"]), "model_out_of_scope"),
    (KEY, req(labels=["gpu"]), "label_out_of_scope"),
    (KEY.model_copy(update={"pools": ["pool-gpu"]}), req(), "tenant_mismatch"),
    (KEY.model_copy(update={"pools": []}), req(), "pool_out_of_scope"),
    # an envelope larger than the pool's is refused, not trimmed (it was accepted: 100000 slots on a pool of 4)
    (KEY, req(pools=["pool-local-main"], max_sessions=100000), "capacity_out_of_scope"),
    (KEY, req(pools=["pool-local-main"], max_sessions=5), "capacity_out_of_scope"),
    (KEY, req(pools=["pool-local-main"], pool_max_disk_gb=51), "capacity_out_of_scope"),
])
def test_refusals(key: KeySpec, request_: EnrollRequest, reason: str) -> None:
    decision = check_enrollment("k", key, POOLS, request_, NOW)
    assert not decision.ok and decision.reason == reason and decision.message


@pytest.mark.parametrize("request_, pools, labels, max_sessions, disk", [
    # no pools requested: every pool of the key (pool-ci is not applied yet: allowed, the key names it)
    (req(), ["pool-local-main", "pool-ci"], ["region=eu-west"], None, None),
    # a pool's labels may be requested; the key's labels are always set
    (req(pools=["pool-local-main"], labels=["tier=dev"]), ["pool-local-main"], ["region=eu-west", "tier=dev"],
     None, None),
    # an envelope within the pool's is kept as asked (None: the pools decide, and follow later changes)
    (req(pools=["pool-local-main"], max_sessions=4, pool_max_disk_gb=50), ["pool-local-main"], ["region=eu-west"],
     4, 50),
    (req(pools=["pool-ci"], max_sessions=8, pool_max_disk_gb=10), ["pool-ci"], ["region=eu-west"], 8, 10),
])
def test_acceptances(request_, pools, labels, max_sessions, disk) -> None:
    decision = check_enrollment("k", KEY, POOLS, request_, NOW)
    assert decision.ok and decision.tenant == "fin-prod"
    assert decision.pools == pools
    assert decision.labels == labels
    assert (decision.max_sessions, decision.max_disk_gb) == (max_sessions, disk)


def test_the_tenant_is_the_keys_whatever_the_host_claims() -> None:
    decision = check_enrollment("k", KEY, POOLS, req(tenant="health-prod"), NOW)
    assert decision.ok and decision.tenant == "fin-prod"


def test_models_unrestricted_when_key_has_none() -> None:
    key = KEY.model_copy(update={"models": None})
    assert check_enrollment("k", key, POOLS, req(models=["anything"]), NOW).ok
