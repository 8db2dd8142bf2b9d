"""Coalesced submits (fleet.sessions.coalesce, the session API's `submit_batch`) end to end: a real nats-server in
operator mode, a real `fleet server`, a real agent running real commands. Concurrent `Client.submit` calls go
together and each gets exactly what a plain submit would have given it (its own session, its own output, its own
refusal); a batch stays within the request bounds; items that no batch answered are sent again alone and stored once;
and a batch sent raw by an attacker is bounded, checked per item, and answered only in the sender's own inbox."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.messages import MAX_SUBMIT_BATCH, SUBMIT_MANY_BYTES, new_session_id
from fleet.errors import Refused
from fleet.sessions.client import Client
from tests.conftest import LiveFleet, wait_for
from tests.integration.test_bulk_submit import stored
from tests.integration.test_dispatch import HEALTH, MAIN, client, setup, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_concurrent_submits_go_together_and_each_gets_its_own_answer(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=4)
    worker(live_fleet, "w1", keys["fin"], MAIN)
    fin = live_fleet.issue("fin-ci", "submitter", tenant="fin-prod")

    async def go() -> tuple[list[Any], list[Any], dict[str, int]]:
        async with Client(live_fleet.url, creds=fin) as c:
            ids = [new_session_id() for _ in range(30)]
            waited = [c.submit("solo-app", ["sh", "-c", f"echo out-{i}"], wait=60, session_id=ids[i])
                      for i in range(20)]
            foreign = [c.submit("health-app", ["true"], wait=60, session_id=ids[20 + i]) for i in range(5)]
            nobody = [c.submit("no-such-app", ["true"], wait=60, session_id=ids[25 + i]) for i in range(5)]
            results = await asyncio.gather(*waited, *foreign, *nobody, return_exceptions=True)
            # the same moment, no wait: answered once stored, not when they ended
            quick = await asyncio.gather(*(c.submit("solo-app", ["sleep", "3"]) for _ in range(6)))
            counts = {"batches": c.submits.batches_sent, "alone": c.submits.sent_alone,
                      "resent": c.submits.resent_alone}
            return [(ids[i], results[i]) for i in range(30)], quick, counts

    results, quick, counts = asyncio.run(go())
    assert counts["resent"] == 0  # every item answered by its batch: none needed a plain submit
    assert counts["batches"] == 2 and counts["alone"] == 0  # 30 submits of one moment, then 6: two requests
    for i, (sid, view) in enumerate(results[:20]):
        assert not isinstance(view, BaseException), view
        assert view.id == sid and view.phase == "succeeded"
        assert view.output_tail == f"out-{i}\n"  # its own session's output: answers are not swapped
    for sid, err in results[20:]:  # another tenant's project, and none: refused, item by item, the same words
        assert isinstance(err, Refused) and "does not belong to tenant fin-prod" in err.message, (sid, err)
    assert all(v.phase in ("assigned", "queued") for v in quick)  # answered at once, not after `sleep 3`
    records = asyncio.run(stored(live_fleet.url, live_fleet.creds("server"), [sid for sid, _ in results]))
    assert set(records) == {sid for sid, _ in results[:20]}  # the refused ones were never stored
    log = live_fleet.server.output()
    assert "a submitter of tenant fin-prod asked for project health-app of tenant health-prod" in log


def test_a_batch_stays_within_the_request_bounds(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=4)
    worker(live_fleet, "w1", keys["fin"], MAIN)
    big = ["x" * 5000] * 2  # 24 such items fill a request of SUBMIT_MANY_BYTES (an argument is at most 8 KiB)

    async def go() -> tuple[list[Any], dict[str, int]]:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            views = await asyncio.gather(*(c.submit("solo-app", ["echo", *big, str(i)]) for i in range(60)),
                                         *(c.submit("solo-app", ["true"]) for _ in range(MAX_SUBMIT_BATCH + 10)))
            return views, {"batches": c.submits.batches_sent, "resent": c.submits.resent_alone}

    views, counts = asyncio.run(go())
    assert len({v.id for v in views}) == 60 + MAX_SUBMIT_BATCH + 10
    assert all(v.command[-1] == str(i) for i, v in enumerate(views[:60]))
    # ~750 KB in all (60 x 10 KB + 1,010 x ~150 B), 1,070 items: at least 4 requests of at most SUBMIT_MANY_BYTES and
    # MAX_SUBMIT_BATCH items; one over a bound would have been refused by the server and its items sent again alone
    assert 2 * SUBMIT_MANY_BYTES < 60 * 10_000
    assert counts["batches"] >= 4 and counts["resent"] == 0


def test_items_no_batch_answered_are_sent_again_alone_and_stored_once(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=4)
    worker(live_fleet, "w1", keys["fin"], MAIN)
    live_fleet.server.stop()  # no fleet server: the batch gets NATS's "no responders"
    ids = [new_session_id() for _ in range(12)]
    out: dict[str, Any] = {}

    async def go() -> None:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            out["views"] = await asyncio.gather(*(c.submit("solo-app", ["sh", "-c", f"echo {i}"], wait=60,
                                                           session_id=sid) for i, sid in enumerate(ids)))
            out["counts"] = {"batches": c.submits.batches_sent, "resent": c.submits.resent_alone}

    thread = threading.Thread(target=lambda: asyncio.run(go()))
    thread.start()
    live_fleet.start_server()  # within the client's fail-over window (15 s)
    thread.join(120)
    assert not thread.is_alive() and "views" in out, "the submits did not come back"
    assert out["counts"] == {"batches": 1, "resent": 12}  # one batch, unanswered: every item went alone
    assert [v.id for v in out["views"]] == ids
    assert all(v.phase == "succeeded" and v.output_tail == f"{i}\n" for i, v in enumerate(out["views"]))
    with client(live_fleet) as admin:
        assert sorted(s.id for s in admin.list()) == sorted(ids)  # each stored once


def test_a_raw_batch_is_bounded_checked_per_item_and_answered_only_in_its_senders_inbox(
        live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    subject = subjects.api_sessions("health-prod", "submit_batch")
    item = lambda project="health-app", **kw: {"id": new_session_id(), "project": project,  # noqa: E731
                                               "command": ["true"], **kw}
    mine, theirs = item(), item("my-fintech-app")
    cases = {
        "mixed": {"v": 1, "items": [mine, theirs]},
        "no_id": {"v": 1, "items": [{k: v for k, v in item().items() if k != "id"}, item()]},
        "twice": {"v": 1, "items": [mine, mine]},
        "too_many": {"v": 1, "items": [item() for _ in range(MAX_SUBMIT_BATCH + 1)]},
        "empty": {"v": 1, "items": []},
        "nested": {"v": 1, "items": [item(env={"A": "x"}), {"id": new_session_id(), "project": "health-app",
                                                             "command": [[["deep"]]]}]},
    }
    oversized = json.dumps({"v": 1, "items": [item(command=["x" * 4750] * 2) for _ in range(26)]}).encode()
    assert SUBMIT_MANY_BYTES < len(oversized) < 256 * 1024  # past the server's bound, within NATS's for a submitter

    async def replies(bus: Any, payload: bytes) -> list[dict[str, Any]]:
        inbox = bus.nc.new_inbox()
        got: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def on(msg: Any) -> None:
            got.append(json.loads(msg.data))
            if not got[-1]["ok"] or got[-1]["data"]["last"]:
                done.set()

        sub = await bus.nc.subscribe(inbox, cb=on)
        await bus.nc.publish(subject, payload, reply=inbox)
        await asyncio.wait_for(done.wait(), 20)
        await sub.unsubscribe()
        return got

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with await connect(live_fleet.url, creds=health) as bus:
            for name, body in cases.items():
                out[name] = await replies(bus, json.dumps(body).encode())
            out["oversized"] = await replies(bus, oversized)
            # a reply subject that is not the sender's own inbox: not answered, nothing stored
            stray = item()
            out["stray_id"] = stray["id"]
            await bus.nc.publish(subject, json.dumps({"v": 1, "items": [stray]}).encode(),
                                 reply=f"{subjects.host_prefix('m-someone')}.assign")
            await bus.flush()
        return out

    out = asyncio.run(go())
    mixed = [r for reply in out["mixed"] for r in reply["data"]["results"]]
    assert sorted(r["i"] for r in mixed) == [0, 1]  # each item answered exactly once
    by_i = {r["i"]: r for r in mixed}
    assert by_i[0]["ok"] and by_i[0]["session"]["id"] == mine["id"] and by_i[0]["session"]["tenant"] == "health-prod"
    assert not by_i[1]["ok"] and by_i[1]["error"] == "refused"  # the other tenant's project: that item alone
    for name in ("no_id", "twice", "too_many", "empty", "nested"):
        assert [(r["ok"], r["error"]) for r in out[name]] == [(False, "malformed")], (name, out[name])
    assert [(r["ok"], r["error"]) for r in out["oversized"]] == [(False, "too_large")]
    assert "names its session ID" in out["no_id"][0]["message"] and "twice" in out["twice"][0]["message"]
    wait_for(lambda: "not the requester's own inbox" in live_fleet.server.output(), 10, 0.1, "the refusal logged")
    records = asyncio.run(stored(live_fleet.url, live_fleet.creds("server"), [mine["id"], theirs["id"],
                                                                               out["stray_id"]]))
    assert set(records) == {mine["id"]}  # only the one good item of the whole attack was stored
