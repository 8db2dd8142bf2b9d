"""Bulk submit (`Client.submit_many`, `fleet submit --count N`, the session API's submit_many) end to end: a real
nats-server in operator mode, a real `fleet server`, a real agent. Every session of a batch is in the sessions
bucket when the reply comes, each gets the scheduler's placement or reason, the same batch sent again is the same
sessions, a batch over the bounds is refused clearly (by the client before sending, by the server when sent raw),
and a submitter cannot bulk-submit into another tenant's project."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.bus.messages import MAX_SUBMIT_BATCH, SessionRecord, new_session_id
from fleet.errors import InvalidRequest, Refused
from fleet.sessions.client import Client
from tests.conftest import LiveFleet, run_cli, wait_for
from tests.integration.test_dispatch import HEALTH, MAIN, client, setup, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def stored(url: str, creds: str, ids: list[str]) -> dict[str, SessionRecord]:
    """The sessions `ids` as the bucket holds them (read as the server identity: nobody else may)."""
    async with await connect(url, creds=creds) as bus:
        store = await open_store(bus, subjects.BUCKET_SESSIONS, create=False)
        out = {}
        for sid in ids:
            entry = await store.get(sid)
            if entry is not None:
                out[sid] = SessionRecord.model_validate_json(entry.value)
        return out


def test_a_batch_is_stored_before_the_reply_placed_where_room_is_and_runs(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=2)
    worker(live_fleet, "w1", keys["fin"], MAIN)
    admin = live_fleet.creds("admin")

    async def go() -> tuple[list[Any], dict[str, SessionRecord]]:
        async with Client(live_fleet.url, creds=admin) as c:
            views = await c.submit_many("solo-app", [["sh", "-c", f"echo {i}"] for i in range(40)])
            return views, await stored(live_fleet.url, live_fleet.creds("server"), [v.id for v in views])

    views, records = asyncio.run(go())
    assert len(views) == 40 and len({v.id for v in views}) == 40
    assert set(records) == {v.id for v in views}  # every one durably stored when the reply came
    placed = [v for v in views if v.phase == "assigned"]
    queued = [v for v in views if v.phase == "queued"]
    assert len(placed) == 2 and {v.pool for v in placed} == {MAIN}  # the host's two slots, at once
    assert len(queued) == 38
    # the scheduler's reason, not a count of sessions queued before it
    assert {v.wait_kind for v in queued} <= {"pool_full", None} and all(v.reason for v in queued)
    assert any(v.wait_kind == "pool_full" for v in queued)
    assert all(v.command[-1] == f"echo {i}" for i, v in enumerate(views))
    with client(live_fleet) as c:
        ended = wait_for(lambda: all(c.get(v.id).phase == "succeeded" for v in views) and True, 120, 0.2,
                         "all 40 sessions succeeded")
        assert ended
        assert c.get(views[7].id).output_tail == "7\n"


def test_the_same_batch_sent_again_is_the_same_sessions_and_bad_batches_are_refused(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    many = subjects.api_sessions("health-prod", "submit_many")
    ids = [new_session_id() for _ in range(5)]
    batch = json.dumps({"v": 1, "project": "health-app",
                        "sessions": [{"id": sid, "command": ["true"]} for sid in ids]}).encode()
    too_many = json.dumps({"v": 1, "project": "health-app", "sessions": [
        {"id": new_session_id(), "command": ["true"]} for _ in range(MAX_SUBMIT_BATCH + 1)]}).encode()
    twice = json.dumps({"v": 1, "project": "health-app",
                        "sessions": [{"id": ids[0], "command": ["true"]}] * 2}).encode()
    foreign = json.dumps({"v": 1, "project": "my-fintech-app",
                          "sessions": [{"id": new_session_id(), "command": ["true"]}]}).encode()

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with await connect(live_fleet.url, creds=health) as bus:
            for name, payload in (("first", batch), ("again", batch), ("too_many", too_many), ("twice", twice),
                                  ("foreign", foreign)):
                out[name] = json.loads(await bus.request(many, payload, timeout=20))
        async with Client(live_fleet.url, creds=health) as c:
            try:
                await c.submit_many("health-app", [["true"]] * (MAX_SUBMIT_BATCH + 1))
            except InvalidRequest as exc:
                out["client_refused"] = exc.message
            try:
                await c.submit_many("my-fintech-app", [["true"]])
            except Refused as exc:
                out["client_foreign"] = exc.message
        return out

    out = asyncio.run(go())
    first = [s["id"] for s in out["first"]["data"]["sessions"]]
    assert out["first"]["ok"] and first == ids
    assert out["again"]["ok"] and [s["id"] for s in out["again"]["data"]["sessions"]] == ids
    assert (out["too_many"]["ok"], out["too_many"]["error"]) == (False, "malformed")
    assert (out["twice"]["ok"], out["twice"]["error"]) == (False, "invalid")
    assert "twice" in out["twice"]["message"]
    assert out["foreign"]["ok"] is False and "does not belong to tenant health-prod" in out["foreign"]["message"]
    assert f"at most {MAX_SUBMIT_BATCH}" in out["client_refused"]
    assert "does not belong" in out["client_foreign"]
    with client(live_fleet) as admin:
        listed = admin.list()
        assert sorted(s.id for s in listed) == sorted(ids)  # five sessions, stored once; nothing else


def test_fleet_submit_count_prints_one_id_per_session_and_why_the_rest_wait(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w1", keys["fin"], MAIN)
    r = run_cli("submit", "--project", "solo-app", "--count", "3", "--nats", live_fleet.url, "--", "sleep", "5")
    assert r.exit_code == 0, r.output
    ids = r.stdout.split()
    assert len(ids) == 3 and all(len(i) == 20 for i in ids)
    assert "3 sessions stored: 1 assigned to hosts, 2 queued" in r.stderr
    assert "queued (2): " in r.stderr and "before it" not in r.stderr
    bad = run_cli("submit", "--project", "solo-app", "--count", str(MAX_SUBMIT_BATCH + 1), "--nats",
                  live_fleet.url, "--", "true")
    assert bad.exit_code == 64 and "--count" in bad.output
    both = run_cli("submit", "--project", "solo-app", "--count", "2", "--wait", "--nats", live_fleet.url, "--",
                   "true")
    assert both.exit_code == 64 and "--wait follows one session" in both.output
