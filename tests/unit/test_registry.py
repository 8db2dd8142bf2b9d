"""The host registry (fleet.hosts.registry) without NATS: records in, heartbeats in, Hosts out.

Regression tests of the runtime-core defects: heartbeats are not believed (what a host may serve comes from its
record and the applied pools), untrusted input costs bounded work (no task, no store read, no unbounded memory),
the machine ID is the whole subject token, one status rule.
"""

from __future__ import annotations

import json
import uuid

import pytest

from fleet.bus import subjects
from fleet.bus.kv import Entry
from fleet.bus.messages import MAX_HEARTBEAT_BYTES, HostRecord
from fleet.bus.records import encode_record
from fleet.errors import InvalidRequest, NotFound
from fleet.hosts.config import AppliedConfig
from fleet.hosts.model import status_of
from fleet.hosts.registry import HEARTBEAT_BURST, HEARTBEAT_RATE, UNKNOWN_CACHE, Registry


def mid(n: int) -> str:
    return str(uuid.UUID(int=n))


def record(n: int = 1, *pools: str, revoked: bool = False, **kw) -> HostRecord:
    return HostRecord(machine_id=mid(n), tenant="fin-prod", key_id="k", hostname=f"h{n}", pools=list(pools or ["a"]),
                      enrolled_at="2026-01-01T00:00:00Z", revoked=revoked, **kw)


def pool(ident: str, *, slots: int | None = 4, labels=(), grace=None, tenant="fin-prod", mode="persistent") -> Entry:
    spec = {"tenant": tenant, "backend": "local", "mode": mode, "capacity": {"max_concurrent_sessions": slots},
            "labels": list(labels), "disconnect_grace_s": grace, "hosts": {"min": 0, "max": None}}
    return Entry(f"pool.{ident}", encode_record("pool", ident, spec), 1)


def registry(*records: HostRecord, pools: tuple[Entry, ...] = (), offline_after: float = 5.0) -> Registry:
    cfg = AppliedConfig()
    for p in pools:
        cfg.apply(p.key, p)
    reg = Registry(cfg, offline_after=offline_after)
    for rec in records:
        reg.apply_record(rec.machine_id, Entry(rec.machine_id, rec.encode(), 1))
    return reg


def beat(status: str = "active", **kw) -> bytes:
    return json.dumps({"v": 1, "seq": 1, "sent_at": 1.0, "started_at": 1.0, "status": status, "version": "0.1.0",
                       **kw}).encode()


def test_grace_comes_from_the_pools_when_applied() -> None:
    reg = registry(pools=(pool("a", grace=6.0), pool("b", grace=20), pool("c")), offline_after=5.0)
    assert reg.grace(record(1, "a")) == 6.0
    assert reg.grace(record(1, "a", "b")) == 20.0
    assert reg.grace(record(1, "c")) == 5.0
    assert reg.grace(record(1, "unapplied")) == 5.0


@pytest.mark.parametrize("revoked, live, reported, expected", [
    (False, False, None, "offline"),  # no heartbeat yet
    (False, True, "active", "active"),
    (False, True, "paused", "paused"),
    (False, True, "draining", "draining"),
    (False, False, "paused", "offline"),  # silent for its grace: offline whatever it said last
    (True, True, "active", "revoked"),  # revoked beats everything
    (False, True, "idle", "offline"),  # not a status a host may report
])
def test_one_status_rule(revoked, live, reported, expected) -> None:
    assert status_of(revoked=revoked, live=live, reported=reported) == expected


def test_heartbeats_are_not_believed() -> None:
    """Defect 3: a fin-prod host announced itself in a health-prod pool with 9,999 slots and was shown so."""
    reg = registry(record(1, "a"), pools=(pool("a", slots=4, labels=["tier=dev"]),))
    claim = beat(running=2, tenant="health-prod", pools=[{"id": "pool-health"}], max_sessions=9999,
                 capacity={"max_concurrent_sessions": 9999}, labels=["gpu"], hostname="x" * 1000)
    assert reg.heartbeat(subjects.heartbeat(mid(1)), claim)
    host = reg.hosts()[0]
    assert (host.tenant, host.pools, host.max_sessions, host.labels, host.hostname) == (
        "fin-prod", ("a",), 4, ("tier=dev",), "h1")
    assert (host.status, host.running) == ("active", 2)


@pytest.mark.parametrize("requested, pool_slots, expected", [
    (None, 4, 4),  # follows its pool
    (2, 4, 2),  # asked for fewer
    (8, 4, 4),  # a record above the pool (the pool shrank since): capped
    (None, None, 4),  # no pool says: the default
])
def test_slots_are_the_record_capped_by_the_pools(requested, pool_slots, expected) -> None:
    reg = registry(record(1, "a", max_sessions=requested), pools=(pool("a", slots=pool_slots),))
    assert reg.hosts()[0].max_sessions == expected


def test_a_pool_change_reaches_its_hosts_at_once() -> None:
    reg = registry(record(1, "a"), pools=(pool("a", slots=4),))
    assert reg.hosts()[0].max_sessions == 4
    reg.config.apply("pool.a", pool("a", slots=6, labels=["ssd"]))
    assert (reg.hosts()[0].max_sessions, reg.hosts()[0].labels) == (6, ("ssd",))


def test_unknown_ids_cost_a_lookup_and_a_counter() -> None:
    """Defect 4: each heartbeat with an unknown ID spawned a task doing a KV get."""
    reg = registry(record(1))
    for n in range(2, 3 * UNKNOWN_CACHE):
        assert not reg.heartbeat(subjects.heartbeat(mid(n)), beat())
    assert len(reg.entries) == 1
    assert len(reg.unknown) == UNKNOWN_CACHE  # bounded: the oldest are forgotten
    assert reg.metrics["heartbeat_unknown"] == 3 * UNKNOWN_CACHE - 2


@pytest.mark.parametrize("payload, counter", [
    (b"x" * (MAX_HEARTBEAT_BYTES + 1), "heartbeat_too_large"),  # refused before it is parsed
    (beat(hostname="h" * (2 * MAX_HEARTBEAT_BYTES)), "heartbeat_too_large"),
    (b"[" * 5_000 + b"]" * 5_000, "heartbeat_malformed"),  # deep: no RecursionError
    (b"\xff\xfe not json", "heartbeat_malformed"),
    (beat(status="idle"), "heartbeat_malformed"),
    (beat(running=-1), "heartbeat_malformed"),
    (json.dumps({"v": 2, "seq": 1}).encode(), "heartbeat_malformed"),
])
def test_hostile_heartbeats_are_dropped_and_counted(payload: bytes, counter: str) -> None:
    reg = registry(record(1))
    assert not reg.heartbeat(subjects.heartbeat(mid(1)), payload)
    assert reg.metrics[counter] == 1
    assert reg.hosts()[0].status == "offline"  # nothing was believed


def test_a_flooding_host_is_limited_before_parsing_and_others_are_not() -> None:
    """A host past its heartbeat budget (HEARTBEAT_RATE a second, bursts of HEARTBEAT_BURST) is dropped unparsed;
    another host's heartbeats are untouched; the budget refills with time."""
    reg = registry(record(1), record(2))
    flood = [reg.heartbeat(subjects.heartbeat(mid(1)), beat(), now=100.0) for _ in range(1000)]
    assert sum(flood) == HEARTBEAT_BURST
    assert reg.metrics["heartbeat_rate_limited"] == 1000 - HEARTBEAT_BURST
    assert reg.heartbeat(subjects.heartbeat(mid(2)), beat(), now=100.0)
    assert reg.heartbeat(subjects.heartbeat(mid(1)), beat(), now=100.0 + 2 / HEARTBEAT_RATE)
    # the last heartbeat of a burst beyond the budget is kept (unparsed) and taken once the budget allows
    for _ in range(int(HEARTBEAT_BURST)):
        reg.heartbeat(subjects.heartbeat(mid(1)), beat(), now=200.0)
    assert not reg.heartbeat(subjects.heartbeat(mid(1)), beat("paused"), now=200.0)
    assert reg.hosts()[0].status == "active"
    reg.sweep(now=200.0 + 2 / HEARTBEAT_RATE)
    assert reg.hosts()[0].status == "paused"


def test_the_machine_id_is_the_subject_token_not_a_suffix() -> None:
    reg = registry(record(1))
    assert not reg.heartbeat(f"fleet.v1.hb.evil{mid(1)}", beat())
    assert not reg.heartbeat(f"fleet.v1.hb.{mid(1)}.x", beat())
    assert reg.heartbeat(f"fleet.v1.hb.{mid(1)}", beat())


def test_a_revoked_host_is_not_revived_by_its_heartbeats() -> None:
    reg = registry(record(1, revoked=True))
    assert not reg.heartbeat(subjects.heartbeat(mid(1)), beat())
    assert reg.hosts()[0].status == "revoked"
    assert reg.revoked_seen == {mid(1)}  # the liveness writer tells it again


def test_status_changes_are_queued_for_persistence_never_each_heartbeat() -> None:
    reg = registry(record(1))
    reg.heartbeat(subjects.heartbeat(mid(1)), beat("active"))
    assert reg.dirty == set()  # the record already says active
    reg.heartbeat(subjects.heartbeat(mid(1)), beat("paused"))
    assert reg.dirty == {mid(1)}


def test_sweep_marks_silent_hosts_offline() -> None:
    reg = registry(record(1, "a"), record(2, "b"), pools=(pool("a", grace=10.0), pool("b")), offline_after=1.0)
    for n in (1, 2):
        reg.heartbeat(subjects.heartbeat(mid(n)), beat(), now=100.0, now_wall=1000.0)
    assert reg.sweep(now=100.5) == []
    gone = reg.sweep(now=102.0)
    assert [e.record.machine_id for e in gone] == [mid(2)]  # pool a's grace is 10 s
    hosts = {h.machine_id: h for h in reg.hosts()}
    assert (hosts[mid(1)].status, hosts[mid(2)].status) == ("active", "offline")
    assert hosts[mid(2)].last_seen == 1000.0  # still known when offline
    assert mid(2) in reg.dirty  # its last_seen is persisted


def test_a_host_not_heard_since_the_server_listens_is_awaited_for_its_grace_then_offline() -> None:
    reg = registry(record(1), record(2), record(3, revoked=True), offline_after=1.0)
    changed: list[str] = []
    reg.watchers.append(changed.append)
    reg.deaf()
    assert reg.sweep(now=50.0) == [] and changed == []  # not listening yet: nobody's silence counts
    reg.listen(now=100.0)
    assert reg.awaited(mid(1)) and reg.awaited(mid(2))
    assert not reg.awaited(mid(3))  # a revoked host is not waited for
    reg.heartbeat(subjects.heartbeat(mid(1)), beat(), now=100.4)
    assert not reg.awaited(mid(1))  # heard: alive
    reg.sweep(now=100.9)
    assert reg.awaited(mid(2)) and changed == [mid(1)]  # within its grace since listening: still awaited
    reg.sweep(now=101.2)
    assert not reg.awaited(mid(2)) and changed == [mid(1), mid(2)]  # a whole grace unheard: offline for good
    assert {h.machine_id: h.status for h in reg.hosts()}[mid(2)] == "offline"


def test_silence_while_the_server_is_cut_off_does_not_count() -> None:
    reg = registry(record(1), offline_after=1.0)
    reg.listen(now=0.0)
    reg.heartbeat(subjects.heartbeat(mid(1)), beat(), now=10.0)
    reg.deaf()  # its NATS connection dropped at 10.2
    assert reg.sweep(now=30.0) == []  # 20 s without a heartbeat, but it could hear nobody
    reg.listen(now=30.0)  # reconnected: the host's grace restarts
    assert reg.sweep(now=30.9) == []
    assert [e.record.machine_id for e in reg.sweep(now=31.1)] == [mid(1)]


def test_records_that_do_not_decode_or_lie_about_their_key_are_skipped() -> None:
    reg = registry()
    reg.apply_record(mid(1), Entry(mid(1), b'{"v": 1, "machine_id": "nope"}', 1))
    reg.apply_record(mid(2), Entry(mid(2), record(3).encode(), 2))  # stored under another host's key
    reg.apply_record(mid(4), Entry(mid(4), b"[" * 5000, 3))
    assert reg.entries == {}
    assert reg.metrics["host_record_skipped"] == 3
    reg.apply_record(mid(5), Entry(mid(5), record(5).encode(), 4))
    reg.apply_record(mid(5), None)
    assert reg.entries == {}


def test_resolve_by_id_or_unique_prefix() -> None:
    ids = ["b2c4a1e0-12ab-4cde-89ef-aabbccddeeff", "b2c49999-34cd-4567-89ab-112233445566"]
    reg = registry(*(record(1).model_copy(update={"machine_id": m}) for m in ids))
    assert reg.resolve(ids[0]).record.machine_id == ids[0]
    assert reg.resolve("B2C4A").record.machine_id == ids[0]
    for ident, error in [("b2c4", InvalidRequest), ("ffff", NotFound), ("xyz", InvalidRequest), ("", InvalidRequest),
                         ("b" * 37, InvalidRequest)]:
        with pytest.raises(error):
            reg.resolve(ident)
