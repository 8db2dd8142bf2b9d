"""Integration tests of the paged host API (`fleet.v1.api.hosts.page`) and of `fleet list` and `fleet plan` reading it.

Against a real nats-server and a real `fleet server` (a subprocess, or in-process where the test needs to set
the page budget): a few thousand seeded host records come back page by page exactly once, sorted, with the status
the server computes (revoked, offline, and active/paused/draining from real v1 heartbeats); pages are cut to the
byte budget and completed by the client; the pages of one snapshot describe one moment; an unknown snapshot is
refused. Then `fleet plan` with a real agent enrolled: its status shows in drift and consequences. No timing
asserts (bench/plan.py measures).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.bus.messages import Heartbeat, HostRecord, HostsPage, HostsPageRequest, SessionInfo
from fleet.errors import SnapshotExpired
from fleet.hosts.client import call, host_pages
from fleet.hosts.model import Host
from fleet.reconciler.operation import observe_hosts
from fleet.service.server import FleetServer, ServerSettings
from tests.conftest import fleet_argv, run_cli, wait_for

from .clihelpers import EXAMPLE, SECRETS, fleet

pytestmark = pytest.mark.integration

N = 3000
LIVE = {1: "active", 2: "paused", 3: "draining", 4: "active"}  # i % 10 -> reported status, for i < 400


def machine_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1, version=4))


def record(i: int) -> HostRecord:
    pool = i % 7
    return HostRecord(machine_id=machine_id(i), tenant=f"tenant-{pool % 2}", key_id=f"key-{pool % 3}",
                      hostname=f"host-{i:05d}", pools=[f"pool-{pool}"], labels=[f"region=r{pool % 3}"],
                      models=["claude-3-5-sonnet"], max_sessions=4, credential_sha256="0" * 64,
                      enrolled_at="2026-11-25T00:00:00Z", revoked=i % 10 == 0)


def heartbeat(rec: HostRecord, status: str, sessions: int = 0) -> bytes:
    return Heartbeat(version="0.1.0", started_at=1.0, sent_at=2.0, seq=1, status=status,  # type: ignore[arg-type]
                     sessions=[SessionInfo(id=f"s-{rec.hostname}-{k}", phase="running") for k in range(sessions)],
                     running=sessions).encode()


def expected_status(i: int) -> str:
    if i % 10 == 0:
        return "revoked"
    if i < 400 and i % 10 in LIVE:
        return LIVE[i % 10]
    return "offline"


async def seed(url: str, records: list[HostRecord]) -> None:
    async with await connect(url) as bus:
        store = await open_store(bus, subjects.BUCKET_HOSTS)
        sem = asyncio.Semaphore(256)

        async def put(rec: HostRecord) -> None:
            async with sem:
                await store.put(rec.machine_id, rec.encode())

        await asyncio.gather(*(put(r) for r in records))


async def ping(url: str) -> dict:
    async with await connect(url) as bus:
        return await call(bus, subjects.API_PING, timeout=2)


def test_paging_returns_every_host_once_with_its_status(nats_server, processes) -> None:
    url = nats_server.url
    records = [record(i) for i in range(N)]
    asyncio.run(seed(url, records))
    processes.spawn("server", fleet_argv("server", "--nats", url, "--offline-after", "120", "--monitor-interval", "0.1"))
    wait_for(lambda: _safe_ping(url).get("hosts") == N, 30, 0.2, "fleet server with every record loaded")

    async def publish() -> None:
        async with await connect(url) as bus:
            for i in range(1, 400):
                if i % 10 in LIVE:
                    await bus.publish(subjects.heartbeat(machine_id(i)),
                                      heartbeat(records[i], LIVE[i % 10], sessions=2 if i == 1 else 0))
            await bus.flush()

    async def read(page_size: int) -> list[Host]:
        async with await connect(url) as bus:
            return await host_pages(bus, page_size=page_size, concurrency=3)

    asyncio.run(publish())
    wait_for(lambda: [h.status for h in asyncio.run(read(1000))] == [expected_status(i) for i in _sorted_indexes()],
             20, 0.3, "the heartbeats' statuses")

    for page_size in (499, 700, 5000):  # uneven pages, and everything in one page (one-row pages: below)
        hosts = asyncio.run(read(page_size))
        ids = [h.machine_id for h in hosts]
        assert len(ids) == N and len(set(ids)) == N, "every host exactly once"
        assert ids == sorted(ids), "sorted by machine ID"
        by_id = {h.machine_id: h for h in hosts}
        for i, rec in enumerate(records):
            host = by_id[rec.machine_id]
            assert host.status == expected_status(i), (i, host)
            assert (host.hostname, host.tenant, host.key_id) == (rec.hostname, rec.tenant, rec.key_id)
            assert host.pools == tuple(rec.pools) and host.labels == tuple(rec.labels)
            assert host.max_sessions == 4
        busy = by_id[machine_id(1)]
        assert busy.running == 2 and [(s.session_id, s.phase) for s in busy.sessions] == [
            ("s-host-00001-0", "running"), ("s-host-00001-1", "running")]

    async def small_pages() -> list[list]:  # the first 50 hosts in pages of one row each, from one snapshot
        async with await connect(url) as bus:
            first = HostsPage.model_validate(await call(bus, subjects.API_HOSTS_PAGE, HostsPageRequest(limit=1)))
            rows = list(first.rows)
            for offset in range(1, 50):
                page = HostsPage.model_validate(await call(bus, subjects.hosts_page_at(first.server),
                                                           HostsPageRequest(snapshot=first.snapshot, offset=offset, limit=1)))
                assert page.total == N and page.offset == offset
                rows += page.rows
            return rows

    assert [r[0] for r in asyncio.run(small_pages())] == sorted(r.machine_id for r in records)[:50]

    async def models() -> list:
        async with await connect(url) as bus:
            hosts, warning = await observe_hosts(bus, required=True)
            assert warning is None
            return hosts

    # `fleet list` pages too: 3,000 host views (~2 MB) do not fit in one NATS message (1 MB).
    result = run_cli("list", "--json", "--nats", url)
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert sorted(h["id"] for h in listed) == sorted(r.machine_id for r in records)
    assert {h["id"]: h["status"] for h in listed}[machine_id(2)] == "paused"

    hosts = {h.machine_id: h for h in asyncio.run(models())}
    assert len(hosts) == N
    busy = hosts[machine_id(1)]
    assert (busy.status, busy.running, busy.max_sessions, busy.pools) == ("active", 2, 4, ("pool-1",))
    assert [s.session_id for s in busy.sessions] == ["s-host-00001-0", "s-host-00001-1"]
    assert hosts[machine_id(0)].status == "revoked" and hosts[machine_id(3)].status == "draining"


def _sorted_indexes() -> list[int]:
    return sorted(range(N), key=machine_id)


def _safe_ping(url: str) -> dict:
    try:
        return asyncio.run(ping(url)) or {}
    except Exception:  # not up yet
        return {}


def test_pages_fit_the_byte_budget_and_a_snapshot_holds_still(nats_server) -> None:
    url = nats_server.url
    n = 1200
    records = [record(i) for i in range(n)]
    late = record(n)

    async def scenario() -> None:
        await seed(url, records)
        server = FleetServer(ServerSettings(url=url, page_bytes=40_000))
        await server.start()
        try:
            async with await connect(url) as bus:
                # One page cannot hold 1,200 rows in 40 kB: the server cuts it, the client asks for the rest.
                raw = await bus.request(subjects.API_HOSTS_PAGE, HostsPageRequest().encode())
                assert len(raw) <= 40_000
                first = HostsPage.model_validate(json.loads(raw)["data"])
                assert first.total == n and 0 < len(first.rows) < n
                hosts = await host_pages(bus, page_size=5000)
                ids = [h.machine_id for h in hosts]
                assert sorted(ids) == ids == sorted(r.machine_id for r in records)

                # A snapshot taken before a new host appears keeps describing that moment, page after page.
                snap = HostsPage.model_validate(await call(bus, subjects.API_HOSTS_PAGE, HostsPageRequest(limit=100)))
                await seed(url, [late])  # the server's informer sees it within milliseconds
                for _ in range(100):
                    if late.machine_id in server.registry.entries:
                        break
                    await asyncio.sleep(0.05)
                assert late.machine_id in server.registry.entries
                rest, offset = [], 100
                while offset < snap.total:
                    page = HostsPage.model_validate(await call(
                        bus, subjects.hosts_page_at(snap.server),
                        HostsPageRequest(snapshot=snap.snapshot, offset=offset, limit=5000)))
                    assert page.total == n
                    rest += page.rows
                    offset += len(page.rows)
                assert late.machine_id not in {r[0] for r in snap.rows + rest} and len(snap.rows + rest) == n
                assert late.machine_id in {h.machine_id for h in await host_pages(bus)}, "a new snapshot sees it"

                with pytest.raises(SnapshotExpired):
                    await call(bus, subjects.hosts_page_at(server.server_id),
                               HostsPageRequest(snapshot="no-such-snapshot", offset=0, limit=10))
        finally:
            await server.stop()

    asyncio.run(scenario())


def _without_key(text: str, key_id: str) -> str:
    """fleet.yaml text without the enrollment key `key_id` (its block under keys:)."""
    out = re.sub(rf"\n  - id: {re.escape(key_id)}\n(?:    .*\n|\s*\n)*?(?=  - id: |\S|\Z)", "\n", text)
    assert f"id: {key_id}" not in out
    return out


def _plan(url: str, cwd: Path) -> dict:
    r = fleet(["plan", "--format", "json"], url, cwd=cwd)
    assert r.returncode in (0, 2), r.stderr
    return json.loads(r.stdout)


def test_plan_sees_a_real_agent_and_its_status(live_fleet, tmp_path) -> None:
    url = live_fleet.url
    work = tmp_path / "work"
    work.mkdir()
    (work / "fleet.yaml").write_text(EXAMPLE.read_text())
    r = fleet(["apply", "--auto-approve"], url, cwd=work)
    assert r.returncode == 0, r.stderr
    live_fleet.agent("w1", key=SECRETS["FLEET_KEY_LOCAL_DEV"])
    live_fleet.wait_status("w1", "active", timeout=30)
    mid = live_fleet.machine_id("w1")

    plan = _plan(url, work)
    assert not [e for e in plan["errors"] if "not observed" in e], plan["errors"]
    drift = [d["message"] for d in plan["drift"]]
    assert "pool pool-local-main has 1 of its 2 required hosts" in drift, drift

    # Deleting the key it enrolled with locks the live host out: a consequence naming it.
    (work / "fleet.yaml").write_text(_without_key(EXAMPLE.read_text(), "local-dev"))
    plan = _plan(url, work)
    locked = [c for c in plan["consequences"]["items"] if c["kind"] == "host-locked-out"]
    assert [c["subject"] for c in locked] == [mid], plan["consequences"]["items"]
    assert "w1" in locked[0]["message"] and "local-dev is deleted" in locked[0]["message"]

    # Revoked, it no longer counts as a live host (drift) and there is nothing left to lock out (consequences).
    result = run_cli("hosts", "revoke", mid, "--nats", url)
    assert result.exit_code == 0, result.output
    live_fleet.wait_status("w1", "revoked", timeout=15)
    plan = _plan(url, work)
    assert not [c for c in plan["consequences"]["items"] if c["kind"] == "host-locked-out"]
    assert "pool pool-local-main has 0 of its 2 required hosts" in [d["message"] for d in plan["drift"]]
