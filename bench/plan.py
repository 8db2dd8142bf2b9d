"""Benchmark: `fleet plan` end to end (CLI start included) for fleets of 1k, 10k and 100k hosts, and `fleet apply`.

For each size it starts from a populated store: a real nats-server (JetStream, free port, temp dir), the
synthetic fleet of fleet.schema.generate (one pool per 100 hosts, one project per 200 hosts, one key per 1,000
hosts, two tenants) applied with `fleet apply`, N host records in the registry (bucket fleet-v1-hosts, the record
an enrollment writes: host i serves pool i mod pools, has that pool's tenant and labels, and the key of its
tenant), and a real `fleet server` process that loads them (its start-up time is reported too). It then edits one
pool and times `fleet plan --summary` as a subprocess (best of 3), next to the time to merely parse the same YAML
in the same run (ruamel round-trip: `fleet.schema.loading.load_text`, the loader fleet uses), and prints the
ratio and the growth factors 1k -> 10k -> 100k. The plan must observe every host (a plan that fell back to
"hosts were not observed" fails the bench); the time to read them alone over the paged host API
(`fleet.v1.api.hosts.page` through fleet.hosts.client.host_pages, in-process) is printed as a breakdown.

Seeding (bench/benchkit/seed.py) writes the host records with `publish_async` in a bounded window (acks with a
deadline), retries what was not acknowledged, then reads the bucket back and checks that every record landed
before the server is started: a seeding failure is reported as such, never as a slow or wrong plan.

It also times `fleet apply --auto-approve` of 10,000 creates (5,000 pools, 2,500 projects, 2,500 routes) on an
empty store: end to end, and the write time the CLI prints ("Apply complete! … in X.XXs."), next to the time
to parse that YAML alone.

    python bench/plan.py                      # 1k, 10k, 100k hosts; apply of 10,000 changes (about a minute)
    python bench/plan.py --quick              # 1k, 10k hosts, best of 2; apply of 2,000 changes (under a minute)
    python bench/plan.py --sizes 1000,100000  # these host counts only (best of 3; with --quick, best of 2)
    python bench/plan.py --json               # one JSON object

Called by `make bench` (with --quick); the figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchkit.seed import seed_bucket  # noqa: E402

from fleet.bus import subjects  # noqa: E402
from fleet.bus.connection import connect  # noqa: E402
from fleet.bus.embedded import EmbeddedNats, free_port  # noqa: E402
from fleet.bus.messages import HostRecord  # noqa: E402
from fleet.hosts.client import call  # noqa: E402
from fleet.reconciler.operation import observe_hosts  # noqa: E402
from fleet.schema.generate import synthetic_fleet  # noqa: E402
from fleet.schema.loading import load_text  # noqa: E402

HOSTS_PER_POOL = 100
TENANTS = 2
NOT_OBSERVED = "hosts were not observed"
# one random secret per synthetic key (synthetic_fleet's key_env prefix): fleet refuses weak or shared key secrets
KEY_SECRETS = {f"FLEET_KEY_BENCH_{i:06d}": secrets.token_hex(32) for i in range(1000)}


def sizes(hosts: int) -> dict[str, int]:
    return {"hosts": hosts, "pools": max(1, hosts // HOSTS_PER_POOL), "projects": max(1, hosts // 200),
            "keys": max(1, hosts // 1000)}


def fleet_cmd(args: list[str], url: str, cwd: Path, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "FLEET_NATS_URL": url, "NO_COLOR": "1", "CI": "true", **KEY_SECRETS}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        raise SystemExit(f"fleet {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


def host_key(pool: int, keys: int) -> str:
    """The key host records of `pool` enrolled with: a key of the pool's tenant (synthetic_fleet puts key k on pool k,
    tenant k % 2). With a single key, tenant-001 has none, so its hosts name a key that was retired since (not in
    the applied config: no consequence, as for a real fleet whose old keys were deleted)."""
    k = pool % keys
    if k % TENANTS != pool % TENANTS:
        k = (k + 1) % keys
    return f"key-{k:06d}" if k % TENANTS == pool % TENANTS else "key-retired"


def host_record(i: int, pools: int, keys: int) -> HostRecord:
    """Host i as an enrollment writes it: pool i mod pools, that pool's tenant and labels, a key of its tenant; no
    session count asked for (its pool decides, as for an agent started without --max-sessions)."""
    pool = i % pools
    return HostRecord(machine_id=str(uuid.UUID(int=i + 1, version=4)), tenant=f"tenant-{pool % TENANTS:03d}",
                      key_id=host_key(pool, keys), hostname=f"host-{i:06d}", pools=[f"pool-{pool:06d}"],
                      labels=[f"region=r{pool % 3}"], models=["claude-3-5-sonnet"], credential_sha256="0" * 64,
                      enrolled_at="2026-11-29T00:00:00Z")


async def seed_hosts(url: str, n: int, pools: int, keys: int) -> dict[str, Any]:
    """Write n host records into the registry bucket (as enrollment would) and check that every one landed."""
    records = {rec.machine_id: rec.encode() for rec in (host_record(i, pools, keys) for i in range(n))}
    seeded = await seed_bucket(url, subjects.BUCKET_HOSTS, records)
    return {"seed_hosts_s": seeded["seed_s"], "seed_retried": seeded["seed_retried"]}


def start_server(url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FLEET_NATS_URL": url}
    return subprocess.Popen([sys.executable, "-m", "fleet.cli.main", "server"], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


async def wait_ready(url: str, n: int, server: subprocess.Popen, timeout: float = 300) -> None:
    """Until the server's ping says it has loaded all n host records (it answers only once they are loaded)."""
    deadline = time.monotonic() + timeout
    async with await connect(url, connect_timeout=5) as bus:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"fleet server exited ({server.returncode})")
            try:
                info = await call(bus, subjects.API_PING, timeout=2)
                if (info or {}).get("hosts", 0) >= n:
                    return
            except Exception:  # not up yet
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("fleet server did not become ready")


async def observe_time(url: str, n: int, repeat: int) -> float:
    """Best time to read every host over the paged API as fleet.hosts.model.Host, as the plan does (in-process)."""
    best = float("inf")
    async with await connect(url, connect_timeout=5) as bus:
        for _ in range(repeat):
            start = time.perf_counter()
            hosts, warning = await observe_hosts(bus, required=True)
            best = min(best, time.perf_counter() - start)
            assert warning is None and len(hosts) == n, (warning, len(hosts))
    return best


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
        text = synthetic_fleet(pools=s["pools"], projects=s["projects"], keys=s["keys"], tenants=TENANTS,
                               key_env="FLEET_KEY_BENCH")
        cfg = work / f"fleet-{hosts}.yaml"
        cfg.write_text(text)
        apply_s, _ = fleet_cmd(["apply", "--auto-approve", "--summary", "-f", str(cfg)], url, work)
        seeded = asyncio.run(seed_hosts(url, hosts, s["pools"], s["keys"]))
        started = time.perf_counter()
        server = start_server(url, work / f"server-{hosts}.log")
        asyncio.run(wait_ready(url, hosts, server))
        ready_s = time.perf_counter() - started
        edited = text.replace("max_concurrent_sessions: 4", "max_concurrent_sessions: 6", 1)
        cfg.write_text(edited)
        plans = []
        for _ in range(repeat):
            elapsed, proc = fleet_cmd(["plan", "--summary", "-f", str(cfg)], url, work)
            out = proc.stdout + proc.stderr
            assert NOT_OBSERVED not in out, out[-2000:]
            assert "Plan: 0 to add, 1 to change, 0 to destroy." in proc.stdout, proc.stdout[-500:]
            plans.append(elapsed)
        observe_s = asyncio.run(observe_time(url, hosts, repeat))
        parse_s = parse_time(edited)
        plan_s = min(plans)
        return {**s, "yaml_bytes": len(edited), "parse_s": round(parse_s, 4), "plan_s": round(plan_s, 4),
                "ratio": round(plan_s / parse_s, 2), "plan_runs_s": [round(p, 3) for p in plans],
                "observe_hosts_s": round(observe_s, 4), "server_ready_s": round(ready_s, 2),
                "apply_initial_s": round(apply_s, 3), **seeded}
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
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
        return {"apply_changes": n, "apply_yaml_bytes": len(text), "apply_end_to_end_s": round(elapsed, 3),
                "apply_write_s": round(write_s, 3), "apply_parse_s": round(parse_time(text, 1), 3)}
    finally:
        nats.stop()


def host_counts(text: str) -> list[int]:
    """`--sizes 1000,10000,100000` (underscores allowed): positive host counts, in the order given."""
    try:
        counts = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of host counts: {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"host counts must be positive integers: {text!r}")
    return counts


def verdicts(results: dict) -> dict[str, bool]:
    """The issue's targets: Must 10k <= 2 s and linear growth; goals 10k <= 1 s, 100k <= 10 s, apply 10k <= 2 s."""
    by = {r["hosts"]: r for r in results["sizes"]}
    out: dict[str, bool] = {}
    if 10_000 in by:
        out["must_10k_le_2s"] = by[10_000]["plan_s"] <= 2.0
        out["goal_10k_le_1s"] = by[10_000]["plan_s"] <= 1.0
    growth = [results[k] for k in ("growth_1k_to_10k", "growth_10k_to_100k") if k in results]
    if growth:
        out["must_linear_growth"] = all(g <= 10.0 * 1.15 for g in growth)  # x10 hosts -> at most ~x10 time
    if 100_000 in by:
        out["goal_100k_le_10s"] = by[100_000]["plan_s"] <= 10.0
    if results.get("apply_changes", 0) >= 10_000:
        out["goal_apply_10k_le_2s_end_to_end"] = results["apply_end_to_end_s"] <= 2.0
        out["goal_apply_10k_le_2s_writing"] = results["apply_write_s"] <= 2.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k and 10k hosts only, best of 2; apply of 2,000 changes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--sizes", type=host_counts, metavar="N,N,…",
                    help="host counts to run (default 1000,10000,100000; with --quick 1000,10000)")
    ap.add_argument("--no-apply", action="store_true", help="skip the `fleet apply` of many changes")
    args = ap.parse_args()
    host_sizes = args.sizes or ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    results: dict = {"sizes": [], "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
                     "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-plan-") as tmp:
        work = Path(tmp)
        for n in host_sizes:
            r = run_size(n, work, repeat=2 if args.quick else 3)
            results["sizes"].append(r)
            print(f"{n:>7} hosts: plan {r['plan_s']:.3f}s, parse {r['parse_s']:.3f}s (x{r['ratio']})", file=sys.stderr)
        if not args.no_apply:
            results.update(bench_apply(2_000 if args.quick else 10_000, work))
    by = {r["hosts"]: r for r in results["sizes"]}
    for a, b, name in ((1_000, 10_000, "1k_to_10k"), (10_000, 100_000, "10k_to_100k")):
        if a in by and b in by:
            results[f"growth_{name}"] = round(by[b]["plan_s"] / by[a]["plan_s"], 2)
            # the cost of one more host: constant when the plan is linear in hosts (fixed costs aside)
            results[f"marginal_us_per_host_{name}"] = round((by[b]["plan_s"] - by[a]["plan_s"]) / (b - a) * 1e6, 1)
    results["targets"] = verdicts(results)
    if args.json:
        print(json.dumps(results))
        return
    print(f"\nfleet plan --summary, end to end (CLI start included), best of {2 if args.quick else 3} — {results['date']}")
    print(f"{'hosts':>8} {'pools':>6} {'projects':>8} {'keys':>5} {'yaml':>9} {'parse YAML':>11} {'fleet plan':>11} "
          f"{'ratio':>6} {'observe':>8} {'server ready':>13} {'seed (retried)':>15}")
    for r in results["sizes"]:
        print(f"{r['hosts']:>8} {r['pools']:>6} {r['projects']:>8} {r['keys']:>5} {r['yaml_bytes']:>8}B "
              f"{r['parse_s']:>10.3f}s {r['plan_s']:>10.3f}s {r['ratio']:>6} {r['observe_hosts_s']:>7.3f}s "
              f"{r['server_ready_s']:>12.2f}s {r['seed_hosts_s']:>7.2f}s ({r['seed_retried']})")
    for name in ("1k_to_10k", "10k_to_100k"):
        if f"growth_{name}" in results:
            print(f"growth {name.replace('_', ' ')}: x{results[f'growth_{name}']} (x10 hosts; linear would be at most "
                  f"x10), {results[f'marginal_us_per_host_{name}']} µs per extra host")
    if "apply_changes" in results:
        print(f"\nfleet apply of {results['apply_changes']} changes: {results['apply_end_to_end_s']:.2f}s end to end "
              f"({results['apply_write_s']:.2f}s writing, {results['apply_parse_s']:.2f}s to parse its "
              f"{results['apply_yaml_bytes']:,}-byte YAML alone)")
    if results["targets"]:
        print("\ntargets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in results["targets"].items()))


if __name__ == "__main__":
    main()
