"""Host control: `fleet hosts pause|resume|drain|revoke` (remote) and `fleet agent pause|resume|drain` (local
socket) change the status everywhere it is shown: `fleet list`, `fleet list --json`, `fleet show [--json]`.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _everywhere(fleet, name: str, status: str) -> None:
    wait_for(lambda: fleet.by_name()[name]["status"] == status, 5, what=f"{name} {status} in list --json")
    mid = fleet.machine_id(name)
    table = run_cli("list", "--nats", fleet.url).output
    row = next(line for line in table.splitlines() if mid in line)
    assert row.split()[2] == status
    shown = json.loads(run_cli("show", mid, "--json", "--nats", fleet.url).output)
    assert shown["status"] == status
    text = run_cli("show", mid[:8], "--nats", fleet.url).output
    assert f"Status:            {status}" in text


def test_remote_and_local_control(live_fleet) -> None:
    key = live_fleet.key("ctl")
    agent = live_fleet.agent("ctl1", "--max-sessions", "2", key=key)
    live_fleet.wait_status("ctl1", "active", 30)
    mid = live_fleet.machine_id("ctl1")
    state = str(live_fleet.agent_dir("ctl1"))

    result = run_cli("hosts", "pause", mid[:6], "--nats", live_fleet.url)
    assert result.exit_code == 0 and "is now paused" in result.output
    _everywhere(live_fleet, "ctl1", "paused")

    assert run_cli("agent", "resume", "--state-dir", state).exit_code == 0
    _everywhere(live_fleet, "ctl1", "active")

    result = run_cli("hosts", "drain", mid, "--nats", live_fleet.url)
    assert result.exit_code == 0 and "is now draining (drained: no running sessions)" in result.output
    _everywhere(live_fleet, "ctl1", "draining")
    assert live_fleet.by_name()["ctl1"]["drained"] is True  # no running sessions
    local = json.loads(run_cli("agent", "status", "--json", "--state-dir", state).output)
    assert (local["status"], local["drained"]) == ("draining", True)  # one wording: the agent says what list says
    assert "is now draining (drained: no running sessions)" in run_cli("agent", "drain", "--state-dir", state).output

    assert run_cli("agent", "pause", "--state-dir", state).exit_code == 0
    _everywhere(live_fleet, "ctl1", "paused")

    alias = run_cli("machine", "list", "--nats", live_fleet.url)
    assert alias.exit_code == 0 and mid in alias.output and "deprecated" in alias.output

    result = run_cli("hosts", "revoke", mid, "--nats", live_fleet.url)
    assert result.exit_code == 0 and "revoked" in result.output
    assert agent.popen.wait(10) == 3  # the agent learns it was revoked and stops
    _everywhere(live_fleet, "ctl1", "revoked")

    again = live_fleet.agent("ctl1")
    assert again.popen.wait(30) == 3 and "revoked" in again.output()
    assert run_cli("hosts", "pause", mid, "--nats", live_fleet.url).exit_code == 1


def test_unknown_malformed_and_offline_ids(live_fleet) -> None:
    for ident, words in [("0000", "no host"), ("not-an-id!", "malformed"), ("zz", "malformed")]:
        result = run_cli("show", ident, "--nats", live_fleet.url)
        assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output
