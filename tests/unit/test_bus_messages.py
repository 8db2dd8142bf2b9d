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
