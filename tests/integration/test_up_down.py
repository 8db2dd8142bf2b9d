"""`fleet up` / `fleet down`: the embedded fleet in the background, idempotent, stale PID files handled,
agents started under the state dir stopped by `fleet down`; a port that `fleet up` did not take from this state
dir (another fleet, a foreign NATS, another program) refused at once with one line and nothing left behind; bad
options and unusable state dirs refused in one line. The CLI runs as a real subprocess throughout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.bus.embedded import free_port, pid_alive, read_pid
from fleet.bus.trustdir import TrustDir
from fleet.errors import EXIT_USAGE
from tests.conftest import fleet_yaml, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _fleet(state: Path, url: str, *args: str, timeout: float = 60, cwd: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update({"FLEET_STATE_DIR": str(state), "FLEET_NATS_URL": url, **extra})
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or state.parent)


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
        secret = "5d9c1e7a3b8f2d6c4e0a9b7d5f3c1e8a"  # 128 random bits
        (tmp_path / "fleet.yaml").write_text(fleet_yaml([{"id": "k", "tenant": "fin-prod", "pools": ["pool-local-main"],
                                                          "secret": {"from_env": "FLEET_KEY_K"}}], {}))
        applied = _fleet(state, url, "apply", "--auto-approve", "-f", str(tmp_path / "fleet.yaml"), cwd=tmp_path,
                         env={"FLEET_KEY_K": secret})
        assert applied.returncode == 0, applied.stderr
        agent_dir = state / "agents" / "w1"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        agent = subprocess.Popen([sys.executable, "-m", "fleet.cli.main", "agent", "run", "--nats", url,
                                  "--state-dir", str(agent_dir), "--hostname", "w1",
                                  "--creds", str(state / "trust" / "enroll.creds")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**env, "FLEET_ENROLL_KEY": secret})
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
    assert result.returncode == EXIT_USAGE and "embedded NATS on this machine only" in result.stderr


# ------------------------------------------------------------------------------------------ refusals and failures


def _procs_mentioning(path: Path) -> list[int]:
    """Live processes whose command line mentions `path` (independent of the code under test)."""
    needle = str(path).encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if needle in Path(f"/proc/{name}/cmdline").read_bytes():
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The `error: …` line; asserts that stderr is that line plus at most one `hint: …` line, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[0].startswith("error: "), result.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), result.stderr
    return lines[0]


def _assert_nothing_left(state: Path) -> None:
    assert not state.exists(), sorted(p.name for p in state.iterdir())  # nothing written, not even the state dir
    assert _procs_mentioning(state) == []


def _down(state: Path) -> None:
    if state.is_dir():
        _fleet(state, "nats://127.0.0.1:1", "down")


def test_up_refuses_the_nats_of_another_fleet(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / ".fleet", tmp_path / "b" / ".fleet"
    first.parent.mkdir()
    second.parent.mkdir()
    url = f"nats://127.0.0.1:{free_port()}"
    try:
        assert _fleet(first, url, "up").returncode == 0
        nats_pid, server_pid = read_pid(first / "nats-server.pid"), read_pid(first / "server.pid")
        began = time.monotonic()
        result = _fleet(second, url, "up")
        assert time.monotonic() - began < 5
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        error = _one_line_error(result)
        assert url in error and "another fleet" in error and str(first) in error
        assert "fleet up --nats nats://127.0.0.1:" in result.stderr and "FLEET_NATS_URL" in result.stderr
        assert "using it" not in result.stdout
        _assert_nothing_left(second)
        # the first fleet is untouched
        assert read_pid(first / "nats-server.pid") == nats_pid and read_pid(first / "server.pid") == server_pid
        assert _fleet(first, url, "list", "--json").returncode == 0
    finally:
        _down(second)
        _down(first)


def test_up_refuses_a_foreign_nats(nats_server, tmp_path: Path) -> None:
    state = tmp_path / ".fleet"
    result = _fleet(state, nats_server.url, "up")
    try:
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        error = _one_line_error(result)
        assert nats_server.url in error and "foreign NATS server" in error
        assert f"pid {nats_server.server.running_pid()}" in error
        assert "--nats nats://127.0.0.1:" in result.stderr and "FLEET_NATS_URL" in result.stderr
        _assert_nothing_left(state)
    finally:
        _down(state)


@pytest.mark.parametrize("mode", ["silent", "close"])
def test_up_fails_fast_when_another_program_holds_the_port(port_holder, tmp_path: Path, mode: str) -> None:
    holder = port_holder(mode)
    state = tmp_path / ".fleet"
    began = time.monotonic()
    result = _fleet(state, f"nats://127.0.0.1:{holder.port}", "up", timeout=60)
    try:
        assert time.monotonic() - began < 5, "waited for readiness instead of failing at once"
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        error = _one_line_error(result)
        assert f"port {holder.port} on 127.0.0.1 is in use by another program (not a NATS server)" in error
        assert f"pid {holder.pid}" in error
        assert "[INF]" not in result.stderr and "fleet up --nats nats://127.0.0.1:" in result.stderr
        _assert_nothing_left(state)
        assert holder.proc.popen.poll() is None  # the other program is left alone
    finally:
        _down(state)


@pytest.mark.parametrize("args", [("--timeout", "0"), ("--timeout", "-1"), ("--timeout", "nan"), ("--timeout", "inf"),
                                  ("--offline-after", "nan"), ("--offline-after", "0")])
def test_up_refuses_bad_durations(tmp_path: Path, args: tuple[str, str]) -> None:
    state = tmp_path / ".fleet"
    result = _fleet(state, f"nats://127.0.0.1:{free_port()}", "up", *args, timeout=60)
    try:
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        assert args[0] in _one_line_error(result)
        _assert_nothing_left(state)
    finally:
        _down(state)


@pytest.mark.parametrize("port", ["0", "99999", "abc"])
def test_up_refuses_a_bad_port(tmp_path: Path, port: str) -> None:
    state = tmp_path / ".fleet"
    result = _fleet(state, f"nats://127.0.0.1:{port}", "up", timeout=60)
    try:
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        assert "port" in _one_line_error(result)
        _assert_nothing_left(state)
    finally:
        _down(state)


def test_up_and_down_refuse_a_state_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    state = tmp_path / "file" / ".fleet"
    result = _fleet(state, f"nats://127.0.0.1:{free_port()}", "up", cwd=tmp_path)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    assert "not a directory" in _one_line_error(result)
    down = _fleet(state, "nats://127.0.0.1:1", "down", cwd=tmp_path)
    assert down.returncode == 0 and "nothing to stop" in down.stdout and "Traceback" not in down.stderr


def test_up_refuses_a_read_only_state_dir(tmp_path: Path) -> None:
    """A state dir that cannot be written (a read-only mount when run as root, who ignores file modes)."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    url = f"nats://127.0.0.1:{free_port()}"
    fleet = [sys.executable, "-m", "fleet.cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    if os.geteuid() != 0:
        readonly.chmod(0o500)
        argv = [*fleet, "up", "--nats", url, "--state-dir", str(readonly / ".fleet")]
    else:  # a read-only tmpfs in a private mount namespace: gone with the process
        if not shutil.which("unshare"):
            pytest.skip("needs unshare(1) as root")
        script = f'mount -t tmpfs -o ro tmpfs "{readonly}" || exit 77; exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                *fleet, "up", "--nats", url, "--state-dir", str(readonly / ".fleet")]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        if result.returncode == 77 or "unshare failed" in result.stderr:
            pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
        assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
        assert "not writable" in _one_line_error(result)
        assert _procs_mentioning(readonly) == []
    finally:
        readonly.chmod(0o700)


def test_garbage_pid_files_neither_double_the_fleet_nor_hide_it_from_down(tmp_path: Path) -> None:
    state = tmp_path / ".fleet"
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    try:
        assert _fleet(state, url, "up").returncode == 0
        nats_pid, server_pid = read_pid(state / "nats-server.pid"), read_pid(state / "server.pid")
        assert nats_pid and server_pid

        (state / "nats-server.pid").write_text("garbage\n")
        (state / "server.pid").write_bytes(b"\xff\x00 not a pid")
        again = _fleet(state, url, "up")
        assert again.returncode == 0, again.stderr
        assert f"nats-server already running (pid {nats_pid})" in again.stdout
        assert f"fleet server already running (pid {server_pid})" in again.stdout
        assert read_pid(state / "nats-server.pid") == nats_pid and read_pid(state / "server.pid") == server_pid

        # the same state dir with another port: refused, not a second fleet
        other = _fleet(state, f"nats://127.0.0.1:{port + 1}", "up")
        assert other.returncode == EXIT_USAGE and url in _one_line_error(other)

        (state / "nats-server.pid").write_text("-1\n")
        (state / "server.pid").write_text("\n")
        down = _fleet(state, url, "down")
        assert down.returncode == 0, down.stderr
        assert f"stopped fleet server (pid {server_pid})" in down.stdout
        assert f"stopped nats-server (pid {nats_pid})" in down.stdout
        assert not pid_alive(nats_pid) and not pid_alive(server_pid)

        (state / "server.pid").write_text("garbage\n")
        idle = _fleet(state, url, "down")
        assert idle.returncode == 0 and "nothing to stop" in idle.stdout
        assert not (state / "server.pid").exists()
    finally:
        _down(state)


def test_up_that_fails_half_way_stops_what_it_started(tmp_path: Path) -> None:
    """nats-server starts, then `fleet server` cannot (its creds file in the trust dir is garbage): `fleet up` fails
    in one line and stops the nats-server it started, so no process and no PID file is left behind."""
    state = tmp_path / ".fleet"
    TrustDir.create(state / "trust")
    (state / "trust" / "server.creds").write_text("not a creds file\n")
    try:
        began = time.monotonic()
        result = _fleet(state, f"nats://127.0.0.1:{free_port()}", "up")
        assert time.monotonic() - began < 15  # the server's exit is noticed; no 20 s readiness wait
        assert result.returncode == 1, result.stdout + result.stderr
        assert "started nats-server" in result.stdout
        assert _procs_mentioning(state) == []
        assert not (state / "nats-server.pid").exists() and not (state / "server.pid").exists()
        assert "fleet server exited before it was ready" in _one_line_error(result)
    finally:
        _down(state)
