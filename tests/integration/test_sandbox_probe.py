"""An attacker's look at the session sandbox (fleet.agents.sandbox, slots, slot_init): attacks that
test_sandbox.py does not try, through real sessions on real agents (root here: a uid per slot, bubblewrap). Each one
worked against the first slots (a helper's probe found them; each test failed then) and must fail now:
- the slot init's socketpair with the agent, inherited by every session: a session spoke the init's protocol to the
  agent, said its session ended and the slot was clean, stayed alive, and took the next session's run request (its
  argv, its environment with the submitter's secrets, its output pipe);
- the uid's persistent keyring (keyctl get_persistent), not cleared between sessions;
- a discarded slot's uid, back in the machine-wide pool with the keys its session left (the next slot with that uid,
  of any agent of the machine, found them);
- the agent's session keyring (a systemd service has one: KeyringMode=private), inherited by every session;
- a session exhausting its agent's file descriptors with connections to its credential socket;
- a bin dir on the agent's PATH exposing its parent (~/bin exposed the whole home dir, ~/.ssh with it);
- the scratch dir's own extended attributes, mode and times, left for the next session.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_HEARTBEAT, LiveFleet, fleet_argv, wait_for
from tests.integration.test_dispatch import MAIN, client, setup, until, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# keyctl(2) from a session: the ids and descriptions of the keys in a keyring
KEYS = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
def keys(ring):
    buf = ctypes.create_string_buffer(4096)
    n = libc.syscall(250, 11, L(ring), buf, 4096)  # KEYCTL_READ: the ids, 4 bytes each
    out = []
    for i in range(0, max(n, 0), 4):
        d = ctypes.create_string_buffer(256)
        libc.syscall(250, 6, L(int.from_bytes(buf.raw[i:i + 4], "little")), d, 256)  # KEYCTL_DESCRIBE
        out.append(d.value.decode().split(";")[-1])
    return out
def ring(name):
    if name == "persistent":
        return libc.syscall(250, 22, L(-1), L(-3))  # KEYCTL_GET_PERSISTENT (own uid), linked into @s
    return {"@s": -3, "@u": -4, "@us": -5}[name]
what, name = sys.argv[1], sys.argv[2]
if what == "add":
    assert libc.syscall(248, b"user", b"left-behind", b"s3cret", 6, L(ring(name))) > 0, ctypes.get_errno()
print(json.dumps({"uid": os.getuid(), "keys": keys(ring(name))}) if what == "look" else os.getuid())
'''.replace("import ctypes, os, sys", "import ctypes, json, os, sys")


def _keys(*args: str) -> list[str]:
    return [sys.executable, "-c", KEYS, *args]


def _forget_keys(uid: int) -> None:
    """Clear what a test left in a session uid's keyrings (they outlive the test: the persistent one for 3 days)."""
    import ctypes
    import subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    ring = libc.syscall(250, 22, ctypes.c_long(uid), ctypes.c_long(-2))  # root may get any uid's persistent ring
    if ring > 0:
        libc.syscall(250, 7, ctypes.c_long(ring))
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
                    "import ctypes; ctypes.CDLL(None).syscall(250, 7, ctypes.c_long(-4))"], check=False)


def _run(c, project: str, argv: list[str], **kw) -> str:  # noqa: ANN001
    s = c.submit(project, argv, **kw)
    done = until(c, s.id, {"succeeded", "failed", "timed_out", "cancelled"}, 60)
    assert done.phase == "succeeded", (done.phase, done.output_tail)
    return done.output_tail.strip()


# ------------------------------------------------------------------------------------------- the init's socket

HIJACK = r'''
import json, os, socket, struct, sys, threading, time
def sockets():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                yield int(name)
        except OSError:
            pass
found = list(sockets())
print("SOCKETS", found, flush=True)
if not found:
    sys.exit(0)
s = socket.socket(fileno=found[0])
def send(obj):
    data = json.dumps(obj).encode()
    s.sendall(struct.pack(">I", len(data)) + data)
null = os.open("/dev/null", os.O_RDWR)
os.dup2(null, 1); os.dup2(null, 2)  # the agent sees the end of this session's output
send({"exit": 0}); send({"clean": True})  # "it ended, exit 0, and the slot is clean": it did not, and is not
def steal():
    while True:
        data, fds, _, _ = socket.recv_fds(s, 1 << 20, 4)
        if not data:
            return
        try:
            req = json.loads(data[4:])
        except ValueError:
            continue
        if req.get("op") == "run" and fds:  # the next session's run request: its argv, env and output pipe
            send({"pid": 4242})
            os.write(fds[0], b"FORGED by the previous session; its env: " + json.dumps(req["env"]).encode() + b"\n")
            os.close(fds[0])
            send({"exit": 0}); send({"clean": True})
for _ in range(4):
    threading.Thread(target=steal, daemon=True).start()
time.sleep(600)
'''


def test_a_session_cannot_speak_for_its_slots_init_nor_take_the_next_sessions_run(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    with client(live_fleet) as c:
        attacker = c.submit("solo-app", [sys.executable, "-c", HIJACK], timeout=20)
        until(c, attacker.id, {"succeeded", "failed", "timed_out", "cancelled"}, 60)
        victims = [c.submit("solo-app", ["sh", "-c", "echo victim $SECRET"], env={"SECRET": f"s3cret-{i}"})
                   for i in range(2)]
        ends = [until(c, v.id, {"succeeded", "failed", "timed_out", "cancelled"}, 60) for v in victims]
        first = c.get(attacker.id)
    seen = [(first.phase, first.exit_code, first.output_tail)] + [(e.phase, e.exit_code, e.output_tail) for e in ends]
    # each victim ran, itself, and said what it said; the attacker's session held no socket (the init's)
    for i, end in enumerate(ends):
        assert end.phase == "succeeded" and end.output_tail.strip() == f"victim s3cret-{i}", seen
    assert first.output_tail.strip().splitlines()[0] == "SOCKETS []", seen


# ------------------------------------------------------------------------------------------- keys

def test_a_key_in_the_uids_persistent_keyring_is_gone_for_the_next_session(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    with client(live_fleet) as c:
        uid = _run(c, "solo-app", _keys("add", "persistent"))
        try:
            after = json.loads(_run(c, "solo-app", _keys("look", "persistent")))
        finally:
            _forget_keys(int(uid))
    assert str(after["uid"]) == uid  # the same slot, so the same uid
    assert after["keys"] == [], after


def test_a_discarded_slots_uid_comes_back_without_its_keys(live_fleet: LiveFleet) -> None:
    uid = 329990  # one uid only: the slot that follows the discarded one has it (as another agent's would)
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w-fin", keys["fin"], MAIN, "--session-uids", f"{uid}-{uid}")
    lock = Path(f"/run/fleet-sandbox/uid-{uid}")

    def uid_free() -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        finally:
            os.close(fd)  # drops our lock too
        return True

    with client(live_fleet) as c:
        # a key in @u, then a scratch dir the init cannot list: the slot is discarded without its wipe
        assert _run(c, "solo-app", ["sh", "-c", f"{' '.join(map(_quote, _keys('add', '@u')))} && chmod 000 $HOME"]) \
            == str(uid)
        try:
            wait_for(uid_free, 20, 0.05, f"uid {uid} back in the pool")
            after = json.loads(_run(c, "solo-app", _keys("look", "@u")))
        finally:
            _forget_keys(uid)
    assert after["uid"] == uid
    assert after["keys"] == [], after


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


JOIN_KEYRING = (  # what systemd does for a service (KeyringMode=private): a session keyring of its own, root's
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); L = ctypes.c_long; "
    "ring = libc.syscall(250, 1, None); assert ring > 0, ctypes.get_errno(); "
    "assert libc.syscall(248, b'user', b'agent-secret', b'root-only', 9, L(-3)) > 0; "
    "os.execv(sys.argv[1], sys.argv[1:])")


def _agent_argv(lf: LiveFleet, name: str, pool: str) -> list[str]:
    """As LiveFleet.agent starts one (tests/conftest.py), for a wrapper to run."""
    os.chmod(lf.root, 0o755)
    return fleet_argv("agent", "run", "--nats", lf.url, "--state-dir", str(lf.agent_dir(name)), "--hostname", name,
                      "--heartbeat-interval", str(FAST_HEARTBEAT), "--join-timeout", "20", "--creds", lf.creds("enroll"),
                      "--sandbox-expose", str(lf.root), "--sandbox-bind", str(lf.shared), "--pool", pool)


def test_sessions_get_no_keyring_of_their_agents(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=2)
    live_fleet.procs.spawn("agent-w-fin", [sys.executable, "-c", JOIN_KEYRING, *_agent_argv(live_fleet, "w-fin", MAIN)],
                           env={"FLEET_ENROLL_KEY": keys["fin"]})
    live_fleet.wait_status("w-fin", "active", 30)
    with client(live_fleet) as c:
        _run(c, "solo-app", _keys("add", "@s"))
        after = json.loads(_run(c, "solo-app", _keys("look", "@s")))
    assert "agent-secret" not in after["keys"], after  # the agent's own key
    assert "left-behind" not in after["keys"], after  # the last session's


# ------------------------------------------------------------------------------------------- the agent's fds

FLOOD = r'''
import os, resource, socket, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the agent's hard limit: as high as it may go
held, said = [], False
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:  # our own limit: start again (the agent dropped the old ones after 5 s)
        for s in held:
            s.close()
        held = []
        continue
    s.setblocking(False)
    try:
        s.connect(os.environ["FLEET_CREDENTIALS_SOCKET"])
        held.append(s)
    except BlockingIOError:  # its backlog is full: the agent is busy accepting
        s.close()
        time.sleep(0.01)
    if len(held) >= 1500 and not said:
        print("FLOODING", flush=True)
        said = True
'''


def test_a_session_cannot_exhaust_its_agents_file_descriptors(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=2)
    # as systemd starts a service: a soft limit of 1024 fds, a higher hard one (which the sessions inherit)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    live_fleet.procs.spawn("agent-w-fin", ["prlimit", f"--nofile=1024:{hard}", "--",
                                           *_agent_argv(live_fleet, "w-fin", MAIN)],
                           env={"FLEET_ENROLL_KEY": keys["fin"]})
    live_fleet.wait_status("w-fin", "active", 30)
    with client(live_fleet) as c:
        flood = c.submit("solo-app", [sys.executable, "-c", FLOOD], timeout=60)
        wait_for(lambda: "FLOODING" in "".join(c.logs(flood.id)), 30, 0.2, "the flood under way")
        try:
            for i in range(3):
                s = c.submit("solo-app", ["echo", f"ok {i}"])
                done = until(c, s.id, {"succeeded", "failed", "timed_out", "cancelled"}, 60)
                assert done.phase == "succeeded" and done.output_tail.strip() == f"ok {i}", done.output_tail
        finally:
            c.cancel(flood.id)


# ------------------------------------------------------------------------------------------- the view

def test_a_bin_dir_on_the_agents_path_does_not_expose_the_home_around_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from fleet.agents.sandbox import Sandbox, probe
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(home, 0o755)
    os.chmod(home / ".ssh", 0o755)  # world-readable here, as a non-root agent's own files are to its userns sessions
    os.chmod(home / ".ssh" / "id_ed25519", 0o644)
    state = tmp_path / "agents" / "a"
    state.mkdir(mode=0o700, parents=True)
    monkeypatch.setenv("PATH", f"{home / 'bin'}:{os.environ['PATH']}")
    box = Sandbox.create(probe(), state, uid_range=(329980, 329989))
    assert box.probe.bwrap is not None and box.probe.setpriv is not None
    done = subprocess.run([box.probe.bwrap, "--unshare-pid", *box._view, "--", box.probe.setpriv, "--reuid=329980",
                           "--regid=329980", "--clear-groups", "sh", "-c", f"cat {home}/.ssh/id_ed25519; true"],
                          capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr  # the sandbox ran: the read below was tried
    assert b"PRIVATE KEY" not in done.stdout, done.stdout


# ------------------------------------------------------------------------------------------- the scratch dir itself

SCRATCH_META = r'''
import json, os, stat, sys
home = os.environ["HOME"]
if sys.argv[1] == "leave":  # on the scratch dir itself (its uid's): an extended attribute, a mode, a time
    os.setxattr(home, "user.left-behind", b"s3cret" * 100)
    os.chmod(home, 0o751)
    os.utime(home, (981158400, 981158400))
    print(os.getuid())
else:
    print(json.dumps({"uid": os.getuid(), "xattrs": os.listxattr(home), "mode": oct(stat.S_IMODE(os.stat(home).st_mode)),
                      "mtime": os.stat(home).st_mtime}))
'''


def test_the_next_session_finds_nothing_on_the_scratch_dir_itself(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    with client(live_fleet) as c:
        uid = _run(c, "solo-app", [sys.executable, "-c", SCRATCH_META, "leave"])
        after = json.loads(_run(c, "solo-app", [sys.executable, "-c", SCRATCH_META, "look"]))
    assert str(after["uid"]) == uid  # the same slot
    assert after["xattrs"] == [] and after["mode"] == "0o700" and after["mtime"] != 981158400, after
