"""Enrollment over a real nats-server with real agent processes and a real `fleet server`: the "Done when".

One key (max_uses 3) onboards 3 hosts and refuses a 4th; expired keys, out-of-scope pools, labels and models,
unknown keys and pools of another tenant are refused with their reasons; `fleet list --json` shows the hosts.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.applied import load_pepper
from fleet.bus.connection import RequestTimeout
from fleet.bus.kv import open_store
from fleet.bus.messages import JoinReply, decode
from fleet.bus.records import encode_record, key_digest
from fleet.hosts.client import call
from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_three_enroll_fourth_refused(live_fleet) -> None:
    key = live_fleet.key("trio", max_uses=3, labels=("region=eu-west", "tier=dev"))
    agents = {name: live_fleet.agent(name, "--pool", "pool-local-main", "--labels", "tier=dev", key=key)
              for name in ("h1", "h2", "h3")}
    hosts = wait_for(lambda: (hs := live_fleet.hosts()) and len(hs) == 3 and all(h["status"] == "active" for h in hs)
                     and hs, 30, 0.2, "3 active hosts")
    active = [h for h in hosts if h["status"] == "active"]  # what jq '[.[] | select(.status == "active")]' does
    assert len(active) == 3
    for host in hosts:
        assert uuid.UUID(host["id"]).version == 4
        assert host["tenant"] == "fin-prod"
        assert host["pools"] == ["pool-local-main"]
        assert set(host["labels"]) == {"region=eu-west", "tier=dev"}  # the key's labels are pre-set
        assert host["sessions"] == {"running": 0, "max": 4}
    for name in agents:
        state = live_fleet.agent_dir(name)
        identity = json.loads((state / "identity.json").read_text())
        assert identity["machine_id"] in {h["id"] for h in hosts}
        assert stat.S_IMODE((state / "host.creds").stat().st_mode) == 0o600

    fourth = live_fleet.agent("h4", "--pool", "pool-local-main", key=key)
    assert fourth.popen.wait(30) == 1
    assert "exhausted" in fourth.output()
    assert len(live_fleet.hosts()) == 3

    table = run_cli("list", "--nats", live_fleet.url)
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "POOLS", "SESSIONS", "LAST", "SEEN"]
    assert len(lines) == 4 and all(" active " in line and "0/4" in line and "s ago" in line for line in lines[1:])

    keys = json.loads(run_cli("keys", "list", "--json", "--nats", live_fleet.url).output)
    assert keys[0]["uses"] == 3 and "secret_digest" not in keys[0] and "secret" not in keys[0]


def test_refusals_carry_reasons(live_fleet) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = live_fleet.key("old", expires=soon)  # valid when applied (fleet.yaml refuses expired keys) ...
    scoped = live_fleet.key("scoped", labels=("region=eu-west",), models=("claude-3-5-haiku",))

    async def write_behind_the_plan() -> str:
        """A key whose pool belongs to another tenant cannot be declared (validate refuses it); the enrollment
        authority must refuse it anyway if the store holds one: written here as a bug or an intruder would."""
        other = "cross-tenant-secret-0123456789abcdef"
        async with await live_fleet.bus("server") as bus:  # only the server identity may write there now
            pepper = await load_pepper(bus)
            assert pepper is not None
            store = await open_store(bus, subjects.BUCKET_CONFIG)
            await store.put("key.cross", encode_record("key", "cross", {
                "tenant": "fin-prod", "pools": ["pool-health-local"], "secret_digest": key_digest(pepper, other)}))
        return other

    other = asyncio.run(write_behind_the_plan())
    time.sleep(max(0.0, (datetime.strptime(soon, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                         - datetime.now(UTC)).total_seconds() + 0.5))  # ... and expired now
    cases = {
        "expired": (expired, ["--pool", "pool-local-main"]),
        "pool_out_of_scope": (scoped, ["--pool", "pool-cloud-e2b"]),
        "label_out_of_scope": (scoped, ["--labels", "gpu"]),
        "model_out_of_scope": (scoped, ["--models", "gpt-x"]),
        "unknown_key": ("not-a-key", []),
        "tenant_mismatch": (other, []),
    }
    procs = {reason: live_fleet.agent(f"r-{i}", *args, key=secret)
             for i, (reason, (secret, args)) in enumerate(cases.items())}
    for reason, proc in procs.items():
        assert proc.popen.wait(30) == 1, proc.output()
        out = proc.output()
        assert f"enrollment refused ({reason})" in out, out
        assert "Traceback" not in out
    assert live_fleet.hosts() == []


def test_tenant_comes_from_the_key(live_fleet) -> None:
    secret = live_fleet.key("fin")

    reply, creds = asyncio.run(live_fleet.enroll(secret, "liar", pools=["pool-local-main"], tenant="health-prod"))
    assert reply.ok and reply.tenant == "fin-prod" and creds is not None
    host = wait_for(lambda: live_fleet.hosts(), 5, what="host listed")[0]
    assert host["tenant"] == "fin-prod" and host["status"] == "offline"  # enrolled, no heartbeat yet

    async def bad_heartbeats() -> None:  # a host sending garbage must not break the inventory
        async with await live_fleet.bus(creds=creds) as bus:  # as the host itself: only it may publish there
            mid = reply.machine_id
            await bus.publish(subjects.heartbeat(mid), json.dumps({"v": 1, "machine_id": mid, "pools": 5}).encode())
            await bus.publish(subjects.heartbeat(mid), json.dumps({"v": 1, "seq": 1, "sent_at": 1, "started_at": 1,
                                                                   "status": "active", "version": "0",
                                                                   "pools": ["pool-x"], "tenant": "health-prod",
                                                                   "max_sessions": 9999}).encode())
            await bus.publish(subjects.heartbeat(mid), json.dumps({"v": 1, "machine_id": ["x"]}).encode())
            await bus.publish(subjects.heartbeat(mid), b"not json")
            await bus.flush()

    asyncio.run(bad_heartbeats())
    host = wait_for(lambda: (h := live_fleet.hosts()[0])["status"] == "active" and h, 5, what="seen")
    assert host["tenant"] == "fin-prod" and host["pools"] == ["pool-local-main"]  # from the record
    assert run_cli("show", reply.machine_id, "--nats", live_fleet.url).exit_code == 0


def test_unsupported_version_is_refused_clearly(live_fleet) -> None:
    """A registration of another protocol version is refused with the reason; an enrollment request the server cannot
    read is not answered at all (every enrolling agent shares one identity: the server answers only a request that
    proves which agent sent it, on that agent's inbox; fleet.bus.enrolling), and is counted."""
    secret = live_fleet.key("fin")

    async def scenario() -> tuple[JoinReply, str, dict[str, Any]]:
        reply, creds = await live_fleet.enroll(secret, "versioned")
        assert reply.ok and creds
        async with await live_fleet.bus(creds=creds) as bus:
            data = json.dumps({"v": 99, "hostname": "h", "version": "9"}).encode()
            refused = decode(JoinReply, await bus.request(subjects.register(reply.machine_id or ""), data, timeout=5))
        async with await live_fleet.bus("enroll") as bus:
            try:
                await bus.request(subjects.ENROLL, json.dumps({"v": 99, "key": "x"}).encode(), timeout=2)
                enrolled = "answered"
            except RequestTimeout:
                enrolled = "unanswered"
        async with await live_fleet.bus("admin") as bus:
            metrics = (await call(bus, subjects.API_PING))["metrics"]
        return refused, enrolled, metrics

    refused, enrolled, metrics = asyncio.run(scenario())
    assert not refused.ok and refused.reason == "unsupported_version" and "99" in (refused.message or "")
    assert enrolled == "unanswered" and metrics.get("enroll_unanswered_malformed") == 1, metrics
