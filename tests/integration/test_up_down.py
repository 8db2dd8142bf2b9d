"""`fleet up` / `fleet down`: the embedded fleet in the background, idempotent, stale PID files handled,
agents started under the state dir stopped by `fleet down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.bus.embedded import free_port, pid_alive, read_pid
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _fleet(state: Path, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update({"FLEET_STATE_DIR": str(state), "FLEET_NATS_URL": url})
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=state.parent)


def test_up_twice_down_twice_and_stale_pid_files(tmp_path: Path) -> None:
    state = tmp_path / ".fleet"
    url = f"nats://127.0.0.1:{free_port()}"
    try:
        first = _fleet(state, url, "up")
        assert first.returncode == 0, first.stderr
        assert "started nats-server" in first.stdout and "started fleet server" in first.stdout
        nats_pid = read_pid(state / "nats-server.pid", "nats-server")
        server_pid = read_pid(state / "server.pid", "server")
        assert nats_pid and server_pid
        assert (state / "server.log").exists() and (state / "nats-server.log").exists()

        second = _fleet(state, url, "up")
        assert second.returncode == 0 and "already running" in second.stdout
        assert read_pid(state / "nats-server.pid") == nats_pid

        listed = _fleet(state, url, "list", "--json")
        assert listed.returncode == 0 and json.loads(listed.stdout) == []

        # an agent started under the state dir (as examples/demo.sh does) is stopped by `fleet down`
        secret = "s-updown"
        assert _fleet(state, url, "keys", "create", "k", "--tenant", "t", "--pool", "p", "--secret", secret).returncode == 0
        agent_dir = state / "agents" / "w1"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        agent = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", "agent", "run", "--nats", url,
                                  "--state-dir", str(agent_dir), "--enroll-key", secret, "--hostname", "w1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(lambda: (hs := json.loads(_fleet(state, url, "list", "--json").stdout)) and
                 hs[0]["status"] == "active", 30, 0.3, "agent active")

        down = _fleet(state, url, "down")
        assert down.returncode == 0
        assert "stopped agent w1" in down.stdout and "stopped fleet server" in down.stdout
        assert "stopped nats-server" in down.stdout
        assert agent.wait(10) == 0
        assert not pid_alive(nats_pid) and not pid_alive(server_pid)
        again = _fleet(state, url, "down")
        assert again.returncode == 0 and "nothing to stop" in again.stdout

        # stale PID files after a crash: a PID that is gone, and a PID reused by an unrelated process
        (state / "nats-server.pid").write_text(f"{os.getpid()}\n")
        (state / "server.pid").write_text("999999\n")
        third = _fleet(state, url, "up")
        assert third.returncode == 0, third.stderr
        assert "started nats-server" in third.stdout and "started fleet server" in third.stdout
        assert read_pid(state / "nats-server.pid", "nats-server") not in (None, os.getpid())
        # the data survived the restart: the host enrolled before is still registered
        assert json.loads(_fleet(state, url, "list", "--json").stdout)[0]["hostname"] == "w1"
    finally:
        _fleet(state, url, "down")


def test_up_refuses_remote_url(tmp_path: Path) -> None:
    result = _fleet(tmp_path / ".fleet", "nats://10.1.2.3:4222", "up")
    assert result.returncode == 2 and "embedded NATS on this machine only" in result.stderr
