"""Benchmark: `fleet plan` end to end (CLI start included) for fleets of 1k, 10k and 100k hosts.

For each size it starts from a populated store: a real nats-server, the synthetic fleet (one pool per 100 hosts,
one project per 200 hosts, one key per 1,000 hosts) applied, N host records in the registry and a real
`fleet server` serving them. It then edits one pool and times `fleet plan --summary` as a subprocess (best of
3), next to the time to merely parse the same YAML in the same run (ruamel round-trip, the loader fleet uses),
and prints the ratio. It also times `fleet apply` of 10,000 changes.

    python bench/plan.py            # 1k, 10k, 100k hosts
    python bench/plan.py --quick    # 1k, 10k hosts, apply of 2,000 changes (under a minute)
    python bench/plan.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleet.bus import subjects  # noqa: E402
from fleet.bus.connection import connect  # noqa: E402
from fleet.bus.embedded import EmbeddedNats, free_port  # noqa: E402
from fleet.bus.kv import open_store  # noqa: E402
from fleet.bus.messages import Capacity, HostRecord, PoolMembership  # noqa: E402
from fleet.schema.generate import synthetic_fleet  # noqa: E402
from fleet.schema.loading import load_text  # noqa: E402

HOSTS_PER_POOL = 100


def sizes(hosts: int) -> dict[str, int]:
    return {"hosts": hosts, "pools": max(1, hosts // HOSTS_PER_POOL), "projects": max(1, hosts // 200),
            "keys": max(1, hosts // 1000)}


def fleet_cmd(args: list[str], url: str, cwd: Path, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "FLEET_NATS_URL": url, "NO_COLOR": "1", "CI": "true", "FLEET_KEY_BENCH": "bench-secret"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        raise SystemExit(f"fleet {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


async def seed_hosts(url: str, n: int, pools: int) -> float:
    """Write n host records into the registry bucket (as enrollment would), concurrently."""
    start = time.perf_counter()
    async with await connect(url, connect_timeout=5) as bus:
        store = await open_store(bus, subjects.BUCKET_HOSTS)
        sem = asyncio.Semaphore(512)

        async def put(i: int) -> None:
            pool = i % pools
            rec = HostRecord(machine_id=str(uuid.UUID(int=i + 1, version=4)), tenant=f"tenant-{pool % 2:03d}",
                             key_id=f"key-{0:06d}", hostname=f"host-{i:06d}",
                             pools=[PoolMembership(id=f"pool-{pool:06d}", mode="persistent")],
                             labels=[f"region=r{pool % 3}"], models=["claude-3-5-sonnet"],
                             capacity=Capacity(max_concurrent_sessions=4), credential_sha256="0" * 64,
                             enrolled_at="2026-11-25T00:00:00Z")
            async with sem:
                await store.put(rec.machine_id, rec.encode())

        await asyncio.gather(*(put(i) for i in range(n)))
    return time.perf_counter() - start


def start_server(url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FLEET_NATS_URL": url}
    proc = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", "server"], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    return proc


async def wait_ready(url: str, n: int, timeout: float = 300) -> None:
    from fleet.service.client import call

    deadline = time.monotonic() + timeout
    async with await connect(url, connect_timeout=5) as bus:
        while time.monotonic() < deadline:
            try:
                info = await call(bus, subjects.API_PING, timeout=2)
                if (info or {}).get("hosts", n) >= n:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit("fleet server did not become ready")


def parse_time(text: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        doc = load_text(text)
        best = min(best, time.perf_counter() - start)
        assert doc.data is not None
    return best


def run_size(hosts: int, work: Path, repeat: int) -> dict:
    s = sizes(hosts)
    nats = EmbeddedNats(store_dir=work / f"nats-{hosts}", port=free_port())
    nats.start()
    server = None
    try:
        url = nats.url
        text = synthetic_fleet(pools=s["pools"], projects=s["projects"], keys=s["keys"], key_env="FLEET_KEY_BENCH")
        cfg = work / f"fleet-{hosts}.yaml"
        cfg.write_text(text)
        apply_s, _ = fleet_cmd(["apply", "--auto-approve", "--summary", "-f", str(cfg)], url, work)
        seed_s = asyncio.run(seed_hosts(url, hosts, s["pools"]))
        server = start_server(url, work / f"server-{hosts}.log")
        asyncio.run(wait_ready(url, hosts))
        cfg.write_text(text.replace("max_concurrent_sessions: 4", "max_concurrent_sessions: 6", 1))
        plans = []
        for _ in range(repeat):
            elapsed, proc = fleet_cmd(["plan", "--summary", "-f", str(cfg)], url, work)
            assert "Plan: 0 to add, 1 to change, 0 to destroy." in proc.stdout, proc.stdout[-500:]
            plans.append(elapsed)
        parse_s = parse_time(cfg.read_text())
        plan_s = min(plans)
        return {**s, "yaml_bytes": len(text), "parse_s": round(parse_s, 4), "plan_s": round(plan_s, 4),
                "ratio": round(plan_s / parse_s, 2), "apply_initial_s": round(apply_s, 3), "seed_hosts_s": round(seed_s, 2)}
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        nats.stop()


def bench_apply(changes: int, work: Path) -> dict:
    """Apply `changes` creates (pools, projects, routes) to an empty store; CLI start and YAML load included."""
    pools = changes // 2
    projects = changes // 4
    text = synthetic_fleet(pools=pools, projects=projects, keys=0)
    nats = EmbeddedNats(store_dir=work / "nats-apply", port=free_port())
    nats.start()
    try:
        cfg = work / "fleet-apply.yaml"
        cfg.write_text(text)
        elapsed, proc = fleet_cmd(["apply", "--auto-approve", "--summary", "-f", str(cfg)], nats.url, work)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("Apply complete!"))
        n = int(line.split("Resources: ")[1].split(" added")[0])
        write_s = float(line.rsplit(" in ", 1)[1].rstrip("s."))
        return {"apply_changes": n, "apply_end_to_end_s": round(elapsed, 3), "apply_write_s": round(write_s, 3),
                "apply_parse_s": round(parse_time(text, 1), 3)}
    finally:
        nats.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k and 10k hosts only; apply of 2,000 changes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    host_sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    results = {"sizes": [], "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-plan-") as tmp:
        work = Path(tmp)
        for n in host_sizes:
            r = run_size(n, work, repeat=2 if args.quick else 3)
            results["sizes"].append(r)
            if not args.json:
                print(f"{n:>7} hosts: plan {r['plan_s']:.3f}s, parse {r['parse_s']:.3f}s (x{r['ratio']})", file=sys.stderr)
        results.update(bench_apply(2_000 if args.quick else 10_000, work))
    by = {r["hosts"]: r for r in results["sizes"]}
    if 1_000 in by and 10_000 in by:
        results["growth_1k_to_10k"] = round(by[10_000]["plan_s"] / by[1_000]["plan_s"], 2)
    if 10_000 in by and 100_000 in by:
        results["growth_10k_to_100k"] = round(by[100_000]["plan_s"] / by[10_000]["plan_s"], 2)
    if args.json:
        print(json.dumps(results))
        return
    print(f"\nfleet plan, end to end (CLI start included), best of runs — {results['date']}")
    print(f"{'hosts':>8} {'pools':>6} {'projects':>8} {'keys':>5} {'yaml':>9} {'parse YAML':>11} {'fleet plan':>11} {'ratio':>6}")
    for r in results["sizes"]:
        print(f"{r['hosts']:>8} {r['pools']:>6} {r['projects']:>8} {r['keys']:>5} {r['yaml_bytes']:>8}B "
              f"{r['parse_s']:>10.3f}s {r['plan_s']:>10.3f}s {r['ratio']:>6}")
    for k in ("growth_1k_to_10k", "growth_10k_to_100k"):
        if k in results:
            print(f"{k.replace('_', ' ')}: x{results[k]} (linear would be x10 for the host-proportional parts)")
    print(f"\nfleet apply of {results['apply_changes']} changes: {results['apply_end_to_end_s']:.2f}s end to end "
          f"({results['apply_write_s']:.2f}s writing, {results['apply_parse_s']:.2f}s to parse its YAML alone)")


if __name__ == "__main__":
    main()
