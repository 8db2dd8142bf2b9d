"""Without a control plane the inventory commands fail in one line, fast, naming the URL and the fix."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fleet.bus.embedded import free_port
from fleet.errors import EXIT_UNAVAILABLE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli.main", *args], capture_output=True, text=True,
                          timeout=30)


def test_no_nats_one_line_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _fleet("list", "--nats", url)
    assert time.monotonic() - started < 15  # bounded, no hang
    assert result.returncode == EXIT_UNAVAILABLE  # "retry later", not "you did something wrong"
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: cannot reach NATS at {url}"
    assert "fleet up" in lines[1] and len(lines) == 2
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_nats_but_no_fleet_server(nats_server) -> None:
    result = _fleet("show", "abc", "--nats", nats_server.url)
    assert result.returncode == EXIT_UNAVAILABLE
    assert f"NATS at {nats_server.url} is up but no fleet server answers" in result.stderr
    assert "fleet up" in result.stderr and "Traceback" not in result.stderr
