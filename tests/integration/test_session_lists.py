"""Session lists that say when they are cut, and page to the end: a real nats-server in operator mode, a real `fleet
server` holding 10,004 queued sessions (no host). `fleet sessions list --all --json` returns every one of them,
though a reply holds at most 512 KiB (~1,000 sessions): the client follows the cursor; without --all the JSON says
`truncated` with the total, and the table says "showing N of M"; the newest --limit are complete even when they
take more than one reply; a forged cursor is refused."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.messages import MAX_SUBMIT_BATCH
from fleet.sessions.client import Client
from tests.conftest import LiveFleet, run_cli
from tests.integration.test_dispatch import setup

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N = 10_004


def test_all_pages_to_the_end_and_a_cut_list_says_so(live_fleet: LiveFleet) -> None:
    setup(live_fleet)
    live_fleet.server.stop()
    live_fleet.start_server("--max-open-sessions", "20000")
    admin = live_fleet.creds("admin")

    async def submit() -> list[str]:
        async with Client(live_fleet.url, creds=admin) as c:
            ids: list[str] = []
            while len(ids) < N:
                n = min(MAX_SUBMIT_BATCH, N - len(ids))
                ids += [v.id for v in await c.submit_many("solo-app", [["echo", str(len(ids) + i)]
                                                                      for i in range(n)])]
            return ids

    ids = asyncio.run(submit())
    every = run_cli("sessions", "list", "--all", "--json", "--nats", live_fleet.url)
    assert every.exit_code == 0, every.output
    page = json.loads(every.stdout)
    listed = [s["id"] for s in page["sessions"]]
    assert len(listed) == N and set(listed) == set(ids)  # every one, once
    order = [(s["submitted_at"], s["id"]) for s in page["sessions"]]
    assert order == sorted(order)  # oldest first (a batch shares its time: then by ID)
    assert (page["total"], page["truncated"], page["next"]) == (N, False, None)

    newest = json.loads(run_cli("sessions", "list", "--json", "--nats", live_fleet.url).stdout)
    # the newest 1,000 (the default --limit): more than one reply holds, so this took the cursor too
    assert [s["id"] for s in newest["sessions"]] == listed[-1000:]
    assert (newest["total"], newest["truncated"]) == (N, True)

    table = run_cli("sessions", "list", "--limit", "5", "--nats", live_fleet.url)
    assert table.exit_code == 0, table.output
    assert f"showing 5 of {N} sessions" in table.stdout and "--all" in table.stdout
    assert [line.split()[0] for line in table.stdout.splitlines()[1:6]] == listed[-5:]
    whole = run_cli("sessions", "list", "--status", "queued", "--project", "solo-app", "--limit", "10000",
                    "--nats", live_fleet.url)
    assert "showing 10000 of 10004" in whole.stdout

    async def forged() -> list[dict]:
        async with await connect(live_fleet.url, creds=admin) as bus:
            subject = subjects.api_sessions("_all", "list")
            return [json.loads(await bus.request(subject, json.dumps({"v": 1, "limit": 3, "after": after}).encode(),
                                                 timeout=10))
                    for after in ("nan_" + "0" * 20, "1_../../etc", "x" * 65, "1e308_" + "f" * 20)]

    bad_nan, bad_id, too_long, past_the_end = asyncio.run(forged())
    assert (bad_nan["ok"], bad_nan["error"]) == (False, "invalid") and "cursor" in bad_nan["message"]
    assert (bad_id["ok"], bad_id["error"]) == (False, "invalid")
    assert (too_long["ok"], too_long["error"]) == (False, "malformed")
    assert past_the_end["ok"] and past_the_end["data"]["sessions"] == [] and past_the_end["data"]["next"] is None
