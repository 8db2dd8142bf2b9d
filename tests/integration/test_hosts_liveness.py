"""Liveness against real processes: SIGKILL -> offline within the grace; NATS restart -> back with the same IDs;
SIGTERM -> draining, goodbye, offline, exit 0; a restarted agent keeps its ID and uses no key use.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.conftest import FAST_GRACE, FAST_HEARTBEAT, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_sigkill_offline_then_nats_restart(live_fleet) -> None:
    key = live_fleet.key("k", max_uses=3)
    agents = {name: live_fleet.agent(name, key=key) for name in ("a", "b", "c")}
    wait_for(lambda: (hs := live_fleet.hosts()) and len(hs) == 3 and all(h["status"] == "active" for h in hs),
             30, 0.2, "3 active hosts")
    ids = {name: live_fleet.machine_id(name) for name in agents}

    agents["c"].popen.send_signal(signal.SIGKILL)
    wait_for(lambda: live_fleet.by_name()["c"]["status"] == "offline", 15, 0.05, "c offline")
    # The server measures the silence it acted on (its own clock, not this test's polling): at most the grace plus
    # the last heartbeat interval and one monitor tick (--monitor-interval 0.1 in the fixture).
    said = re.search(r"\(c\) offline: no heartbeat for ([0-9.]+)s", live_fleet.server.output())
    assert said, live_fleet.server.output()[-2000:]
    assert FAST_GRACE <= float(said.group(1)) <= FAST_GRACE + FAST_HEARTBEAT + 0.1 + 0.3
    assert {h: s["status"] for h, s in live_fleet.by_name().items()} == {"a": "active", "b": "active", "c": "offline"}

    live_fleet.nats.stop()
    time.sleep(3.0)  # an outage longer than the bounded first-connect retries: reconnecting must not give up
    live_fleet.nats.start()  # same port, same store dir
    wait_for(lambda: run_cli("list", "--json", "--nats", live_fleet.url).exit_code == 0, 20, 0.3, "server back")
    hosts = wait_for(lambda: (by := live_fleet.by_name()) and by["a"]["status"] == "active"
                     and by["b"]["status"] == "active" and by, 30, 0.3, "a, b active after NATS restart")
    assert {name: hosts[name]["id"] for name in ("a", "b")} == {"a": ids["a"], "b": ids["b"]}
    assert hosts["c"]["status"] == "offline" and len(hosts) == 3
    for name in ("a", "b"):
        assert live_fleet.machine_id(name) == ids[name]
        assert agents[name].popen.poll() is None
        wait_for(lambda n=name: "re-registered as " + ids[n] in agents[n].output(), 20, 0.2, f"{name} re-registered")


def test_sigterm_says_goodbye_and_restart_keeps_id(live_fleet) -> None:
    key = live_fleet.key("one", max_uses=1)
    agent = live_fleet.agent("solo", key=key)
    host = live_fleet.wait_status("solo", "active", 30)

    status = run_cli("agent", "status", "--json", "--state-dir", str(live_fleet.agent_dir("solo")))
    assert status.exit_code == 0 and '"status": "active"' in status.output
    # no agent-wide credential socket any more: each session gets its own (tests/integration/test_sandbox.py)
    assert host["credential_socket"] == "/run/fleet/session.sock"
    assert not (live_fleet.agent_dir("solo") / "cred.sock").exists()

    assert agent.stop(signal.SIGTERM) == 0
    live_fleet.wait_status("solo", "offline", FAST_GRACE)  # the goodbye, not the grace, marks it offline
    assert "said goodbye" in agent.output()

    again = live_fleet.agent("solo")  # no key: the saved identity re-registers (max_uses 1 already used)
    back = live_fleet.wait_status("solo", "active", 30)
    assert back["id"] == host["id"]
    assert len(live_fleet.hosts()) == 1
    logs = run_cli("agent", "logs", "--state-dir", str(live_fleet.agent_dir("solo")))
    assert logs.exit_code == 0 and host["id"] in logs.output
    assert again.stop(signal.SIGTERM) == 0
    assert FAST_HEARTBEAT < FAST_GRACE
