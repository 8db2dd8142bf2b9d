"""The session sandbox: every session runs as a stranger to its agent, in PID, mount and IPC namespaces that it has to
itself, and nothing it starts outlives it.

Used by fleet.agents.sessions (the runner) for every session, and by fleet.agents.agent, which probes the host once
at start (`probe`, then `check`: a real `true` in a real slot) and reports the result in its registration (`fleet
show`: `Sandbox: uid 300000-300999 per slot, pid+mount+ipc namespaces (bubblewrap)`).

Sessions run in sandbox slots (fleet.agents.slots): a slot is one bubblewrap sandbox with its own uid, namespaces
and scratch dir, whose init (fleet.agents.slot_init, PID 1) runs one session at a time and, when it ends, kills
every process left in the slot and removes every file the session left, or has the slot discarded when it cannot.
A slot costs two execs once; a session in it one posix_spawn (an exec costs ~0.7 ms of CPU on a small VM: a sandbox
per session halved the rate of short sessions). Mechanisms, chosen per host:
- **uid** (the agent runs as root): bubblewrap builds the view as root, then `setpriv` drops the slot's init to an
  unprivileged uid/gid of the slot's own, taken from a machine-wide range (a lock file per uid under
  /run/fleet-sandbox, so that agents on one machine never share one) or to a named user (`fleet agent run
  --session-user`), with no supplementary groups, no capabilities (bounding set empty) and no_new_privs.
- **userns** (the agent is not root): bubblewrap in a user namespace; the sessions keep the agent's uid outside, so
  what protects the agent's files is the view alone.
- **none**: no isolation, only when every pool of the host says `isolation: none` (the agent refuses otherwise).

The view is deny-by-default: the system directories (/usr, /etc, /opt and the merged-/usr links) read-only, the
directories of the tools on the agent's PATH and of its Python read-only, a fresh /proc and /dev, tmpfs on /tmp,
/var/tmp, /dev/shm and /run, and the slot's scratch dir read-write at SESSION_DIR (the sessions' HOME and TMPDIR);
nothing of any agent's state dir or the server's trust dir (if an exposed directory holds them, an empty tmpfs covers
them). The running session's credential socket is at SESSION_SOCKET.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fleet.agents.slots import Slot, SlotPool, init_command, init_view
from fleet.errors import FleetError

log = logging.getLogger(__name__)

SESSION_SOCKET = "/run/fleet/session.sock"  # where a sandboxed session finds its credential socket
SESSION_DIR = "/run/fleet/scratch"  # where a sandboxed session finds its scratch dir (its HOME and TMPDIR)
DEFAULT_UID_RANGE = (300000, 300999)
LOCK_DIR = Path("/run/fleet-sandbox")
TMPFS_BYTES = 1 << 30  # each of a slot's /tmp, /var/tmp and /dev/shm (memory, not disk: without a bound, half the RAM)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class CannotIsolate(FleetError):
    """This host cannot run sessions isolated from the agent, and its pools do not allow running them without."""


@dataclass(frozen=True)
class Probe:
    """What this host can do: the mechanism (uid, userns, none) and, for none, why."""

    mechanism: str
    bwrap: str | None = None
    setpriv: str | None = None
    reason: str | None = None


def probe() -> Probe:
    """Find out once, at agent start, whether sessions can be isolated here (a real bubblewrap run of `true`)."""
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None:
        return Probe("none", reason="bubblewrap is not installed (apt-get install bubblewrap)")
    root = os.geteuid() == 0
    if root and setpriv is None:
        return Probe("none", reason="setpriv (util-linux) is not installed")
    argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "true"]
    if not root:
        argv[1:1] = ["--unshare-user"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe("none", reason=f"bubblewrap does not run: {exc}")
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no reason given"]
        return Probe("none", reason=f"bubblewrap cannot create namespaces here: {why[0][:200]}")
    return Probe("uid" if root else "userns", bwrap=bwrap, setpriv=setpriv)


def parse_uid_range(text: str) -> tuple[int, int]:
    """`300000-300999` -> (300000, 300999); refused unless 1000 <= first <= last < 2**31."""
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError as exc:
        raise FleetError(f"invalid uid range {text!r}", hint="write it as FIRST-LAST, e.g. 300000-300999") from exc
    if not 1000 <= lo <= hi < 2**31:
        raise FleetError(f"invalid uid range {text!r}: needs 1000 <= first <= last < 2^31")
    return lo, hi


class UidLease:
    """One uid of the range, held (by an flock on its lock file) for as long as one session runs."""

    def __init__(self, uid: int, fd: int | None) -> None:
        self.uid = uid
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class UidPool:
    """Machine-wide allocation of session uids: every agent on the machine takes them from the same lock dir, so two
    sessions (of one agent or of two, of one tenant or of two) never share a uid. A lock dies with its agent."""

    def __init__(self, first: int, last: int, lock_dir: Path = LOCK_DIR) -> None:
        self.first, self.last = first, last
        self.lock_dir = lock_dir
        self._next = first
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(lock_dir, 0o700)

    def take(self) -> UidLease:
        size = self.last - self.first + 1
        for i in range(size):
            uid = self.first + (self._next - self.first + i) % size
            fd = os.open(self.lock_dir / f"uid-{uid}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._next = uid + 1 if uid < self.last else self.first
            return UidLease(uid, fd)
        raise FleetError(f"every session uid of {self.first}-{self.last} is in use on this machine",
                         hint="give the agents a larger --session-uids range")


@dataclass
class Sandbox:
    """How this agent starts its sessions. `wrap` turns a session's command into the argv that runs it isolated."""

    probe: Probe
    state_dir: Path
    uids: UidPool | None = None
    user: str | None = None  # a named user instead of the uid range (root only)
    expose: tuple[str, ...] = ()  # more read-only paths
    writable: tuple[str, ...] = ()  # paths every session of this agent may write (shared between them)
    _view: list[str] = field(default_factory=list, repr=False)
    slots: SlotPool | None = field(default=None, repr=False)  # the sandboxes that run the sessions, once started

    @classmethod
    def create(cls, found: Probe, state_dir: Path, *, uid_range: tuple[int, int] = DEFAULT_UID_RANGE,
               user: str | None = None, expose: tuple[str, ...] = (), writable: tuple[str, ...] = ()) -> Sandbox:
        uids = None
        if found.mechanism == "uid" and user is None:
            uids = UidPool(*uid_range)
        if user is not None and found.mechanism != "uid":
            raise FleetError("--session-user needs an agent running as root (it switches the session to that user)")
        if user is not None:
            try:
                entry = pwd.getpwnam(user)
            except KeyError as exc:
                raise FleetError(f"no user {user!r} on this machine", hint="create it, or drop --session-user") from exc
            if entry.pw_uid == 0:
                raise FleetError("--session-user may not be root")
        box = cls(found, state_dir, uids, user, expose, writable)
        box._view = box._build_view() if found.mechanism != "none" else []
        return box

    @property
    def isolated(self) -> bool:
        return self.probe.mechanism != "none"

    def describe(self) -> dict[str, object]:
        """What the agent reports (fleet.bus.messages.Isolation)."""
        if not self.isolated:
            return {"mechanism": "none", "reason": self.probe.reason}
        out: dict[str, object] = {"mechanism": self.probe.mechanism, "namespaces": ["pid", "mount", "ipc"]
                                  + (["user"] if self.probe.mechanism == "userns" else []), "tool": "bubblewrap"}
        if self.uids is not None:
            out["uid_range"] = [self.uids.first, self.uids.last]
        if self.user is not None:
            out["user"] = self.user
        return out

    # ------------------------------------------------------------------------------------------ the view
    def _build_view(self) -> list[str]:
        view: list[str] = []
        made: set[str] = {"/"}
        for d in SYSTEM_DIRS:
            p = Path(d)
            if p.is_symlink():
                view += ["--symlink", os.readlink(p), d]
            elif p.is_dir():
                view += ["--ro-bind", d, d]
            made.add(d)
        size = str(TMPFS_BYTES)
        view += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "0755", "--dir", "/var", "--perms", "1777", "--size", size, "--tmpfs", "/var/tmp",
                 "--size", str(1 << 20), "--tmpfs", "/run"]
        made.update(("/proc", "/dev", "/tmp", "/var", "/var/tmp", "/run"))
        candidates = {p for p in (os.path.realpath(d) for d in self._tool_dirs()) if p.count("/") >= 2}
        candidates |= {os.path.realpath(d) for d in self.expose if os.path.realpath(d) != "/"}
        exposed: list[str] = []
        for real in sorted(candidates, key=lambda p: (p.count("/"), p)):
            if os.path.isdir(real) and not any(_within(real, e) for e in (*SYSTEM_DIRS, *exposed)):
                exposed.append(real)
        for real in sorted(exposed):
            view += _parents(real, made) + ["--ro-bind", real, real]
        for hidden in self._hidden():
            if any(_within(hidden, e) for e in exposed):
                view += ["--tmpfs", hidden]
        for path in sorted({os.path.realpath(d) for d in self.writable}):
            if path != "/" and not any(_within(h, path) for h in self._hidden()):
                view += _parents(path, made) + ["--bind", path, path]
        return view

    def _tool_dirs(self) -> list[str]:
        """The directories a session needs for the tools on PATH and for Python: each PATH entry itself, and its
        parent only when that is an installation prefix (it has lib/ or libexec/: /opt/x, ~/.pyenv; not ~/.cargo,
        whose credentials sit next to bin/), and the prefixes of this Python and of a virtualenv's base Python.
        Never the agent's home nor an ancestor of it (`~/bin` must not expose the home around it; an explicit
        --sandbox-expose may)."""
        out: list[str] = []
        for entry in os.environ.get("PATH", "").split(os.pathsep):
            if entry.startswith("/"):
                p = Path(os.path.realpath(entry))
                out.append(str(p))
                if p.name in ("bin", "sbin", "shims") and any((p.parent / d).is_dir() for d in ("lib", "libexec")):
                    out.append(str(p.parent))  # an installation prefix (its tools need their lib/, libexec/)
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
            out.append(prefix)
            cfg = Path(prefix) / "pyvenv.cfg"
            with contextlib.suppress(OSError):
                for line in cfg.read_text().splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "home":
                        out.append(str(Path(value.strip()).parent))
        home = os.path.realpath(os.path.expanduser("~"))
        return [d for d in out if not _within(home, os.path.realpath(d))]

    def _hidden(self) -> list[str]:
        """What an exposed directory may hold and a session must never see: this agent's state dir, its neighbours
        (the dir of the agents' state dirs) and a fleet state root (`.fleet`, with the server's trust dir)."""
        state = Path(os.path.realpath(self.state_dir))
        out = [str(state), str(state.parent)]
        out += [str(p) for p in state.parents if p.name == ".fleet"]
        return sorted(set(out), key=len)

    # ------------------------------------------------------------------------------------------ one session
    def take_uid(self) -> UidLease | None:
        if self.uids is not None:
            return self.uids.take()
        if self.user is not None:
            return UidLease(pwd.getpwnam(self.user).pw_uid, None)
        return None

    def slot_argv(self, fd: int, uid: int, directory: Path) -> list[str]:
        """The argv of one sandbox slot (fleet.agents.slots): bubblewrap's view and namespaces, the drop to the
        slot's uid (setpriv, root agents), and the slot's init with its end of the agent's socketpair as `fd`."""
        assert self.probe.bwrap is not None
        argv = [self.probe.bwrap]
        if self.probe.mechanism == "userns":
            argv.append("--unshare-user")
        argv += ["--unshare-pid", "--unshare-ipc", "--as-pid-1", "--die-with-parent", "--new-session", *self._view,
                 "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue", "--bind", str(directory),
                 "/run/fleet", *init_view(),
                 "--chdir", SESSION_DIR, "--"]
        if self.probe.mechanism == "uid":
            assert self.probe.setpriv is not None
            argv += [self.probe.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                     "--inh-caps=-all", "--bounding-set=-all", "--"]
        return argv + init_command(fd)

    def _slots(self) -> SlotPool:
        if self.slots is None:
            env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": os.environ.get("LANG", "C.UTF-8")}
            self.slots = SlotPool(self.slot_argv, self.state_dir / "slots", self._take_slot_uid, env)
        return self.slots

    def _take_slot_uid(self) -> UidLease:
        lease = self.take_uid()
        return lease if lease is not None else UidLease(os.getuid(), None)  # userns: the agent's own uid

    async def check(self) -> None:
        """Start a slot and run `true` in it: raises FleetError (with the reason) when sessions cannot run here."""
        slot = await self.slot()
        try:
            proc = await slot.run(["true"], {"PATH": os.environ.get("PATH", os.defpath)})
            await proc.stdout.read()
            code = await proc.wait()
        except OSError as exc:
            raise FleetError(f"the sandbox cannot run `true`: {exc.strerror or exc}") from exc
        finally:
            self.release(slot)
        if code != 0:
            raise FleetError(f"`true` in the sandbox exited {code}")

    async def warm(self, count: int, limit: int = 80) -> None:
        """Make slots ahead, one after the other, until the agent has one for each session it may run and a quarter
        more (at most `limit`): a session then never waits for a slot's start (~50 ms), nor, at full load, for the
        wipe of the slot its predecessor just left. A failure only ends the warming."""
        try:
            await self._slots().warm(min(count + max(1, count // 4), limit))
        except (FleetError, OSError) as exc:
            log.warning("sandbox slots not made ahead: %s", exc)

    async def slot(self) -> Slot:
        """An idle sandbox slot for one session (a new one when none is idle)."""
        return await self._slots().acquire()

    def release(self, slot: Slot) -> None:
        self._slots().release(slot)

    def stop(self) -> None:
        if self.slots is not None:
            self.slots.stop()


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _parents(path: str, made: set[str]) -> list[str]:
    """bubblewrap creates missing parents 0700 (root's, unreadable to the session): create them 0755 first."""
    out: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts)):
        parent = str(Path(*parts[:i]))
        if parent not in made:
            made.add(parent)
            out += ["--perms", "0755", "--dir", parent]
    return out
