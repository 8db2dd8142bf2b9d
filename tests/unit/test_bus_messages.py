"""Message and record codecs of protocol v1: round trips, unknown versions refused clearly, malformed input."""

from __future__ import annotations

import json

import pytest

from fleet.bus import subjects
from fleet.bus.messages import (
    Capacity,
    EnrollRequest,
    Heartbeat,
    PoolMembership,
    ProtocolError,
    UnsupportedVersion,
    decode,
    decode_heartbeat_fast,
)
from fleet.bus.records import KeySpec, RecordError, decode_record, encode_record, record_key, secret_hash


def _heartbeat() -> Heartbeat:
    return Heartbeat(machine_id="m", hostname="h", version="0.1.0", started_at=1.0, sent_at=2.0, seq=1,
                     status="active", capacity=Capacity(max_concurrent_sessions=4, pool_max_disk_gb=50),
                     pools=[PoolMembership(id="pool-local-main", mode="persistent")], max_sessions=4)


def test_round_trip() -> None:
    hb = _heartbeat()
    assert decode(Heartbeat, hb.encode()) == hb
    assert decode_heartbeat_fast(hb.encode())["capacity"]["pool_max_disk_gb"] == 50


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_unknown_versions_are_refused(version) -> None:
    data = json.loads(_heartbeat().encode())
    data["v"] = version
    raw = json.dumps(data).encode()
    with pytest.raises(UnsupportedVersion, match="unsupported Heartbeat version"):
        decode(Heartbeat, raw)
    with pytest.raises(UnsupportedVersion):
        decode_heartbeat_fast(raw)


@pytest.mark.parametrize("raw, words", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"v": 1, "hostname": "h"}', "key"),
])
def test_malformed_messages(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        decode(EnrollRequest, raw)


def test_unknown_fields_are_ignored_within_v1() -> None:
    data = json.loads(_heartbeat().encode())
    data["future_field"] = {"x": 1}
    assert decode(Heartbeat, json.dumps(data)).machine_id == "m"


def test_enroll_request_hides_the_secret_in_repr() -> None:
    assert "s3cret" not in repr(EnrollRequest(key="s3cret", hostname="h", version="1"))


def test_config_record_codec() -> None:
    spec = {"tenant": "fin-prod", "pools": ["p"], "models": None, "labels": ["a=b"], "max_uses": 3,
            "expires": "2030-01-01T00:00:00Z", "secret_sha256": secret_hash("x")}
    raw = encode_record("key", "local-dev", spec)
    assert json.loads(raw) == {"v": 1, "kind": "key", "id": "local-dev", "spec": spec}
    record = decode_record(raw)
    key = KeySpec.model_validate(record.spec)
    assert key.expires_at() is not None and key.expires_at().year == 2030
    assert record_key("key", "local-dev") == "key.local-dev"
    with pytest.raises(RecordError):
        record_key("key", "bad id")
    with pytest.raises(UnsupportedVersion):
        decode_record(b'{"v": 2, "kind": "key", "id": "x", "spec": {}}')


def test_subjects_are_versioned() -> None:
    assert subjects.heartbeat("abc") == "fleet.v1.hb.abc"
    assert subjects.host_control("abc") == "fleet.v1.host.abc.control"
    assert subjects.machine_id_of("fleet.v1.bye.abc") == "abc"
    for name in dir(subjects):
        value = getattr(subjects, name)
        if isinstance(value, str) and name.isupper() and name not in ("PREFIX", "SERVER_QUEUE"):
            assert value.startswith(("fleet.v1.", "fleet-v1-")), name


# ------------------------------------------------------------------------------- observed-hosts pages (fleet plan)


def test_hosts_page_request_bounds() -> None:
    from fleet.bus.messages import HOSTS_PAGE_MAX, HostsPageRequest

    req = decode(HostsPageRequest, b'{"v": 1}')
    assert (req.snapshot, req.offset, req.limit) == (None, 0, HOSTS_PAGE_MAX)
    assert "limit" not in req.model_fields_set
    assert decode(HostsPageRequest, HostsPageRequest(snapshot="s", offset=10, limit=7).encode()).offset == 10
    for bad in ('{"v": 1, "limit": 5001}', '{"v": 1, "limit": 0}', '{"v": 1, "offset": -1}'):
        with pytest.raises(ProtocolError, match="malformed HostsPageRequest"):
            decode(HostsPageRequest, bad)
    with pytest.raises(UnsupportedVersion):
        decode(HostsPageRequest, '{"v": 2}')


def test_observed_columns_are_the_reconciler_fields() -> None:
    from fleet.bus.messages import OBSERVED_COLUMNS
    from fleet.reconciler.live import ObservedHost

    assert set(OBSERVED_COLUMNS) == set(ObservedHost.model_fields)


def _record(**kw):
    from fleet.bus.messages import HostRecord

    base = dict(machine_id="m-1", tenant="fin-prod", key_id="local-dev", hostname="rec-host",
                pools=[PoolMembership(id="pool-a")], labels=["region=eu"], models=["claude-3-5-sonnet"],
                capacity=Capacity(max_concurrent_sessions=4), credential_sha256="0" * 64,
                enrolled_at="2026-11-25T00:00:00Z")
    return HostRecord(**{**base, **kw})


@pytest.mark.parametrize("hb, status, expected", [
    # no heartbeat yet: everything from the record
    (None, "offline", ["m-1", "rec-host", "fin-prod", "local-dev", ["pool-a"], ["region=eu"], ["claude-3-5-sonnet"],
                       "offline", 0, 4, []]),
    # a heartbeat: its hostname, pools, labels (converged to its pool's), load and sessions
    ({"hostname": "hb-host", "pools": [{"id": "pool-b", "mode": "persistent"}], "running": 1, "max_sessions": 2,
      "labels": ["region=eu", "ssd"], "capacity": {"max_concurrent_sessions": 2},
      "sessions": [{"id": "s1", "phase": "running"}]}, "paused",
     ["m-1", "hb-host", "fin-prod", "local-dev", ["pool-b"], ["region=eu", "ssd"], ["claude-3-5-sonnet"], "paused", 1,
      2, [["s1", "running"]]]),
    # a malformed heartbeat is ignored field-wise (as `fleet list` ignores it): the record speaks, status stays
    ({"hostname": "hb-host", "pools": "pool-b", "running": "many", "labels": "ssd"}, "active",
     ["m-1", "rec-host", "fin-prod", "local-dev", ["pool-a"], ["region=eu"], ["claude-3-5-sonnet"], "active", 0, 4, []]),
])
def test_observed_rows_round_trip(hb, status, expected) -> None:
    from fleet.cli.live import hosts_from_rows
    from fleet.service.server import observed_row

    row = observed_row(_record(), hb, status)
    assert row == expected
    host = hosts_from_rows([json.loads(json.dumps(row))])[0]
    assert (host.machine_id, host.hostname, host.pools, host.status, host.running, host.max_sessions) == (
        expected[0], expected[1], tuple(expected[4]), expected[7], expected[8], expected[9])
    assert [(s.session_id, s.phase) for s in host.sessions] == [tuple(s) for s in expected[10]]


def test_malformed_observed_row_is_a_protocol_error() -> None:
    from fleet.cli.live import hosts_from_rows

    with pytest.raises(ProtocolError, match="malformed observed host m-9: running"):
        hosts_from_rows([["m-9", "h", "t", "k", [], [], [], "active", "lots", 4, []]])
