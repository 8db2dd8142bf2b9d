"""The manager of `fleet server` against a real nats-server: the leader's runnables move to the other replica when
the leader is SIGKILLed or stops, `fleet ping` shows each replica's runnables, and a takeover slower than the lease's
TTL keeps the lease (its renewal runs in a task of its own)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.dispatch import leader
from fleet.dispatch.dispatcher import Dispatcher
from fleet.hosts.client import ControlPlaneClient
from fleet.service.server import FleetServer, ServerSettings
from tests.conftest import LiveFleet, fleet_argv, run_cli, wait_for, wait_for_async

pytestmark = pytest.mark.integration


def runnables(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in reply.get("runnables", [])}


def ping_json(url: str) -> dict[str, Any] | None:
    r = run_cli("ping", "--json", "--nats", url)
    return json.loads(r.output) if r.exit_code == 0 else None


def test_the_standby_takes_over_when_the_leader_is_killed_and_ping_shows_the_runnables(live_fleet: LiveFleet) -> None:
    first = live_fleet.server
    assert first is not None
    second = live_fleet.procs.spawn("server-2", fleet_argv(
        "server", "--nats", live_fleet.url, "--offline-after", "1.0", "--monitor-interval", "0.1",
        "--heartbeat-interval", "0.2", "--creds", live_fleet.creds("server"), "--trust-dir",
        str(live_fleet.trust.root)))
    seen: dict[str, dict[str, Any]] = {}

    def both_answered() -> bool:  # one replica of the queue group answers each ping
        reply = ping_json(live_fleet.url)
        if reply is not None and "runnables" in reply:
            seen[reply["server"]] = reply
        return len(seen) == 2

    wait_for(both_answered, 60, 0.05, "a ping answered by each replica")
    leaders = [r for r in seen.values() if r["leader"]]
    assert len(leaders) == 1, seen
    (standby,) = [r for r in seen.values() if not r["leader"]]
    lead = runnables(leaders[0])
    assert lead["dispatcher"]["state"] == "running" and lead["consumer-janitor"]["state"] == "running"
    assert runnables(standby)["dispatcher"]["state"] == "standby"
    for reply in seen.values():  # every replica runs the loops that are not the leader's
        rs = runnables(reply)
        assert {rs[n]["state"] for n in ("lease", "liveness-monitor", "liveness-writer", "declared-status",
                                         "revocations", "metrics-log")} == {"running"}
        assert all(r["restarts"] == 0 and r["last_error"] is None for r in rs.values())

    # the human view lists them too
    text = run_cli("ping", "--nats", live_fleet.url).output
    assert "RUNNABLE" in text and "dispatcher" in text and "role: " in text

    # kill whichever leads; the other takes over within about the lease's TTL
    leader_id = leaders[0]["server"]
    killed, survivor = (first, second) if leader_id in first.output() else (second, first)
    assert leader_id in killed.output()  # the server logs its ID at start
    killed.popen.send_signal(signal.SIGKILL)
    killed.popen.wait(10)

    def survivor_leads() -> dict[str, Any] | None:
        reply = ping_json(live_fleet.url)
        if reply and reply.get("leader") and runnables(reply)["dispatcher"]["state"] == "running":
            return reply
        return None

    reply = wait_for(survivor_leads, 30, 0.1, "the survivor to lead")
    assert reply["server"] != leader_id
    assert "now dispatches" in survivor.output() and "dispatcher took over" in survivor.output()


def test_a_clean_stop_hands_the_lease_over_and_a_takeover_slower_than_the_ttl_keeps_it(
        nats_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = asyncio.Event()
    in_takeover: list[str] = []
    original = Dispatcher.take_over

    async def slow_take_over(self: Dispatcher) -> None:  # reading 100k sessions, say: longer than the lease's TTL
        in_takeover.append("x")
        await gate.wait()
        await original(self)

    monkeypatch.setattr(Dispatcher, "take_over", slow_take_over)

    async def scenario() -> None:
        a = FleetServer(ServerSettings(url=nats_server.url))
        b = FleetServer(ServerSettings(url=nats_server.url))
        await a.start()
        try:
            await wait_for_async(lambda: asyncio.sleep(0, a.manager.leading), timeout=10, what="a leads")
            await b.start()
            assert a.lease is not None and b.lease is not None
            await wait_for_async(lambda: asyncio.sleep(0, bool(in_takeover)), timeout=10, what="a's takeover")
            began, renewals = time.monotonic(), a.lease.renewals
            # the takeover goes on for longer than the lease's TTL: the lease is renewed meanwhile, a keeps it
            await wait_for_async(lambda: asyncio.sleep(0, time.monotonic() - began > leader.TTL_S + 1.5), timeout=15,
                                 interval=0.2, what="a takeover longer than the TTL")
            assert a.lease.held and a.manager.leading
            assert a.lease.renewals >= renewals + 3
            assert not b.manager.leading and not b.lease.held
            async with await connect(nats_server.url) as bus:
                store = await open_store(bus, subjects.BUCKET_DISPATCH, history=1, ttl=leader.TTL_S)
                entry = await store.get(leader.KEY)
                assert entry is not None and json.loads(entry.value)["holder"] == a.server_id
            assert runnables(a.manager.view())["dispatcher"]["state"] == "running"  # in its takeover
            gate.set()  # the takeover ends: a dispatches
            await wait_for_async(lambda: asyncio.sleep(0, a.dispatcher is not None and a.dispatcher.leading),
                                 timeout=10, what="a dispatches")
            async with ControlPlaneClient(nats_server.url) as client:
                reply = await client.ping()
                assert "runnables" in reply and isinstance(reply["leader"], bool)

            # a clean stop gives the lease up at once: b takes over (its own takeover is not held up: gate is open)
            await a.stop()
            await wait_for_async(lambda: asyncio.sleep(0, b.dispatcher is not None and b.dispatcher.leading),
                                 timeout=10, what="b dispatches")
            assert runnables(b.manager.view())["dispatcher"]["state"] == "running"
            assert runnables(a.manager.view())["dispatcher"]["state"] == "stopped"
        finally:
            gate.set()
            await a.stop()
            await b.stop()

    asyncio.run(scenario())
