"""Defects of the CLI found by trying it as a new user would (issue 15), on a live fleet: each test failed before its fix.

Real nats-server, real `fleet server`, real agents, the real `fleet` CLI as a subprocess (clihelpers.fleet). Covers:
`fleet route set --apply` (applies, or leaves fleet.yaml byte for byte as it was), `fleet hosts resume` of a host
that fleet.yaml declares draining (refused with the reason, instead of "is now active" undone within seconds),
Ctrl-C in `fleet submit --wait` and `fleet sessions logs --follow` (what happens to the session and the command
that follows it again, not an apply's lock), `fleet route show` (the applied policy, a pending difference with the
file marked), `fleet route list`, an unknown project (did you mean, and a command that lists the applied projects),
`fleet sessions logs --json`, and the "did not converge" error (its list on lines of their own).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from fleet.bus.applied import ApplyLock
from fleet.bus.embedded import free_port
from tests.conftest import LiveFleet, wait_for

from .clihelpers import EXAMPLE, SECRETS, fleet, popen

pytestmark = pytest.mark.integration

SWAP = ["route", "set", "my-fintech-app", "--preferred-pool", "pool-cloud-e2b", "--fallback-pool", "pool-local-main"]


def applied_example(live_fleet: LiveFleet, tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(EXAMPLE.read_text())
    r = fleet(["apply", "--auto-approve"], live_fleet.url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return path


def show(url: str, cwd: Path, *args: str) -> dict:
    r = fleet(["route", "show", *args, "--format", "json"], url, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_route_set_apply_applies_or_leaves_the_file_as_it_was(live_fleet: LiveFleet, tmp_path: Path) -> None:
    url = live_fleet.url
    path = applied_example(live_fleet, tmp_path)
    before = path.read_bytes()

    # the apply lock is held by someone else: exit 5, and fleet.yaml is byte for byte what it was
    async def hold_lock() -> None:
        async with await live_fleet.bus("admin") as bus:
            await (await ApplyLock.open(bus)).acquire("another apply (test)")

    asyncio.run(hold_lock())
    r = fleet([*SWAP, "--apply"], url, cwd=tmp_path)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert path.read_bytes() == before
    assert "fleet.yaml is back as it was: nothing was applied" in r.stderr
    assert show(url, tmp_path, "my-fintech-app")["preferred_pool"]["id"] == "pool-local-main"  # nor was it applied

    # no NATS at all: exit 69 (retry), the file untouched
    closed = f"nats://127.0.0.1:{free_port()}"
    r = fleet([*SWAP, "--apply", "--nats", closed, "--connect-timeout", "1"], url, cwd=tmp_path)
    assert r.returncode == 69, r.stdout + r.stderr
    assert path.read_bytes() == before and "back as it was" in r.stderr

    # the lock is free again (forced here): it applies, and the applied policy is the new one
    async def free_lock() -> None:
        async with await live_fleet.bus("admin") as bus:
            lock = await ApplyLock.open(bus)
            held = await lock.current()
            assert held is not None
            await lock.force_unlock(held.id)

    asyncio.run(free_lock())
    r = fleet([*SWAP, "--apply"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Apply complete! Resources: 0 added, 1 changed, 0 destroyed" in r.stdout
    after = path.read_text()
    assert after != before.decode() and "preferred_pool: pool-cloud-e2b" in after
    data = show(url, tmp_path, "my-fintech-app")
    assert (data["preferred_pool"]["id"], data["fallback_pool"]["id"], data["pending"]) == (
        "pool-cloud-e2b", "pool-local-main", None)
    assert fleet(["plan", "--detailed-exitcode"], url, cwd=tmp_path).returncode == 0


def test_route_show_is_the_applied_policy_and_marks_what_the_file_would_change(live_fleet: LiveFleet,
                                                                              tmp_path: Path) -> None:
    url = live_fleet.url
    applied_example(live_fleet, tmp_path)
    r = fleet(SWAP, url, cwd=tmp_path)  # edits fleet.yaml only
    assert r.returncode == 0, r.stderr
    r = fleet(["route", "show", "my-fintech-app"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["Project:          my-fintech-app",
                         "Preferred pool:   pool-local-main  (local, persistent)",
                         "Fallback pool:    pool-cloud-e2b   (e2b, on_demand)",
                         "Routing mode:     preferred-with-fallback"], r.stdout
    assert lines[4] == ("Pending:          fleet.yaml differs: preferred_pool pool-local-main → pool-cloud-e2b; "
                        "fallback_pool pool-cloud-e2b → pool-local-main (not applied: `fleet plan` shows it, "
                        "`fleet apply` applies it)"), r.stdout
    data = show(url, tmp_path, "my-fintech-app")
    assert data["source"] == "applied" and data["pending"]["changes"] == [
        {"attribute": "preferred_pool", "applied": "pool-local-main", "file": "pool-cloud-e2b"},
        {"attribute": "fallback_pool", "applied": "pool-cloud-e2b", "file": "pool-local-main"}]
    file_view = show(url, tmp_path, "my-fintech-app", "--from-file")
    assert (file_view["source"], file_view["preferred_pool"]["id"]) == ("file", "pool-cloud-e2b")

    # route list: every applied project, PENDING where the file differs
    r = fleet(["route", "list"], url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert sorted(rows) == ["clinical-notes", "ledger-batch", "my-fintech-app"], r.stdout
    assert rows["my-fintech-app"][-1] == "yes" and rows["ledger-batch"][-1] == "-"

    # an unknown project: did you mean (among the applied ones), and what lists them
    r = fleet(["route", "show", "my-fintech-ap"], url, cwd=tmp_path)
    assert r.returncode == 64
    assert "hint: did you mean 'my-fintech-app'? `fleet route list` lists the applied projects" in r.stderr
    r = fleet(["submit", "-p", "my-fintech-ap", "--", "true"], url, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error: no project my-fintech-ap in the applied config\n"), r.stderr
    assert "hint: did you mean 'my-fintech-app'? `fleet route list` lists the applied projects" in r.stderr


def test_hosts_resume_of_a_host_that_fleet_yaml_declares_draining_is_refused_with_the_reason(
        live_fleet: LiveFleet, tmp_path: Path) -> None:
    url = live_fleet.url
    path = applied_example(live_fleet, tmp_path)
    live_fleet.agent("d1", "--pool", "pool-local-main", key=SECRETS["FLEET_KEY_LOCAL_DEV"])
    mid = live_fleet.wait_status("d1", "active", 30)["id"]
    path.write_text(path.read_text() + f"\nhosts:\n  - id: {mid}\n    status: draining\n")
    assert fleet(["apply", "--auto-approve", "--wait-timeout", "30"], url, cwd=tmp_path).returncode == 0
    live_fleet.wait_status("d1", "draining")

    r = fleet(["hosts", "resume", mid[:8]], url, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is now" not in r.stdout
    assert f"error: host {mid} (d1) is declared draining in fleet.yaml (`hosts:`)" in r.stderr
    assert "hint: change or remove its entry under `hosts:` in fleet.yaml" in r.stderr and "fleet apply" in r.stderr
    assert live_fleet.by_name()["d1"]["status"] == "draining"  # it was never told to resume
    # what agrees with the declaration goes through; what fleet.yaml does not declare is not held up
    r = fleet(["hosts", "drain", mid], url, cwd=tmp_path)
    assert r.returncode == 0 and "is now draining" in r.stdout, r.stderr


def _session_started(proc: subprocess.Popen, out: list[str]) -> bool:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    out.append(line)
    return "started" in "".join(out)


def _interrupted(args: list[str], url: str, cwd: Path, what: str) -> tuple[int, str]:
    """Run a fleet command until it has printed its first line of session output, then Ctrl-C it: its exit code
    and what it said on stderr."""
    proc = popen(args, url, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out: list[str] = []
        wait_for(lambda: _session_started(proc, out), 30, 0, what)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_ctrl_c_in_submit_wait_and_logs_follow_says_the_session_keeps_running_and_how_to_follow_it(
        live_fleet: LiveFleet, tmp_path: Path) -> None:
    url = live_fleet.url
    applied_example(live_fleet, tmp_path)
    live_fleet.agent("c1", "--pool", "pool-local-main", key=SECRETS["FLEET_KEY_LOCAL_DEV"])
    live_fleet.wait_status("c1", "active", 30)
    go = live_fleet.shared / "go"
    script = f"echo started; sleep 0.3; echo waiting; while [ ! -e {go} ]; do sleep 0.05; done; echo finished"

    code, err = _interrupted(["submit", "-p", "my-fintech-app", "--wait", "--", "sh", "-c", script], url, tmp_path,
                             "the session's first line")
    assert code == 130, err
    assert "apply" not in err and "lock" not in err, err
    sid = re.search(r"stopped waiting for session (\w{20}), which keeps running on the fleet", err)
    assert sid, err
    hint = re.search(r"follow it again with `(fleet sessions logs \w{20} --follow)`", err)
    assert hint and sid.group(1) in hint.group(1), err
    shown = json.loads(fleet(["sessions", "show", sid.group(1), "--json"], url, cwd=tmp_path).stdout)
    assert shown["phase"] == "running"  # Ctrl-C stopped the waiting, not the session

    # the command it names follows the session; Ctrl-C in it says how to resume
    code, err = _interrupted(hint.group(1).split()[1:], url, tmp_path, "the output so far")
    assert code == 130 and "apply" not in err, err
    assert "stopped following the output; the session keeps running" in err
    assert f"resume with `fleet sessions logs {sid.group(1)} --follow`" in err

    # and --json follows it to its end, one object per line
    go.touch()
    r = fleet(["sessions", "logs", sid.group(1), "--follow", "--json"], url, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert "".join(x.get("text", "") for x in lines) == "started\nwaiting\nfinished\n"
    assert lines[-1] == {"session": sid.group(1), "end": True, "phase": "succeeded", "exit_code": 0}


def test_did_not_converge_lists_each_host_on_its_own_line(live_fleet: LiveFleet, tmp_path: Path) -> None:
    """A host that cannot converge (its agent is stopped, SIGSTOP, in a pool whose disconnect grace keeps it live):
    the error lists it on a line of its own (it was `…within 1s:\\n  - f1: …`, one line with a literal \\n)."""
    url = live_fleet.url
    path = tmp_path / "fleet.yaml"
    text = EXAMPLE.read_text().replace("    disconnect_grace: 6s\n", "    disconnect_grace: 10m\n", 1)  # pool-local-main
    assert "disconnect_grace: 10m" in text
    path.write_text(text)
    assert fleet(["apply", "--auto-approve"], url, cwd=tmp_path).returncode == 0
    agent = live_fleet.agent("f1", "--pool", "pool-local-main", key=SECRETS["FLEET_KEY_LOCAL_DEV"])
    mid = live_fleet.wait_status("f1", "active", 30)["id"]
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        path.write_text(text + f"\nhosts:\n  - id: {mid}\n    status: paused\n")
        r = fleet(["apply", "--auto-approve", "--wait-timeout", "1"], url, cwd=tmp_path)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "\\n" not in r.stderr
    lines = r.stderr.splitlines()
    head = lines.index("error: applied, but 1 host change(s) did not converge within 1s:")
    assert lines[head + 1] == "  - f1: active, fleet.yaml says paused", r.stderr
    assert lines[head + 2].startswith("hint: check those hosts with `fleet show ID`")
