"""A sandbox slot's init: PID 1 of the slot's PID namespace, running as the slot's uid, that runs the slot's sessions
one at a time and leaves nothing of one behind for the next.

Started by fleet.agents.slots (the agent side) through bubblewrap, once per slot: `python -I -S /run/fleet-init.py
FD` (this one file is bound read-only into the view; nothing else of fleet is visible there); stdlib only. bubblewrap has built the view
(read-only system and tool dirs, a fresh /proc and /dev, tmpfs on /tmp, /var/tmp and /dev/shm, the slot's dir at
/run/fleet with the scratch dir at /run/fleet/scratch), and setpriv has dropped this process to the slot's uid with
no groups, no capabilities and no_new_privs. FD is this process's end of a socketpair with the agent, its only peer.

Per session (no program runs but the session's own: an exec costs ~0.7 ms of CPU on a small VM, a Python fork about
as much, and a sandbox per session cost both):
- the agent sends {"op": "run", "argv", "env"} with the session's output pipe (SCM_RIGHTS); this process starts the
  command with posix_spawn (vfork: no copy of this process) in a new session, stdout and stderr into the pipe, in
  /run/fleet/scratch, and answers {"pid"} (the pid inside the slot) or {"error"};
- {"op": "signal", "sig"} sends the signal to every process of the slot but this one (kill(-1));
- when the command ends, every process left in the slot is killed (kill(-1, SIGKILL) until none is left: detached
  or not, they are this uid's, in this namespace), every file the session left in /run/fleet/scratch, /tmp,
  /var/tmp and /dev/shm, every POSIX message queue (/dev/mqueue) and every key in the uid's keyrings (user,
  user-session, persistent) is removed (each session also starts with a session keyring of its own); this process answers {"exit": code} (128+N for a signal N) as soon as the last
  process is gone, then {"clean": true} once the files are; or "clean": false with "why", and exits, so that the
  agent starts a fresh slot: a SysV IPC object, a file it cannot remove, a process that would not die.

Protected from the sessions it runs although it shares their uid: it is PID 1 of the namespace (the kernel delivers
it no signal from inside for which it has no handler, and never SIGKILL or SIGSTOP) and not dumpable (no ptrace, no
/proc/1/mem). It ignores every catchable signal but SIGCHLD.

Protocol: 4-byte big-endian length + JSON both ways; {"ready": true} once at start.
"""

import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys

SCRATCH = "/run/fleet/scratch"
WIPED = (SCRATCH, "/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")  # /dev/mqueue: the slot's POSIX message queues
SYSV = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")
MAX_REQUEST = 4 << 20
MAX_PROCS = 2048  # processes of the slot's uid (RLIMIT_NPROC, hard: a session cannot raise it)
PR_SET_DUMPABLE = 4
# keyctl(2): the uid's keyrings outlive its processes (this init keeps the uid alive): cleared after each session
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_GET_PERSISTENT = 1, 7, 22
KEY_SPEC_THREAD_KEYRING, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -1, -4, -5
_libc = ctypes.CDLL(None, use_errno=True)
IGNORED = [s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)]


def _send(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _status(status):
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _reap():
    """Reap every child that has ended; return {pid: status}."""
    out: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out[pid] = status


def _kill_all():
    """SIGKILL to every process of the slot but this one, until none is left; False if one would not go."""
    for _ in range(1000):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            break  # nobody left to signal
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
    else:
        return False
    try:
        os.kill(-1, 0)
    except ProcessLookupError:
        return True
    return False


def _wipe():
    """Remove what the session left; None when clean, else why not. What is not this uid's or is a mount point is
    the view's (an exposed dir under /tmp and the parents bubblewrap made for it, root's): a session cannot have
    made it, and it stays."""
    me = os.getuid()
    for top in WIPED:
        try:
            dev = os.stat(top).st_dev
            entries = list(os.scandir(top))
        except OSError as exc:
            return f"cannot list {top}: {exc.strerror}"
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_uid != me or st.st_dev != dev:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                return f"cannot remove {entry.path}: {exc.strerror}"
    try:  # the scratch dir itself: the session's extended attributes (ACLs too), mode and times on it
        for attr in os.listxattr(SCRATCH):
            os.removexattr(SCRATCH, attr)
        os.chmod(SCRATCH, 0o700)
        os.utime(SCRATCH)
    except OSError as exc:
        return f"cannot reset {SCRATCH}: {exc.strerror}"
    why = _clear_keyrings()
    if why is not None:
        return why
    for path in SYSV:
        try:
            with open(path) as f:
                if len(f.read(4096).splitlines()) > 1:
                    return f"the session left SysV IPC objects ({path})"
        except OSError:
            pass
    return None


def _remove_tree(top):
    """Remove a dir the session left, however deep (no recursion) and whatever modes it set on its dirs (each dir
    gets its owner's rwx back before it is listed)."""
    stack = [(top, False)]
    while stack:
        path, listed = stack.pop()
        if listed:
            os.rmdir(path)
            continue
        os.chmod(path, 0o700)
        stack.append((path, True))
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, False))
            else:
                os.unlink(entry.path)


def _keyctl(*args):
    return _libc.syscall(SYS_KEYCTL, *(ctypes.c_long(a) for a in args))


def _clear_keyrings():
    """Drop every key of this uid: its user and user-session keyrings and its persistent keyring (all outlive the
    processes that filled them). None, or why they could not be dropped."""
    if SYS_KEYCTL is None:
        return None
    rings = [KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING]
    persistent = _keyctl(KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_THREAD_KEYRING)  # linked where no session sees it
    if persistent > 0:
        rings.append(persistent)
    elif ctypes.get_errno() not in (95, 38):  # EOPNOTSUPP, ENOSYS: no persistent keyrings in this kernel
        return f"cannot reach the uid's persistent keyring: {os.strerror(ctypes.get_errno())}"
    for ring in rings:
        if _keyctl(KEYCTL_CLEAR, ring) != 0 and ctypes.get_errno() not in (2, 126):  # ENOENT, ENOKEY: none yet
            return f"cannot clear the uid's keyrings: {os.strerror(ctypes.get_errno())}"
    return None


def _new_session_keyring():
    """A fresh anonymous session keyring, which the next session inherits: never the agent's (systemd gives a
    service one of its own), never the last session's."""
    if SYS_KEYCTL is not None and _keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0) < 0:
        raise OSError(ctypes.get_errno(), "cannot join a new session keyring")


def serve(sock):
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    fd = sock.fileno()
    os.set_inheritable(fd, False)  # pass_fds made it inheritable: no session may hold the agent's line
    os.closerange(3, fd)  # whatever else came through bubblewrap
    os.closerange(fd + 1, 1 << 16)
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCS, MAX_PROCS))  # per slot: a fork bomb stops there
    _new_session_keyring()
    why = _clear_keyrings()  # what a discarded slot with this uid, of this agent or another, may have left
    if why is not None:
        raise SystemExit(why)
    for sig in IGNORED:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    os.chdir(SCRATCH)
    devnull = os.open("/dev/null", os.O_RDONLY)
    main = None  # the running session's command
    _send(sock, {"ready": True})
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            ended = _reap()
            if main is not None and main in ended:
                code = _status(ended[main])
                main = None
                gone = _kill_all()
                _send(sock, {"exit": code})  # the session is over (its last process is gone): report it now
                why = None if gone else "a process of the session would not die"
                why = why or _wipe()  # then make the slot ready for the next one
                _send(sock, {"clean": why is None, "why": why})
                if why is not None:
                    return
        if sock not in ready:
            continue
        header, fds, _, _ = socket.recv_fds(sock, 4, 1)
        if not header:
            return  # the agent is gone (bubblewrap's --die-with-parent ends us anyway)
        header += _exact(sock, 4 - len(header))
        (size,) = struct.unpack(">I", header)
        if size > MAX_REQUEST:
            return
        req = json.loads(_exact(sock, size))
        for fd in fds:
            os.set_inheritable(fd, False)
        if req.get("op") == "signal":
            for fd in fds:
                os.close(fd)
            if main is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, int(req["sig"]))
            continue
        if req.get("op") != "run" or len(fds) != 1 or main is not None:
            for fd in fds:
                os.close(fd)
            _send(sock, {"error": "a session is already running in this slot" if main is not None
                         else "bad request"})
            continue
        out = fds[0]
        argv = [str(a) for a in req["argv"]]
        env = {str(k): str(v) for k, v in req["env"].items()}
        try:
            _new_session_keyring()
            path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
            if path is None:
                raise FileNotFoundError(2, "No such file or directory")
            main = os.posix_spawn(path, argv, env, setsid=True, setsigdef=IGNORED,
                                   setsigmask=(), file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                                (os.POSIX_SPAWN_DUP2, out, 1),
                                                                (os.POSIX_SPAWN_DUP2, out, 2)])
            _send(sock, {"pid": main})
        except OSError as exc:
            _send(sock, {"error": exc.strerror or str(exc), "errno": exc.errno or 0})
        finally:
            os.close(out)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
