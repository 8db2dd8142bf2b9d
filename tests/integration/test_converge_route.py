"""Apply against a live fleet: agents converge on applied pools and declared host states; `fleet route test`.

Real nats-server, real `fleet server`, real agent processes enrolled with a key that `fleet apply` created from
an environment variable. Covers: apply waits for convergence (capacity and labels follow the pool), a host paused
from fleet.yaml, plan consequences for it, and `fleet route test` in the seed's format (AVAILABLE, and an
elastic fallback without a host that WAITS FOR BACKEND, `--explain` with every reason per host).
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import pytest

from fleet.agents.control import request as agent_request
from fleet.agents.state import AgentPaths
from fleet.errors import FleetError
from tests.conftest import wait_for

from .clihelpers import EXAMPLE, SECRETS, fleet

pytestmark = pytest.mark.integration


def explain_rows(stdout: str) -> dict[str, tuple[str, str, str]]:
    """The rows of `route test --explain`'s Hosts: table by hostname: (machine ID prefix, pool, verdict). Read by
    column, not by searching the text: a hostname such as "a1" can also appear in a hex machine ID."""
    rows = {}
    for line in stdout.split("Hosts:\n", 1)[1].splitlines():
        mid, hostname, pool, verdict = line.split(None, 3)
        rows[hostname] = (mid, pool, verdict)
    return rows


def test_apply_converges_and_route_test(live_fleet, tmp_path: Path):
    url = live_fleet.url
    path = tmp_path / "fleet.yaml"
    path.write_text(EXAMPLE.read_text())
    r = fleet(["apply", "--auto-approve"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    key = SECRETS["FLEET_KEY_LOCAL_DEV"]
    live_fleet.agent("a1", "--pool", "pool-local-main", key=key)
    live_fleet.agent("a2", "--pool", "pool-local-main", key=key)
    live_fleet.wait_status("a1", "active", 20)
    live_fleet.wait_status("a2", "active", 20)
    hosts = live_fleet.by_name()
    assert hosts["a1"]["sessions"]["max"] == 4  # the applied pool's capacity
    assert hosts["a1"]["tenant"] == "fin-prod"

    r = fleet(["route", "test", "my-fintech-app"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "Simulating dispatch for project: my-fintech-app\n"
        "  Preferred pool:  pool-local-main  [0/8 slots used]  → AVAILABLE\n"
        "  Decision:        route to pool-local-main\n"
        "  Fallback:        pool-cloud-e2b (not needed)\n"
        "  Queue:           empty\n"
    )

    # capacity and labels change in the file; apply waits until both agents run them
    text = path.read_text()
    text = text.replace("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6")
    text = text.replace("labels: [region=eu-west, tier=dev]\n    models: [claude-3-5-sonnet, claude-3-5-haiku]\n    cost",
                        "labels: [region=eu-west, tier=dev, ssd]\n    models: [claude-3-5-sonnet, claude-3-5-haiku]\n    cost")
    path.write_text(text)
    r = fleet(["apply", "--auto-approve", "--wait-timeout", "30"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Converged: every live host runs the applied state" in r.stderr
    for name in ("a1", "a2"):
        h = live_fleet.by_name()[name]
        assert h["sessions"]["max"] == 6 and h["capacity"]["max_concurrent_sessions"] == 6
        assert "ssd" in h["labels"]

    # pause a1 from the file: the plan says what it does to dispatch, apply makes it so
    a1 = live_fleet.machine_id("a1")
    path.write_text(path.read_text() + f"\nhosts:\n  - id: {a1}\n    status: paused\n    note: kernel upgrade\n")
    r = fleet(["plan", "--format", "json"], url, cwd=tmp_path)
    plan = json.loads(r.stdout)
    assert [(c["address"], c["action"]) for c in plan["changes"]] == [(f"host.{a1}", "create")]
    assert any(i["kind"] == "host-status" and "kernel upgrade" in i["message"] for i in plan["consequences"]["items"])
    cap = {c["project"]: (c["before"], c["after"]) for c in plan["consequences"]["capacity"]}
    assert cap["ledger-batch"] == (0, 0)  # its hybrid k8s pool has no host: what a backend might add is not slots
    r = fleet(["apply", "--auto-approve", "--wait-timeout", "30"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert live_fleet.by_name()["a1"]["status"] == "paused"
    assert fleet(["plan", "--detailed-exitcode"], url, cwd=tmp_path).returncode == 0

    r = fleet(["route", "test", "my-fintech-app", "--explain"], url, cwd=tmp_path)
    assert "pool-local-main  [0/6 slots used]  → AVAILABLE" in r.stdout
    rows = explain_rows(r.stdout)
    assert sorted(rows) == ["a1", "a2"], r.stdout
    assert rows["a1"][0] == a1[:8] and "status paused" in rows["a1"][2], rows["a1"]
    assert rows["a2"][0] == live_fleet.machine_id("a2")[:8] and rows["a2"][2] == "eligible in pool-local-main", rows["a2"]

    # both paused: the preferred pool has no active host, the e2b fallback has no host at all: the session would
    # wait for e2b's backend (capacity a backend might create is not a slot)
    a2 = live_fleet.machine_id("a2")
    path.write_text(path.read_text() + f"  - id: {a2}\n    status: paused\n")
    assert fleet(["apply", "--auto-approve", "--wait-timeout", "30"], url, cwd=tmp_path).returncode == 0
    r = fleet(["route", "test", "my-fintech-app"], url, cwd=tmp_path)
    assert r.stdout == (
        "Simulating dispatch for project: my-fintech-app\n"
        "  Preferred pool:  pool-local-main  [0/0 slots used]                    → NO ACTIVE HOST\n"
        "  Fallback pool:   pool-cloud-e2b   [0/0 slots, elastic no host limit]  → WAITS FOR BACKEND\n"
        "  Decision:        queue (pending): preferred pool pool-local-main: no active host (2 paused), fallback pool "
        "pool-cloud-e2b has no host yet: waits for its backend (on demand, no host limit)\n"
        "  Would change:    the backend of pool-cloud-e2b adds a host (the capacity controller acts on this demand)\n"
        "  Queue:           empty\n"
    )
    # the control plane refuses to resume a host that fleet.yaml declares paused (it would be paused again)
    r = fleet(["hosts", "resume", a2], url, cwd=tmp_path)
    assert r.returncode == 1 and "is declared paused in fleet.yaml" in r.stderr, r.stdout + r.stderr
    # a drift: someone resumes a2 by hand, on its machine (its local control socket), again and again; the
    # declared-status controller (fleet.hosts.declared) pauses it again each time within about 0.5 s, so both plans
    # must run while a2 is resumed: plan until both saw the drift
    assert live_fleet.procs  # agents still run
    stop = threading.Event()

    def resume_by_hand() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, FleetError):
                agent_request(AgentPaths.of(live_fleet.agent_dir("a2")).control_socket, {"cmd": "resume"})
            stop.wait(0.05)

    def drift_seen() -> tuple[dict, str] | None:
        plan = json.loads(fleet(["plan", "--format", "json"], url, cwd=tmp_path).stdout)
        if not any(d["address"] == f"host.{a2}" for d in plan["drift"]):
            return None
        refresh = fleet(["plan", "--refresh-only", "--detailed-exitcode"], url, cwd=tmp_path)
        assert refresh.returncode == 2, refresh.stdout + refresh.stderr  # the pools without hosts drift anyway
        return (plan, refresh.stdout) if "the applied state says paused" in refresh.stdout else None

    hand = threading.Thread(target=resume_by_hand, daemon=True)
    hand.start()
    try:
        plan, refresh_only = wait_for(drift_seen, 60, 0.1, "the hand-made drift in both plans")
    finally:
        stop.set()
        hand.join(5)
    assert plan["no_op"] is True
    assert any(d["address"] == f"host.{a2}" and "the applied state says paused" in d["message"] for d in plan["drift"])
    assert "the applied state says paused" in refresh_only
