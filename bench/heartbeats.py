"""How many heartbeats/s one `fleet server` ingests with no drops, and how fast a dead host shows `offline`.

Run: `python bench/heartbeats.py [--quick] [--json]` (`make bench` runs every bench with --quick); the figures
are recorded in docs/benchmarks.md. It starts its own nats-server (JetStream, free port, temp dir) and a real
`fleet server` subprocess (fleet.service.server.FleetServer), seeds N hosts in the registry (fleet-v1-hosts, the
record an enrollment writes; bench/benchkit/seed.py checks that every one landed), then a publisher subprocess
sends real v1 heartbeats of those hosts (fleet.bus.messages.Heartbeat: dynamic state only, on
fleet.v1.hb.<machine_id>) round-robin, as fast as nats-py can. The server's own counter (fleet.v1.api.ping) says
how many it ingested; ingested == sent means no drops. Baselines measured in the same run with the same payloads:
raw nats-py publish (the publisher alone) and raw nats-py subscribe (a bare callback that only counts), so the
ratios survive a noisy shared machine. Finally one host stops heartbeating and the time until the server reports
it offline (fleet.v1.api.hosts.get) is measured (grace = 2.5 heartbeat intervals, monitor tick = interval / 8: the
server's defaults are 2 s, 5 s and 0.25 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchkit.seed import seed_bucket  # noqa: E402

from fleet import __version__  # noqa: E402
from fleet.bus import subjects  # noqa: E402
from fleet.bus.connection import connect  # noqa: E402
from fleet.bus.embedded import EmbeddedNats, free_port  # noqa: E402
from fleet.bus.messages import ApiReply, Heartbeat, HostRecord, SessionInfo, decode  # noqa: E402
from fleet.hosts.client import ControlPlaneClient  # noqa: E402

STARTED_AT = time.time()


def heartbeat_payload(seq: int = 1) -> bytes:
    """A v1 heartbeat as an agent sends it (fleet.agents.agent.Agent.heartbeat): dynamic state only, the machine
    ID is the subject's last token. Two sessions running, as on a busy host."""
    return Heartbeat(
        seq=seq, sent_at=time.time(), started_at=STARTED_AT, status="active", running=2,
        sessions=[SessionInfo(id=f"sess-{n:08d}", phase="running") for n in range(2)], version=__version__,
    ).encode()


def host_ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]


# ------------------------------------------------------------------------------------------- subprocess roles


async def role_publisher(url: str, hosts: int, count: int, subject_prefix: str) -> None:
    """Wait for `go` on stdin, publish `count` heartbeats round-robin over `hosts`, print the elapsed time."""
    bus = await connect(url, connect_timeout=5)
    ids = host_ids(hosts)
    payload = heartbeat_payload()
    payloads = [(f"{subject_prefix}.{mid}", payload) for mid in ids]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    nc = bus.nc
    start = time.perf_counter()
    for i in range(count):
        subject, payload = payloads[i % hosts]
        await nc.publish(subject, payload)
    await nc.flush(timeout=60)
    elapsed = time.perf_counter() - start
    print(json.dumps({"sent": count, "elapsed": elapsed}), flush=True)
    await bus.close()


async def role_rawsub(url: str, count: int) -> None:
    """A bare nats-py subscriber that only counts; prints the rate from first to last message."""
    bus = await connect(url, connect_timeout=5)
    state = {"n": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()

    async def cb(msg) -> None:
        if state["n"] == 0:
            state["first"] = time.perf_counter()
        state["n"] += 1
        state["last"] = time.perf_counter()
        if state["n"] >= count:
            done.set()

    await bus.nc.subscribe("bench.raw.>", cb=cb, pending_msgs_limit=2_000_000, pending_bytes_limit=2**31)
    await bus.flush()
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 120)
    print(json.dumps({"received": state["n"], "elapsed": state["last"] - state["first"]}), flush=True)
    await bus.close()


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        raise RuntimeError(f"bench helper failed to start: {line!r}")


def result_of(proc: subprocess.Popen) -> dict:
    out = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
    proc.wait(30)
    return out


# ------------------------------------------------------------------------------------------- orchestration


async def seed(url: str, ids: list[str]) -> dict:
    """The hosts' records in fleet-v1-hosts, as enrollment writes them (bench/benchkit/seed.py: bounded, retried,
    read back until every record landed)."""
    records = {mid: HostRecord(machine_id=mid, tenant="fin-prod", key_id="bench", hostname=f"bench-{mid[:8]}",
                               pools=["pool-local-main"], labels=["region=eu-west", "tier=dev"],
                               models=["claude-3-5-sonnet"], max_sessions=4,
                               enrolled_at="2026-11-29T00:00:00Z").encode()
               for mid in ids}
    return await seed_bucket(url, subjects.BUCKET_HOSTS, records)


async def server_count(url: str) -> int:
    async with await connect(url) as bus:
        reply = decode(ApiReply, await bus.request(subjects.API_PING, b'{"v": 1}', timeout=5))
        return int(reply.data["heartbeats"])


async def measure_ingest(url: str, hosts: int, count: int) -> dict:
    before = await server_count(url)
    pub = spawn("--role", "publisher", "--url", url, "--hosts", str(hosts), "--count", str(count),
                "--subject", "fleet.v1.hb")
    wait_ready(pub)
    async with await connect(url) as bus:
        start = time.perf_counter()
        pub.stdin.write("go\n")  # type: ignore[union-attr]
        pub.stdin.flush()  # type: ignore[union-attr]
        ingested, last_change, last_value = 0, time.perf_counter(), -1
        while True:
            reply = decode(ApiReply, await bus.request(subjects.API_PING, b'{"v": 1}', timeout=30))
            ingested = int(reply.data["heartbeats"]) - before
            now = time.perf_counter()
            if ingested != last_value:
                last_value, last_change = ingested, now
            if ingested >= count or now - last_change > 3.0:
                break
            await asyncio.sleep(0.05)
        done = last_change - start
    sent = result_of(pub)
    return {"sent": sent["sent"], "ingested": ingested, "dropped": sent["sent"] - ingested,
            "publish_s": sent["elapsed"], "ingest_s": done, "heartbeats_per_s": ingested / done}


def measure_raw(url: str, hosts: int, count: int) -> dict:
    sub = spawn("--role", "rawsub", "--url", url, "--count", str(count))
    wait_ready(sub)
    pub = spawn("--role", "publisher", "--url", url, "--hosts", str(hosts), "--count", str(count),
                "--subject", "bench.raw")
    wait_ready(pub)
    pub.stdin.write("go\n")  # type: ignore[union-attr]
    pub.stdin.flush()  # type: ignore[union-attr]
    p, s = result_of(pub), result_of(sub)
    return {"raw_pub_per_s": p["sent"] / p["elapsed"], "raw_sub_per_s": s["received"] / max(s["elapsed"], 1e-9),
            "raw_sub_received": s["received"]}


async def measure_offline(url: str, interval: float) -> dict:
    """One host heartbeats a few times, then dies; time from its last heartbeat to `offline` in the API."""
    mid = host_ids(1)[0]
    async with await connect(url) as bus, ControlPlaneClient(url) as api:
        for seq in range(3):
            await bus.publish(subjects.heartbeat(mid), heartbeat_payload(seq + 10**6))
            await bus.flush()
            await asyncio.sleep(interval)
        await bus.publish(subjects.heartbeat(mid), heartbeat_payload(2 * 10**6))
        await bus.flush()
        died = time.perf_counter()
        if (await api.host(mid)).status != "active":
            raise SystemExit(f"host {mid} is not active after its heartbeats: nothing to measure")
        while True:
            if (await api.host(mid)).status == "offline":
                return {"offline_detect_s": time.perf_counter() - died}
            if time.perf_counter() - died > 30 * interval:
                return {"offline_detect_s": None}
            await asyncio.sleep(0.02)


def run(args: argparse.Namespace) -> dict:
    hosts = 2_000 if args.quick else 10_000
    count = 100_000 if args.quick else 300_000
    interval = 0.5 if args.quick else 2.0
    grace = 2.5 * interval
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        nats = EmbeddedNats(store_dir=Path(tmp) / "nats", port=free_port())
        nats.start()
        server = None
        try:
            seeded = asyncio.run(seed(nats.url, host_ids(hosts)))
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            server = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli.main", "server", "--nats", nats.url, "--offline-after", str(grace),
                 "--heartbeat-interval", str(interval),
                 "--monitor-interval", str(interval / 8)],
                stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "server.log", "wb"), env=env, cwd=ROOT)  # noqa: SIM115
            deadline = time.monotonic() + 30
            while True:
                try:
                    asyncio.run(server_count(nats.url))
                    break
                except Exception:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("fleet server did not start") from None
                    time.sleep(0.2)
            raw = measure_raw(nats.url, hosts, count)
            ingest = asyncio.run(measure_ingest(nats.url, hosts, count))
            offline = asyncio.run(measure_offline(nats.url, interval))
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
            nats.stop()
    detect = offline["offline_detect_s"]
    return {
        "hosts": hosts,
        "sent": ingest["sent"],
        "ingested": ingest["ingested"],
        "dropped": ingest["dropped"],
        "heartbeats_per_s": round(ingest["heartbeats_per_s"]),
        "raw_pub_per_s": round(raw["raw_pub_per_s"]),
        "raw_sub_per_s": round(raw["raw_sub_per_s"]),
        "ratio": round(ingest["heartbeats_per_s"] / raw["raw_pub_per_s"], 3),
        "ratio_vs_raw_sub": round(ingest["heartbeats_per_s"] / raw["raw_sub_per_s"], 3),
        "heartbeat_interval_s": interval,
        "grace_s": grace,
        "offline_detect_s": round(detect, 3) if detect is not None else None,
        "offline_detect_intervals": round(detect / interval, 2) if detect is not None else None,
        "payload_bytes": len(heartbeat_payload()),
        "seed_s": seeded["seed_s"],
        "seed_retried": seeded["seed_retried"],
        "goal_heartbeats_per_s": 20_000,
        "quick": args.quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller run (< 1 minute).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--role", choices=["publisher", "rawsub"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--subject", default="fleet.v1.hb", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publisher":
        asyncio.run(role_publisher(args.url, args.hosts, args.count, args.subject))
        return
    if args.role == "rawsub":
        asyncio.run(role_rawsub(args.url, args.count))
        return
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        ("hosts simulated", f"{result['hosts']:,}"),
        ("heartbeats sent / ingested", f"{result['sent']:,} / {result['ingested']:,} (dropped {result['dropped']})"),
        ("fleet server ingest", f"{result['heartbeats_per_s']:,} heartbeats/s (goal >= 20,000)"),
        ("raw nats-py publish", f"{result['raw_pub_per_s']:,} msgs/s"),
        ("raw nats-py subscribe (count only)", f"{result['raw_sub_per_s']:,} msgs/s"),
        ("ratio ingest / raw publish", f"{result['ratio']:.3f}"),
        ("ratio ingest / raw subscribe", f"{result['ratio_vs_raw_sub']:.3f}"),
        ("heartbeat payload", f"{result['payload_bytes']} bytes"),
        ("seeding the registry", f"{result['seed_s']} s ({result['seed_retried']} writes retried)"),
        ("offline detection", f"{result['offline_detect_s']} s = {result['offline_detect_intervals']} intervals "
                              f"(interval {result['heartbeat_interval_s']} s, grace {result['grace_s']} s; goal <= 3)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
