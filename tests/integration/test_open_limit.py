"""The per-tenant limit of open sessions (`fleet server --max-open-sessions`) holds exactly under concurrent submits:
a real nats-server in operator mode, a real `fleet server`, no host (the sessions stay queued, so open). 100
submitters at once, each on its own connection, against a limit of 7 get exactly 7 accepted; concurrent submits of
one client (sent together as one batch) get exactly the room that is left, item by item; a place freed by a cancel
is taken again; a session sent again after its reply was lost is not refused for want of a place it already has."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleet.errors import QueueFull
from fleet.sessions.client import Client
from tests.conftest import LiveFleet
from tests.integration.test_dispatch import client, setup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LIMIT = 7


def test_concurrent_submitters_get_exactly_the_limit(live_fleet: LiveFleet) -> None:
    setup(live_fleet)
    live_fleet.server.stop()
    live_fleet.start_server("--max-open-sessions", str(LIMIT))
    fin = live_fleet.issue("fin-ci", "submitter", tenant="fin-prod")
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")

    async def one(creds: str, project: str) -> Any:
        async with Client(live_fleet.url, creds=creds) as c:
            try:
                return await c.submit(project, ["true"])
            except QueueFull as exc:
                return exc

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        # 100 submitters at once, each its own connection (each sends a plain submit)
        out["crowd"] = await asyncio.gather(*(one(fin, "solo-app") for _ in range(100)))
        # another tenant's limit is its own
        out["other"] = await asyncio.gather(*(one(health, "health-app") for _ in range(3)))
        async with Client(live_fleet.url, creds=fin) as c:
            first = next(v for v in out["crowd"] if not isinstance(v, BaseException))
            await c.cancel(first.id)  # one place free again
            # one client, 20 submits at once (one batch): exactly the one free place is taken
            out["batch"] = await asyncio.gather(*(c.submit("solo-app", ["true"]) for _ in range(20)),
                                                return_exceptions=True)
            out["batches"] = c.submits.batches_sent
            # an accepted session sent again (its reply lost) is the same session, not a refusal
            again = next(v for v in out["batch"] if not isinstance(v, BaseException))
            out["again"] = await c.submit("solo-app", ["true"], session_id=again.id)
        return out

    out = asyncio.run(go())
    accepted = [v for v in out["crowd"] if not isinstance(v, BaseException)]
    refused = [v for v in out["crowd"] if isinstance(v, QueueFull)]
    assert len(accepted) == LIMIT and len(refused) == 100 - LIMIT
    assert f"at most {LIMIT}" in refused[0].message
    assert all(not isinstance(v, BaseException) for v in out["other"])
    assert out["batches"] == 1
    batch_ok = [v for v in out["batch"] if not isinstance(v, BaseException)]
    assert len(batch_ok) == 1 and sum(isinstance(v, QueueFull) for v in out["batch"]) == 19
    assert out["again"].id == batch_ok[0].id
    with client(live_fleet) as admin:
        fin_open = [s for s in admin.list() if s.tenant == "fin-prod" and s.phase == "queued"]
        assert len(fin_open) == LIMIT  # what the server holds, not just what the clients were told
