"""Message and record codecs of protocol v1: round trips, unknown versions refused clearly, hostile input bounded."""

from __future__ import annotations

import json

import pytest

from fleet.bus import subjects
from fleet.bus.messages import (
    MAX_HEARTBEAT_BYTES,
    MAX_MESSAGE_BYTES,
    EnrollRequest,
    Heartbeat,
    HostRecord,
    HostsPageRequest,
    ProtocolError,
    SessionView,
    TooLarge,
    UnsupportedVersion,
    decode,
)
from fleet.bus.records import KeySpec, RecordError, decode_record, encode_record, key_digest, record_key

MID = "b2c4a1e0-12ab-4cde-89ef-aabbccddeeff"


def _heartbeat(**kw) -> Heartbeat:
    return Heartbeat(**{"seq": 1, "sent_at": 2.0, "started_at": 1.0, "status": "active", "version": "0.1.0", **kw})


def test_round_trip() -> None:
    hb = _heartbeat(running=1, sessions=[{"id": "s1", "phase": "running"}])
    assert decode(Heartbeat, hb.encode()) == hb


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_unknown_versions_are_refused(version) -> None:
    data = json.loads(_heartbeat().encode())
    data["v"] = version
    with pytest.raises(UnsupportedVersion, match="unsupported Heartbeat version"):
        decode(Heartbeat, json.dumps(data).encode())


@pytest.mark.parametrize("raw, words", [
    (b"not json", "Invalid JSON"),
    (b"[1, 2]", "should be an object"),
    (b'{"v": 1, "hostname": "h"}', "key"),
    (b"[" * 100_000 + b"]" * 100_000, "recursion limit"),  # deep nesting: a clear refusal, never a RecursionError
    (b'{"v": 1, "key": "k", "hostname": "' + b"h" * 300 + b'", "version": "1"}', "hostname"),
    (b'{"v": 1, "key": "k", "hostname": "h", "version": "1", "pools": [' + b'"p",' * 40 + b'"p"]}', "pools"),
    (b'{"v": 1, "key": "k", "hostname": "h", "version": "1", "max_sessions": 100001}', "max_sessions"),
    (b'{"v": 1, "key": "k", "hostname": "h", "version": "1", "pool_max_disk_gb": NaN}', "pool_max_disk_gb"),
])
def test_malformed_messages(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        decode(EnrollRequest, raw, max_bytes=len(raw))


def test_oversize_messages_are_refused_before_they_are_parsed() -> None:
    raw = b'{"v": 1, "key": "' + b"k" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(TooLarge, match="refused"):
        decode(EnrollRequest, raw)


def test_heartbeat_fields_are_bounded() -> None:
    many = [{"id": f"s{i}", "phase": "running"} for i in range(129)]
    with pytest.raises(ProtocolError, match="sessions"):
        decode(Heartbeat, json.dumps({**json.loads(_heartbeat().encode()), "sessions": many}))
    with pytest.raises(ProtocolError, match="status"):
        decode(Heartbeat, json.dumps({**json.loads(_heartbeat().encode()), "status": "idle-forever"}))
    with pytest.raises(ProtocolError, match="running"):
        decode(Heartbeat, json.dumps({**json.loads(_heartbeat().encode()), "running": 10**9}))
    # the largest heartbeat a host can legally send fits in the size the server accepts
    biggest = _heartbeat(sessions=[{"id": "x" * 64, "phase": "running"}] * 128, version="v" * 64)
    assert len(biggest.encode()) < MAX_HEARTBEAT_BYTES


def test_a_heartbeat_says_nothing_about_what_the_host_may_serve() -> None:
    """Tenant, pools, labels, models and capacity come from the record: a heartbeat that claims them is read
    without them (they are not even fields)."""
    claims = {**json.loads(_heartbeat().encode()), "tenant": "health-prod", "pools": [{"id": "pool-x"}],
              "max_sessions": 9999, "capacity": {"max_concurrent_sessions": 9999}, "labels": ["gpu"]}
    hb = decode(Heartbeat, json.dumps(claims))
    assert set(hb.model_dump()) == {"v", "seq", "sent_at", "started_at", "status", "running", "sessions", "version"}


def test_enroll_request_hides_the_secret_in_repr() -> None:
    assert "s3cret" not in repr(EnrollRequest(key="s3cret", hostname="h", version="1"))


def test_host_records_of_fleet_0_1_still_load() -> None:
    old = {"v": 1, "machine_id": MID, "tenant": "t", "key_id": "k", "hostname": "h",
           "pools": [{"id": "pool-a", "mode": "persistent"}], "capacity": {"max_concurrent_sessions": 3},
           "credential_sha256": "0" * 64, "enrolled_at": "2026-01-01T00:00:00Z", "last_status": "paused"}
    rec = HostRecord.model_validate_json(json.dumps(old))
    assert (rec.pools, rec.max_sessions, rec.admin_status) == (["pool-a"], 3, "paused")


def test_config_record_codec() -> None:
    spec = {"tenant": "fin-prod", "pools": ["p"], "models": None, "labels": ["a=b"], "max_uses": 3,
            "expires": "2030-01-01T00:00:00Z", "secret_digest": key_digest(b"pepper", "x")}
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
    for name in dir(subjects):
        value = getattr(subjects, name)
        if isinstance(value, str) and name.isupper() and name not in ("PREFIX", "SERVER_QUEUE"):
            assert value.startswith(("fleet.v1.", "fleet-v1-")), name


@pytest.mark.parametrize("subject, expected", [
    (f"fleet.v1.hb.{MID}", MID),
    (f"fleet.v1.hb.{MID.upper()}", None),  # not canonical
    (f"fleet.v1.hb.x{MID}", None),  # a suffix match is not a match (the old check used endswith)
    (f"fleet.v1.hb.evil.{MID}", None),
    (f"fleet.v1.bye.{MID}", None),  # another prefix
    ("fleet.v1.hb.", None),
    (f"fleet.v1.hb.{MID}.extra", None),
])
def test_machine_id_is_the_whole_subject_token(subject: str, expected: str | None) -> None:
    assert subjects.machine_id_of(subject, subjects.HEARTBEAT_PREFIX) == expected


def test_hosts_page_request_bounds() -> None:
    from fleet.bus.messages import HOSTS_PAGE_MAX

    req = decode(HostsPageRequest, b'{"v": 1}')
    assert (req.snapshot, req.offset, req.limit) == (None, 0, HOSTS_PAGE_MAX)
    assert decode(HostsPageRequest, HostsPageRequest(snapshot="s", offset=10, limit=7).encode()).offset == 10
    for bad in ('{"v": 1, "limit": 5001}', '{"v": 1, "limit": 0}', '{"v": 1, "offset": -1}',
                '{"v": 1, "snapshot": "' + "s" * 65 + '"}'):
        with pytest.raises(ProtocolError, match="malformed HostsPageRequest"):
            decode(HostsPageRequest, bad)
    with pytest.raises(UnsupportedVersion):
        decode(HostsPageRequest, '{"v": 2}')


@pytest.mark.parametrize("hostname", ["evil\x1b[2J\x1b[Hhost", "two\nlines", "bidi\u202ereversed", "nul\x00"])
def test_free_text_from_hosts_is_printable(hostname: str) -> None:
    """A hostname with an escape sequence would rewrite an operator's terminal in `fleet list`."""
    raw = json.dumps({"v": 1, "key": "k", "hostname": hostname, "version": "1"})
    with pytest.raises(ProtocolError, match="hostname"):
        decode(EnrollRequest, raw)
    assert decode(EnrollRequest, raw.replace(json.dumps(hostname)[1:-1], "build-01.corp")).hostname == "build-01.corp"


def test_a_session_view_carries_every_label_its_route_requires() -> None:
    # fleet.yaml does not bound a route's required_labels: the view of its sessions must read back with all of them
    labels = [f"zone-{i}=x" for i in range(100)]
    view = SessionView(id="0" * 20, tenant="t", project="p", command=["true"], route_labels=labels)
    assert decode(SessionView, view.encode()).route_labels == labels


def test_trusted_builds_what_model_construct_builds_and_refuses_holes() -> None:
    """The dispatcher's fast constructor must give the same model (fields, order on the wire, which fields were
    set) as pydantic's model_construct, never share a mutable default between two models, and refuse a record
    with a required field missing or a field the model does not have."""
    from fleet.bus.messages import PhaseEvent, SessionRecord, new_session_id, trusted

    ev = trusted(PhaseEvent, phase="queued", at=1.0)
    kw = dict(id=new_session_id(), tenant="acme", project="web", command=["true"], priority=2, submitted_at=1.0, history=[ev])
    a, b = SessionRecord.model_construct(**kw), trusted(SessionRecord, **kw)
    assert a.encode() == b.encode() and a.model_fields_set == b.model_fields_set
    assert SessionRecord.model_validate_json(b.encode()) == SessionRecord.model_validate_json(a.encode())
    c, d = trusted(SessionRecord, **kw), trusted(SessionRecord, **kw)
    assert c.env is not d.env and c.labels is not d.labels
    c.labels.append("gpu")
    assert d.labels == []
    with pytest.raises(TypeError, match="missing"):
        trusted(SessionRecord, id="s-2")
    with pytest.raises(TypeError, match="unknown fields"):
        trusted(PhaseEvent, phase="queued", at=1.0, bogus=1)



def test_ok_reply_is_byte_for_byte_what_the_api_reply_model_encodes() -> None:
    """The submit's reply is built without the ApiReply model: a field added to ApiReply (or a change of its
    encoding) must show up here, not as a reply that clients read differently."""
    from fleet.bus.messages import ApiReply, ok_reply

    for data in ({"id": "x", "n": [1, 2], "s": "é\u202e\n", "t": None, "f": 1.5, "e": {}}, [], None, "text", 3):
        assert ok_reply(data) == ApiReply(ok=True, data=data).encode()


def test_set_trusted_sets_fields_as_assignment_would_and_refuses_unknown_ones() -> None:
    from fleet.bus.messages import PhaseEvent, SessionRecord, new_session_id, set_trusted, trusted

    kw = dict(id=new_session_id(), tenant="acme", project="web", command=["true"], submitted_at=1.0,
              history=[trusted(PhaseEvent, phase="queued", at=1.0)])
    a, b = SessionRecord.model_validate(kw), SessionRecord.model_validate(kw)
    a.phase, a.host, a.exit_code = "succeeded", "h-1", 0  # type: ignore[assignment]
    set_trusted(b, phase="succeeded", host="h-1", exit_code=0)
    assert a.encode() == b.encode() and a.model_fields_set == b.model_fields_set
    with pytest.raises(TypeError, match="unknown fields"):
        set_trusted(b, phse="failed")
