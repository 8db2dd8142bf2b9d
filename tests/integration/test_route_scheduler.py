"""`fleet route test` and the dispatcher agree, on the example fleet with only local hosts (real nats-server, real
`fleet server`, a real agent): the Kubernetes, Docker and e2b pools have no host, so route test says they wait for
their backend (the dry-run no longer counts slots that a backend might create), a session goes where route test
said, and a session that waits says why (`fleet submit`, `fleet sessions show`, route test's unplaced demand).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import wait_for

from .clihelpers import EXAMPLE, SECRETS, fleet

pytestmark = pytest.mark.integration


def route_test(project: str, url: str, cwd: Path, *args: str) -> dict:
    r = fleet(["route", "test", project, "--format", "json", *args], url, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def submit(project: str, url: str, cwd: Path, *command: str) -> tuple[dict, str]:
    r = fleet(["submit", "--project", project, "--json", "--", *command], url, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_route_test_says_where_a_session_goes_and_why_one_waits(live_fleet, tmp_path: Path):
    url = live_fleet.url
    (tmp_path / "fleet.yaml").write_text(EXAMPLE.read_text())
    r = fleet(["apply", "--auto-approve"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    live_fleet.agent("w1", "--pool", "pool-local-main", key=SECRETS["FLEET_KEY_LOCAL_DEV"])
    w1 = live_fleet.wait_status("w1", "active", 30)["id"]

    # the hybrid Kubernetes pool has no host: it waits for its backend, it has no slot
    r = fleet(["route", "test", "ledger-batch"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "  Preferred pool:  pool-k8s-batch  [0/0 slots, elastic up to 20 hosts]  → WAITS FOR BACKEND\n" in r.stdout
    assert "  Decision:        queue (pending): preferred pool pool-k8s-batch has no host yet: waits for its backend " \
           "(hybrid, up to 20 hosts), no fallback\n" in r.stdout
    assert "  Would change:    the backend of pool-k8s-batch adds a host" in r.stdout
    # and the Docker pool of the other tenant (adaptive, with an on_demand Kubernetes candidate) has no slot either
    clinical = route_test("clinical-notes", url, tmp_path)
    assert clinical["decision"]["pool"] is None
    assert {p["id"]: p["state"] for p in clinical["pools"]} == {"pool-docker-gpu": "NO HOST",
                                                               "pool-health-k8s": "WAITS FOR BACKEND"}
    assert clinical["decision"]["reason"]["kind"] == "waits_for_backend"

    # my-fintech-app: the local pool has room; the session goes to the host route test named
    decided = route_test("my-fintech-app", url, tmp_path)
    assert decided["decision"] == {"pool": "pool-local-main", "role": "preferred", "host": w1, "reason": None,
                                   "would_change": None}
    assert decided["pools"][0]["used"] == 0 and decided["pools"][0]["total"] == 4
    # a model no host serves: the scheduler's reason, at once (not a count of sessions queued before it)
    r = fleet(["submit", "--project", "my-fintech-app", "--model", "gpt-4", "--", "true"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("queued: preferred pool pool-local-main: no host serves model gpt-4, fallback pool "
                        "pool-cloud-e2b: no host serves model gpt-4 (nor would one its backend adds)\n")
    unserved = json.loads(fleet(["sessions", "show", r.stdout.strip(), "--json"], url, cwd=tmp_path).stdout)
    assert (unserved["wait_kind"], unserved["wait_pool"]) == ("model_unserved", "pool-local-main")
    assert fleet(["sessions", "cancel", unserved["id"]], url, cwd=tmp_path).returncode == 0
    running = []
    for _ in range(4):
        s, err = submit("my-fintech-app", url, tmp_path, "sleep", "60")
        assert (s["phase"], s["pool"], s["host"]) == ("assigned", "pool-local-main", w1), (s, err)
        running.append(s["id"])

    # now full: route test says the next one would wait for e2b's backend, and it does
    full = route_test("my-fintech-app", url, tmp_path, "--explain")
    assert [(p["id"], p["state"], p["used"], p["total"]) for p in full["pools"]] == [
        ("pool-local-main", "FULL", 4, 4), ("pool-cloud-e2b", "WAITS FOR BACKEND", 0, 0)]
    assert full["decision"]["pool"] is None
    assert (full["decision"]["reason"]["kind"], full["decision"]["reason"]["pool"]) == (
        "waits_for_backend", "pool-cloud-e2b")
    [row] = full["explain"]  # the host's own pools, apart from the pool its reasons are about (was: the route's)
    assert (row["id"], row["pools"], row["route_pool"], row["reasons"]) == (w1, ["pool-local-main"], "pool-local-main",
                                                                            ["full (4/4)"])
    r = fleet(["submit", "--project", "my-fintech-app", "--", "true"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"queued: {full['decision']['reason']['message']}\n"  # the scheduler's reason, not a count
    waiting = json.loads(fleet(["sessions", "show", r.stdout.strip(), "--json"], url, cwd=tmp_path).stdout)
    assert waiting["phase"] == "queued" and waiting["host"] is None
    assert waiting["reason"] == full["decision"]["reason"]["message"]
    assert (waiting["wait_kind"], waiting["wait_pool"]) == ("waits_for_backend", "pool-cloud-e2b")
    shown = fleet(["sessions", "show", waiting["id"]], url, cwd=tmp_path)
    assert "Waiting because" in shown.stdout and "waits for its backend" in shown.stdout
    assert "Waiting for" in shown.stdout and "pool pool-cloud-e2b (waits for backend)" in shown.stdout
    again = wait_for(lambda: (d := route_test("my-fintech-app", url, tmp_path))["queued"]["count"] == 1 and d, 10,
                     what="route test sees the queued session")
    assert again["unplaced"] == {"pool-cloud-e2b": {"sessions": 1, "by_reason": {"waits_for_backend": 1}}}
    text = fleet(["route", "test", "my-fintech-app"], url, cwd=tmp_path).stdout
    assert "  Unplaced:        pool-cloud-e2b   1 session(s) (1 waits for backend)\n" in text

    # a slot opens: the waiting session goes where route test now says (the local pool, w1)
    r = fleet(["sessions", "cancel", running[0]], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    done = wait_for(lambda: (s := json.loads(fleet(["sessions", "show", waiting["id"], "--json"], url,
                                                   cwd=tmp_path).stdout))["phase"] == "succeeded" and s, 30,
                    what="the waiting session ran")
    assert (done["pool"], done["host"]) == ("pool-local-main", w1)
    for sid in running[1:]:
        fleet(["sessions", "cancel", sid], url, cwd=tmp_path)
    assert "is not a phase transition" not in live_fleet.server.output()
