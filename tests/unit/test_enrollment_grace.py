"""The liveness view of the control plane: grace per host (a pool's disconnect_grace_s overrides the server
default) and the status overlay (offline and revoked are the server's, never the host's)."""

from __future__ import annotations

from fleet.bus.messages import Capacity, HostRecord, PoolMembership
from fleet.bus.records import PoolSpec
from fleet.service.server import ControlPlane, HostView, ServerSettings


def record(*pools: str, revoked: bool = False) -> HostRecord:
    return HostRecord(machine_id="m", tenant="t", key_id="k", hostname="h",
                      pools=[PoolMembership(id=p) for p in pools], capacity=Capacity(max_concurrent_sessions=2),
                      credential_sha256="x", enrolled_at="2026-01-01T00:00:00Z", revoked=revoked)


def test_grace_comes_from_the_pools_when_applied() -> None:
    plane = ControlPlane(ServerSettings(offline_after=5.0))
    plane.pools = {"a": PoolSpec(tenant="t", disconnect_grace_s=6.0), "b": PoolSpec(tenant="t", disconnect_grace_s=20),
                   "c": PoolSpec(tenant="t")}
    assert plane.grace_for(record("a")) == 6.0
    assert plane.grace_for(record("a", "b")) == 20.0
    assert plane.grace_for(record("c")) == 5.0
    assert plane.grace_for(record("unapplied")) == 5.0


def test_status_overlay() -> None:
    view = HostView(record("a"), 1)
    assert view.status() == "offline"  # no heartbeat yet
    view.hb, view.offline, view.reported = {"status": "paused"}, False, "paused"
    assert view.status() == "paused"
    view.reported = "idle"
    assert view.status() == "draining"
    view.offline = True
    assert view.status() == "offline"
    assert HostView(record("a", revoked=True), 1, hb={}, offline=False, reported="active").status() == "revoked"


def test_resolve_by_id_or_unique_prefix() -> None:
    plane = ControlPlane(ServerSettings())
    ids = ["b2c4a1e0-12ab-4cde-89ef-aabbccddeeff", "b2c49999-34cd-4567-89ab-112233445566"]
    for mid in ids:
        plane.hosts[mid] = HostView(record("a").model_copy(update={"machine_id": mid}), 1)
    assert plane.resolve(ids[0])[0].record.machine_id == ids[0]
    assert plane.resolve("B2C4A")[0].record.machine_id == ids[0]
    for ident, error in [("b2c4", "ambiguous"), ("ffff", "not_found"), ("xyz", "malformed"), ("", "malformed")]:
        view, reply = plane.resolve(ident)
        assert view is None and reply.error == error and reply.message
