"""The session sandbox against the attacks of issue 14, through real sessions on real agents (fleet.agents.sandbox).

A real nats-server in operator mode, a real `fleet server`, real agent processes (root here, so: a uid of its own
per session, PID/mount/IPC namespaces, bubblewrap) of two tenants on this one machine. The sessions' commands are
the attacker: they try to read their host's credential and identity, a neighbouring agent's (another tenant's)
state, the trust dir and another session's scratch dir; to connect to NATS as their host; to leave a detached
process behind (ended normally, cancelled, timed out); and to misuse their credential socket. A host that cannot
sandbox refuses to take sessions unless its pool says `isolation: none`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import LiveFleet, run_cli, wait_for
from tests.integration.test_dispatch import HEALTH, MAIN, client, layout, setup, until, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
INIT_COMM = Path(sys.executable).name[:15]  # the slot's init, as ps names it

ATTACK = r'''
import json, os, socket, sys, asyncio
paths = json.loads(sys.argv[1])
out = {"uid": os.getuid(), "env": dict(os.environ),
       "caps": {k: v.strip() for k, v in (l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Cap"))}}
for name, path in paths.items():
    try:
        with open(path, "rb") as fh:
            out[name] = "READ " + fh.read(64).decode(errors="replace")
    except OSError as exc:
        out[name] = type(exc).__name__
async def as_host():
    import nats
    try:
        nc = await nats.connect(paths["url"], user_credentials=paths["host_creds"], connect_timeout=2,
                                max_reconnect_attempts=0, allow_reconnect=False)
    except Exception as exc:
        return "refused: " + type(exc).__name__
    await nc.close()
    return "CONNECTED"
out["as_host"] = asyncio.run(as_host())
def ask(payload):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.environ["FLEET_CREDENTIALS_SOCKET"])
        s.sendall(payload + b"\n")
        return json.loads(s.makefile().readline())
out["socket_own"] = ask(json.dumps({"session_id": paths["other_session"]}).encode())
out["socket_nested"] = ask(b"[" * 100000)
out["socket_junk"] = ask(b"\xff\xfe not json")
print(json.dumps(out))
'''


def _attack(lf: LiveFleet, paths: dict[str, str]) -> list[str]:
    return [sys.executable, "-c", ATTACK, json.dumps(paths)]


def test_a_session_cannot_read_its_hosts_or_a_neighbours_secrets_nor_act_as_its_host(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, slots=2)
    fin = worker(live_fleet, "w-fin", keys["fin"], MAIN)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    fin_dir, health_dir = live_fleet.agent_dir("w-fin"), live_fleet.agent_dir("w-health")
    shown = live_fleet.by_name()["w-fin"]
    assert shown["sandbox"] == "uid 300000-300999 per slot, pid+mount+ipc namespaces (bubblewrap)"
    with client(live_fleet) as c:
        # a tenant-B session that keeps a secret in its scratch dir while tenant A's session looks for it
        victim = c.submit("health-app", ["sh", "-c", "echo victim-secret > secret; sleep 60"])
        until(c, victim.id, "running")
        victim_secret = wait_for(lambda: next(iter(health_dir.glob("slots/*/scratch/secret")), None), 20, 0.02,
                                 "the tenant-B session's secret in its slot's scratch dir")
        paths = {"host_creds": str(fin_dir / "host.creds"), "identity": str(fin_dir / "identity.json"),
                 "neighbour_creds": str(health_dir / "host.creds"),
                 "neighbour_identity": str(health_dir / "identity.json"),
                 "neighbour_scratch": str(victim_secret),
                 "init_environ": "/proc/1/environ", "init_mem": "/proc/1/mem",
                 "trust_admin": str(live_fleet.trust.root / "admin.creds"),
                 "trust_account": str(live_fleet.trust.root / "account.nk"),
                 "url": live_fleet.url, "other_session": victim.id}
        s = c.submit("my-fintech-app", _attack(live_fleet, paths), env={"API_TOKEN": "mine"})
        done = until(c, s.id, {"succeeded", "failed"})
        assert done.phase == "succeeded" and done.host == fin, done.output_tail
        out = json.loads(done.output_tail.strip().splitlines()[-1])
        c.cancel(victim.id)
    for name in ("host_creds", "identity", "neighbour_creds", "neighbour_identity", "neighbour_scratch",
                 "trust_admin", "trust_account", "init_environ", "init_mem"):
        assert out[name] in ("PermissionError", "FileNotFoundError"), (name, out[name])
    assert out["as_host"].startswith("refused"), out["as_host"]
    assert 300000 <= out["uid"] <= 300999 and out["uid"] != os.getuid()
    assert set(out["caps"].values()) == {"0000000000000000"}, out["caps"]  # no capability, not even bounded
    # the environment: the submitter's variables and the documented FLEET_* ones; nothing of the agent's
    env = out["env"]
    assert env["API_TOKEN"] == "mine" and env["FLEET_CREDENTIALS_SOCKET"] == "/run/fleet/session.sock"
    assert not any(str(fin_dir) in v for k, v in env.items() if k not in ("HOME", "TMPDIR", "PWD"))
    assert "FLEET_ENROLL_KEY" not in env and "FLEET_NATS_CREDS" not in env
    # the credential socket answers for its own session, whatever the request names; hostile input is refused
    assert out["socket_own"]["ok"] and out["socket_own"]["session_id"] == s.id
    assert out["socket_own"]["tenant"] == "fin-prod"
    assert out["socket_nested"]["ok"] is False and out["socket_junk"]["ok"] is False


def _daemon_pid(marker: str) -> int:
    """The outside PID of the detached `sleep` a session started (found by its unique argument)."""
    def find() -> int | None:
        for proc in psutil.process_iter(["cmdline"]):
            if (proc.info["cmdline"] or [])[-1:] == [marker]:
                return proc.pid
        return None
    return wait_for(find, 20, 0.02, f"the session's detached sleep {marker}")


@pytest.mark.parametrize("ending", ["succeeded", "cancelled", "timed_out"])
def test_nothing_a_session_started_outlives_it(live_fleet: LiveFleet, ending: str) -> None:
    keys = setup(live_fleet, slots=2)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    go = live_fleet.root / f"go-{ending}"
    naps = {"succeeded": "300.1", "cancelled": "300.2", "timed_out": "300.3"}
    script = (f"setsid nohup sleep {naps[ending]} >/dev/null 2>&1 & "
              f"while [ ! -e {go} ]; do sleep 0.02; done; echo ended")
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", script], timeout=4 if ending == "timed_out" else None)
        until(c, s.id, "running")
        pid = _daemon_pid(naps[ending])
        assert psutil.Process(pid).uids().real != os.getuid()  # the session's own uid, not the agent's
        if ending == "succeeded":
            go.touch()
        elif ending == "cancelled":
            c.cancel(s.id)
        done = until(c, s.id, ending, 30)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 1.0,
                 0.01, f"detached sleep {pid} gone after the session {ending}")
    assert done.phase == ending
    # what it left in its slot's scratch dir is gone, and so is its credential socket
    state = live_fleet.agent_dir("w-fin")
    assert all(not any(d.iterdir()) for d in state.glob("slots/*/scratch"))
    assert not any(state.glob("slots/*/session.sock")) and not any((state / "s").glob("*.sock"))


def _no_bwrap_path(tmp_path: Path) -> str:
    """A PATH with what an agent needs but no bubblewrap: a host that cannot sandbox."""
    bin_dir = tmp_path / "bin-no-bwrap"
    bin_dir.mkdir()
    for tool in ("sh", "true", "setpriv", "echo", "id"):
        found = next((Path(d) / tool for d in ("/usr/bin", "/bin") if (Path(d) / tool).exists()), None)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_a_host_that_cannot_sandbox_refuses_sessions_unless_its_pool_says_isolation_none(
        live_fleet: LiveFleet, tmp_path: Path) -> None:
    keys = setup(live_fleet, slots=2)
    path = _no_bwrap_path(tmp_path)
    agent = live_fleet.procs.spawn("agent-strict", [*_agent_argv(live_fleet, "strict", MAIN)],
                                   env={"FLEET_ENROLL_KEY": keys["fin"], "PATH": path})
    assert agent.popen.wait(timeout=60) != 0
    said = agent.output()
    assert "cannot run sessions isolated" in said and "bubblewrap" in said and MAIN in said, said
    # the same host in a pool that allows it: it runs sessions, unisolated, and says so
    lay = layout(slots=2)
    for pool in lay["pools"]:
        if pool["id"] == HEALTH:
            pool["isolation"] = "none"
    live_fleet.layout = lay
    applied = live_fleet.apply()
    plan = run_cli("plan", "-f", str(live_fleet.fleet_file), "--nats", live_fleet.url, env=live_fleet.secrets)
    for said in (applied.output, plan.output):
        assert f"warning: pool {HEALTH} runs sessions without isolation" in said, said
    live_fleet.procs.spawn("agent-loose", [*_agent_argv(live_fleet, "loose", HEALTH)],
                           env={"FLEET_ENROLL_KEY": keys["health"], "PATH": path})
    host = live_fleet.wait_status("loose", "active", 30)
    assert host["sandbox"].startswith("none: sessions run as the agent (bubblewrap is not installed")
    with client(live_fleet) as c:
        s = c.submit("health-app", ["/bin/sh", "-c", "id -u"])
        done = until(c, s.id, {"succeeded", "failed"})
    assert done.phase == "succeeded" and done.output_tail.strip() == str(os.getuid())


def _agent_argv(lf: LiveFleet, name: str, pool: str) -> list[str]:
    from tests.conftest import FAST_HEARTBEAT, fleet_argv
    return fleet_argv("agent", "run", "--nats", lf.url, "--state-dir", str(lf.agent_dir(name)), "--hostname", name,
                      "--heartbeat-interval", str(FAST_HEARTBEAT), "--join-timeout", "20", "--creds",
                      lf.creds("enroll"), "--pool", pool)


KEYS_AND_QUEUES = r'''
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "leave":  # a key in the uid's keyring (add_key) and a POSIX message queue: both outlive processes
    assert libc.syscall(248, b"user", b"leak", b"s3cret", 6, -4) > 0, ctypes.get_errno()
    assert ctypes.CDLL("librt.so.1", use_errno=True).mq_open(b"/leak", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0
else:
    buf = ctypes.create_string_buffer(4096)
    n = libc.syscall(250, 11, -4, buf, 4096)  # keyctl(KEYCTL_READ, @u): the ids of its keys, 4 bytes each
    print("KEYS", max(n, 0) // 4, "QUEUES", len(os.listdir("/dev/mqueue")))
'''


def test_the_next_session_in_a_slot_finds_nothing_of_the_last_one(live_fleet: LiveFleet) -> None:
    """Sessions reuse a slot (its uid and namespaces) one at a time: whatever one leaves (files in its scratch dir,
    /tmp, /var/tmp and /dev/shm, unwritable dirs, a detached process, a key in its uid's keyring, a POSIX message
    queue, an attack on the slot's init) is gone before the next one starts; what the init cannot remove (a SysV IPC object) gets the slot discarded for a new one."""
    keys = setup(live_fleet, slots=1)
    worker(live_fleet, "w-fin", keys["fin"], MAIN)
    probe = KEYS_AND_QUEUES.replace("'", "\"")
    assert "'" not in probe
    litter = (f"python3 -c '{probe}' leave; "
              "for d in $HOME /tmp /var/tmp /dev/shm; do echo left > $d/leak; done; mkdir -p /tmp/d/e; "
              "chmod 000 /tmp/d/e /tmp/d; setsid nohup sleep 300.4 >/dev/null 2>&1 & "
              "kill -KILL 1; kill -STOP 1; kill -TERM 1; id -u")
    look = ("id -u; echo FILES $(find $HOME /tmp /var/tmp /dev/shm -mindepth 1 -maxdepth 1 -user $(id -u)); "
            "echo PROCS $(ps -e -o comm=); echo IPC $(ipcs -m | grep -c '^0x' || true); "
            f"python3 -c '{probe}' look")
    with client(live_fleet) as c:
        def run(cmd: str) -> list[str]:
            s = c.submit("my-fintech-app", ["sh", "-c", cmd])
            done = until(c, s.id, {"succeeded", "failed"})
            assert done.phase == "succeeded", done.output_tail
            return done.output_tail.strip().splitlines()
        first = run(litter)
        after = run(look)
        assert after[0] == first[-1]  # the same slot (its uid): one slot, sessions one at a time
        assert after[1] == "FILES" and after[3] == "IPC 0", after  # no file of its uid left, no IPC object
        assert after[4] == "KEYS 0 QUEUES 0", after  # no key in the uid's keyring, no message queue
        # no process but the init and this command's own (no pipe: a `| sort` child may not have exec'd yet)
        assert set(after[2].split()[1:]) == {INIT_COMM, "ps", "sh"}, after
        assert run("ipcmk -M 4096 >/dev/null; id -u") == [first[-1]]
        fresh = run(look)
        assert fresh[0] != first[-1] and fresh[3] == "IPC 0", fresh  # a new slot: a new uid, no IPC object
