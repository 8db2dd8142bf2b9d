"""Benchmark: how long the `fleet` CLI takes to start, next to a bare Python interpreter measured in the same run.

Every command runs as a subprocess, as a user runs it (the `fleet` console script of this interpreter's
environment); the figure is the median wall time of N runs, and the ratio is that median over the median of
`python -c pass` (the same interpreter, same site-packages), so it survives a noisy shared machine:

- `fleet --help`: imports click and the root group only (commands are loaded lazily: fleet.cli.main.COMMANDS);
- `fleet validate -f fleet.yaml.example`: loads, validates and cross-checks the example (ruamel, jsonschema,
  pydantic, networkx, the backend plugins);
- `fleet list`: against a real nats-server and `fleet server` that this bench starts (JetStream, free port on
  127.0.0.1, temp dir; an empty registry), so it measures start-up, a connection and one host page.

Runs are interleaved (one of each command, N times over) so that a slow moment of the machine hits all of them
alike. Then each fleet command runs once more under `python -X importtime`: how many modules it imports, their
total import time, and the heaviest top-level imports (what to look at when start-up grows).

    python bench/startup.py            # 21 runs of each
    python bench/startup.py --quick    # 7 runs of each (a few seconds)
    python bench/startup.py --json     # one JSON object

Called by `make bench` (with --quick); the figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from fleet.bus.embedded import EmbeddedNats, free_port, terminate_child  # noqa: E402
from fleet.errors import FleetError  # noqa: E402
from fleet.hosts.client import ControlPlaneClient  # noqa: E402

GOAL_HELP_RATIO = 4.0  # `fleet --help` within 4x a bare interpreter


def fleet_argv() -> list[str]:
    """The `fleet` console script next to this interpreter (as installed by `make venv`), run by this interpreter."""
    script = Path(sys.executable).parent / "fleet"
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "fleet.cli.main"]


def commands(url: str) -> dict[str, list[str]]:
    fleet = fleet_argv()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "fleet --help": [*fleet, "--help"],
        "fleet validate -f fleet.yaml.example": [*fleet, "validate", "-f", str(ROOT / "fleet.yaml.example")],
        "fleet list": [*fleet, "list", "--nats", url],
    }


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def import_profile(argv: list[str], env: dict[str, str], skip: frozenset[str] = frozenset(), top: int = 5) -> dict:
    """What `argv` imports, from `python -X importtime`: the number of modules, their total import time, and the
    heaviest packages it pulls in (cumulative ms, as importtime reports it) that fleet imports directly: a package
    first imported by another package (referencing by jsonschema) is part of that one's figure, not listed again.
    `skip`: modules the bare interpreter imports anyway."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    entries = []  # (depth, name, cumulative µs), children before their parent as importtime prints them
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            entries.append(((len(name) - len(name.lstrip()) - 1) // 2, name.strip(), int(cumulative)))
    packages: dict[str, int] = {}
    stack: list[tuple[int, str]] = []  # the ancestors of the current entry (walking backwards)
    for depth, name, cumulative in reversed(entries):
        while stack and stack[-1][0] >= depth:
            stack.pop()
        by_fleet = all(parent.split(".")[0] in ("fleet", *skip) for _, parent in stack)
        if "." not in name and name != "fleet" and name not in skip and by_fleet:
            packages[name] = cumulative
        stack.append((depth, name))
    heaviest = sorted(packages.items(), key=lambda r: -r[1])[:top]
    return {"modules": len(entries), "import_ms": round(sum(us for d, _, us in entries if d == 0) / 1000, 1),
            "heaviest_ms": {name: round(us / 1000, 1) for name, us in heaviest}, "names": {e[1] for e in entries}}


def start_control_plane(work: Path) -> tuple[EmbeddedNats, subprocess.Popen, str]:
    nats = EmbeddedNats(store_dir=work / "nats", port=free_port())
    nats.start()
    server = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", "server", "--nats", nats.url],
                              stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("wb"), cwd=ROOT)
    deadline = time.monotonic() + 30

    async def ping() -> None:
        async with ControlPlaneClient(nats.url, connect_timeout=2) as api:
            await api.ping(timeout=1, attempts=1)

    while True:
        try:
            asyncio.run(ping())
            return nats, server, nats.url
        except FleetError:
            if time.monotonic() > deadline or server.poll() is not None:
                terminate_child(server)
                nats.stop()
                raise SystemExit(f"fleet server did not start; see {work / 'server.log'}") from None
            time.sleep(0.1)


def run(runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-startup-") as tmp:
        nats, server, url = start_control_plane(Path(tmp))
        try:
            env = {**os.environ, "NO_COLOR": "1", "FLEET_NATS_URL": url}
            cmds = commands(url)
            for argv in cmds.values():  # warm the page cache and the bytecode cache first
                run_once(argv, env)
            times: dict[str, list[float]] = {name: [] for name in cmds}
            for _ in range(runs):
                for name, argv in cmds.items():
                    times[name].append(run_once(argv, env))
            bare = import_profile(cmds["python -c pass"], env)
            imports = {name: import_profile(argv, env, frozenset(bare["names"])) for name, argv in cmds.items()}
            for profile in imports.values():
                del profile["names"]
        finally:
            terminate_child(server)
            nats.stop()
    base = statistics.median(times["python -c pass"])
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": round(med, 4), "min_s": round(min(ts), 4), "ratio": round(med / base, 2),
                      **imports.get(name, {})}
    return {"date": time.strftime("%Y-%m-%d"), "runs": runs, "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "list_against": "a live nats-server + fleet server started by the bench (0 hosts)",
            "commands": rows, "python_s": round(base, 4),
            "help_ratio": rows["fleet --help"]["ratio"],
            "validate_ratio": rows["fleet validate -f fleet.yaml.example"]["ratio"],
            "list_ratio": rows["fleet list"]["ratio"],
            "goal_help_ratio": GOAL_HELP_RATIO,
            "goal_help_met": rows["fleet --help"]["ratio"] <= GOAL_HELP_RATIO}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="7 runs of each command instead of 21")
    ap.add_argument("--runs", type=int, help="runs of each command (overrides --quick)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    result = run(args.runs or (7 if args.quick else 21))
    if args.json:
        print(json.dumps(result))
        return
    print(f"CLI start-up, median of {result['runs']} runs as subprocesses — {result['date']}, Python {result['python']}")
    print(f"(`fleet list` against {result['list_against']})\n")
    width = max(len(name) for name in result["commands"])
    print(f"{'command':<{width}}  {'median':>8}  {'min':>8}  {'x python':>8}  {'modules':>7}  {'imports':>8}  heaviest imports")
    for name, r in result["commands"].items():
        heavy = ", ".join(f"{mod} {ms:g} ms" for mod, ms in r.get("heaviest_ms", {}).items())
        modules = r.get("modules", "")
        imports = f"{r['import_ms']:.0f} ms" if "import_ms" in r else ""
        print(f"{name:<{width}}  {r['median_s'] * 1000:>6.1f}ms  {r['min_s'] * 1000:>6.1f}ms  {r['ratio']:>8.2f}  "
              f"{modules:>7}  {imports:>8}  {heavy}")
    verdict = "met" if result["goal_help_met"] else "MISSED"
    print(f"\ngoal: fleet --help <= {GOAL_HELP_RATIO:g}x python -c pass: {result['help_ratio']}x, {verdict}")


if __name__ == "__main__":
    main()
