"""Integration tests of `fleet plan` / `fleet apply` against a real nats-server (no mocks).

plan on an empty store -> apply -> plan shows no changes; edits give exit 2 and the expected diff; a stale saved
plan is refused with the list of what changed; two concurrent applies: exactly one holds the lock; SIGKILL of an
apply midway: the lock expires by TTL, re-plan shows the remaining changes, re-apply converges; secrets appear
in no output and not in the KV store.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleet.bus.applied import BUCKET_LOCKS
from fleet.bus.connection import connect
from fleet.bus.subjects import BUCKET_CONFIG, BUCKET_SECRETS
from fleet.errors import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_STALE_PLAN, EXIT_USAGE
from fleet.schema.generate import synthetic_fleet

from .clihelpers import EXAMPLE, SECRETS, fleet, popen

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "fleet.yaml").write_text(EXAMPLE.read_text())
    return tmp_path


def plan_json(url: str, cwd: Path, *args: str) -> dict:
    r = fleet(["plan", "--format", "json", *args], url, cwd=cwd)
    assert r.returncode in (0, 2), r.stderr
    return json.loads(r.stdout)


def test_empty_store_apply_then_no_changes(nats_server, workdir):
    url = nats_server.url
    r = fleet(["plan", "--detailed-exitcode"], url, cwd=workdir)
    assert r.returncode == 2, r.stderr
    assert "Plan: 17 to add, 0 to change, 0 to destroy." in r.stdout
    r = fleet(["apply", "--auto-approve"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "Apply complete! Resources: 17 added, 0 changed, 0 destroyed" in r.stdout
    r = fleet(["plan", "--detailed-exitcode"], url, cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No changes." in r.stdout
    assert plan_json(url, workdir)["no_op"] is True

    # edit the file: exit 2 and exactly the expected diff
    path = workdir / "fleet.yaml"
    path.write_text(path.read_text().replace("max_concurrent_sessions: 4   # slots per host", "max_concurrent_sessions: 6"))
    r = fleet(["plan", "--detailed-exitcode"], url, cwd=workdir)
    assert r.returncode == 2
    data = plan_json(url, workdir)
    assert [(c["address"], c["action"]) for c in data["changes"]] == [("pool.pool-local-main", "update")]
    attr = data["changes"][0]["attributes"][0]
    assert (attr["path"], attr["before"], attr["after"]) == ("capacity.max_concurrent_sessions", 4, 6)
    assert data["summary"] == {"add": 0, "change": 1, "destroy": 0}


def test_apply_refuses_without_approval_in_ci(nats_server, workdir):
    r = fleet(["apply"], nats_server.url, cwd=workdir)
    assert r.returncode == EXIT_USAGE
    assert "--auto-approve" in r.stderr and "Traceback" not in r.stderr
    assert plan_json(nats_server.url, workdir)["summary"]["add"] == 17, "nothing was written"


def test_stale_saved_plan_is_refused_with_the_changes(nats_server, workdir):
    url = nats_server.url
    r = fleet(["plan", "--out", "empty-plan.json"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert fleet(["apply", "--auto-approve"], url, cwd=workdir).returncode == 0
    r = fleet(["apply", "empty-plan.json"], url, cwd=workdir)
    assert r.returncode == EXIT_STALE_PLAN
    assert "the saved plan is stale" in r.stderr
    assert "pool.pool-local-main was created" in r.stderr and "tenant.fin-prod was created" in r.stderr

    # a fresh saved plan applies; then a concurrent change makes the next one stale
    path = workdir / "fleet.yaml"
    path.write_text(path.read_text().replace("max_uses: 50", "max_uses: 60"))
    assert fleet(["plan", "--out", "p1.json"], url, cwd=workdir).returncode == 0
    other = workdir / "other.yaml"
    other.write_text(path.read_text().replace("hosts: {min: 2, max: 4}", "hosts: {min: 2, max: 5}"))
    assert fleet(["apply", "--auto-approve", "-f", str(other)], url, cwd=workdir).returncode == 0
    r = fleet(["apply", "p1.json"], url, cwd=workdir)
    assert r.returncode == EXIT_STALE_PLAN
    assert re.search(r"pool\.pool-local-main changed \(revision \d+ -> \d+\)", r.stderr), r.stderr
    # an unchanged basis applies without prompting
    assert fleet(["plan", "--out", "p2.json"], url, cwd=workdir).returncode == 0
    r = fleet(["apply", "p2.json"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert fleet(["plan", "--detailed-exitcode"], url, cwd=workdir).returncode == 0


def _read_until(fd: int, pattern: str, timeout: float = 30.0) -> str:
    buf = ""
    deadline = time.monotonic() + timeout
    while pattern not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"did not see {pattern!r} in {buf[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                buf += os.read(fd, 65536).decode(errors="replace")
            except OSError:
                break
    return buf


def test_two_concurrent_applies_one_wins_other_names_the_holder(nats_server, workdir):
    url = nats_server.url
    # apply #1 on a terminal: it takes the lock, shows the plan and waits at the confirmation prompt
    master, slave = pty.openpty()
    first = popen(["apply"], url, cwd=workdir, stdin=slave, stdout=slave, stderr=slave,
                  env_extra={"CI": "", "FLEET_LOCK_TTL": "2"})
    os.close(slave)
    try:
        out = _read_until(master, "Enter a value")
        assert "Acquired the apply lock" in out
        lock_id = re.search(r"Acquired the apply lock (\w+)", out).group(1)
        time.sleep(5)  # longer than the lock's 2 s TTL: the waiting apply keeps refreshing it
        second = fleet(["apply", "--auto-approve"], url, cwd=workdir)
        assert second.returncode == EXIT_LOCKED
        assert f"the apply lock is held: lock {lock_id} held by" in second.stderr
        assert "fleet apply" in second.stderr and "force-unlock" in second.stderr
        os.write(master, b"yes\n")
        out = _read_until(master, "Apply complete!")
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
        os.close(master)
    # the winner released the lock: the next apply finds nothing to do
    r = fleet(["apply", "--auto-approve"], url, cwd=workdir)
    assert r.returncode == 0 and "No changes." in r.stdout


def test_lock_timeout_waits_for_the_holder(nats_server, workdir):
    """An apply started with --lock-timeout while another holder has the lock keeps retrying, writes nothing
    while the lock is held, then takes the lock once it is released and applies everything."""
    url = nats_server.url

    async def hold_while_the_second_apply_waits() -> tuple[subprocess.Popen, str]:
        from fleet.bus.applied import ApplyLock, ConfigStore

        async with await connect(url) as bus:
            lock = await ApplyLock.open(bus)
            held = await lock.acquire("test holder")
            config = await ConfigStore.open(bus)
            # every attempt to take the lock is a KV create (a publish on the lock's subject expecting no previous
            # value); refreshes expect the holder's revision and releases carry no payload: count the creates
            tries: list[dict] = []

            async def on_try(msg) -> None:
                if msg.data and (msg.headers or {}).get("Nats-Expected-Last-Subject-Sequence") == "0":
                    tries.append(json.loads(msg.data))

            await bus.subscribe(f"$KV.{BUCKET_LOCKS}.apply", on_try)
            await bus.flush()
            second = popen(["apply", "--auto-approve", "--lock-timeout", "120"], url, cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 60  # a guard against a hang, not a timing assert
                # a refused create and a retry: the second apply is waiting for us, not failing or done
                while sum(t["holder"].endswith(f" pid {second.pid}") for t in tries) < 2:
                    assert second.poll() is None, "the second apply ended while the lock was held: " \
                        + "".join(second.communicate())
                    assert time.monotonic() < deadline, "the second apply never tried to take the lock"
                    await asyncio.sleep(0.05)
                current = await lock.current()
                assert current is not None and current.id == held.id, "the lock changed hands while it was held"
                assert (await config.snapshot()).revision == 0, "the second apply wrote while the lock was held"
                assert second.poll() is None
            except BaseException:
                if second.poll() is None:
                    second.kill()
                    second.communicate()
                raise
            finally:
                await lock.release()
        return second, held.id

    second, first_lock = asyncio.run(hold_while_the_second_apply_waits())
    try:
        out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert second.returncode == 0, err
    acquired = re.search(r"Acquired the apply lock (\w+)", err)
    assert acquired and acquired.group(1) != first_lock, err
    assert "Apply complete! Resources: 17 added, 0 changed, 0 destroyed" in out
    assert plan_json(url, workdir)["no_op"] is True


def test_sigkill_midway_lock_expires_and_reapply_converges(nats_server, tmp_path):
    url = nats_server.url
    (tmp_path / "fleet.yaml").write_text(synthetic_fleet(pools=1500, projects=300, keys=0))
    env = {"FLEET_LOCK_TTL": "5"}  # refreshed every 1.7 s: room for a loaded 2-core machine, short enough to wait out
    proc = popen(["apply", "--auto-approve"], url, cwd=tmp_path, env_extra=env, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    total = 1 + 2 + 300 + 1500 + 300  # org, tenants, projects, pools, routes
    while not re.search(rf"\((\d+)/{total}\)", seen):  # the first progress line: ~10% written
        assert time.monotonic() < deadline, seen
        line = proc.stderr.readline()
        assert line, f"apply ended early: {seen}"
        seen += line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()

    data = plan_json(url, tmp_path)
    remaining = data["summary"]["add"]
    assert 0 < remaining < total, remaining
    # the lock is still held by the dead apply ...
    r = fleet(["apply", "--auto-approve"], url, cwd=tmp_path, **env)
    if r.returncode == EXIT_LOCKED:
        assert "the apply lock is held" in r.stderr
        r = fleet(["apply", "--auto-approve", "--lock-timeout", "20"], url, cwd=tmp_path, **env)
    # ... until its TTL frees it; then the re-apply converges
    assert r.returncode == 0, r.stderr
    assert f"{remaining} added" in r.stdout
    assert fleet(["plan", "--detailed-exitcode"], url, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_midway_releases_the_lock_at_once(nats_server, tmp_path, sig):
    """A cancelled CD job (SIGTERM), a dropped SSH session (SIGHUP) and Ctrl-C (SIGINT) all stop the apply between
    writes and release its lock: the next apply needs no --lock-timeout and no force-unlock (the TTL here is 60 s,
    so a lock left behind would make it fail)."""
    url = nats_server.url
    (tmp_path / "fleet.yaml").write_text(synthetic_fleet(pools=1500, projects=300, keys=0))
    env = {"FLEET_LOCK_TTL": "60"}
    proc = popen(["apply", "--auto-approve"], url, cwd=tmp_path, env_extra=env, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 60
    total = 1 + 2 + 300 + 1500 + 300
    while not re.search(rf"\((\d+)/{total}\)", seen):  # the first progress line: ~10% written
        assert time.monotonic() < deadline, seen
        line = proc.stderr.readline()
        assert line, f"apply ended early: {seen}"
        seen += line
    proc.send_signal(sig)
    rest = proc.stderr.read()
    assert proc.wait(20) == EXIT_INTERRUPTED, rest
    assert f"error: interrupted by {sig.name}" in rest and "Traceback" not in rest
    remaining = plan_json(url, tmp_path)["summary"]["add"]
    assert 0 < remaining < total, remaining
    r = fleet(["apply", "--auto-approve"], url, cwd=tmp_path, **env)  # no lock left behind: at once
    assert r.returncode == 0, r.stderr
    assert f"{remaining} added" in r.stdout


def test_secrets_never_in_outputs_or_kv(nats_server, workdir):
    url = nats_server.url
    outputs = []
    for fmt in ("human", "json", "markdown"):
        r = fleet(["plan", "--format", fmt], url, cwd=workdir)
        outputs.append(r.stdout + r.stderr)
    r = fleet(["apply", "--auto-approve", "--reveal-keys-to", "keys.txt"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    outputs.append(r.stdout + r.stderr)
    revealed = (workdir / "keys.txt").read_text()
    assert oct((workdir / "keys.txt").stat().st_mode & 0o777) == "0o600"
    generated = dict(line.split("=", 1) for line in revealed.split())
    assert set(generated) == {"ci-runners"}
    # rotate one env secret: plan shows (sensitive), never the value
    rotated = {"FLEET_KEY_LOCAL_DEV": "0b9d4e6f8a1c3e5b7d9f0a2c4e6b8d1f"}
    for fmt in ("human", "json", "markdown"):
        r = fleet(["plan", "--format", fmt], url, cwd=workdir, **rotated)
        outputs.append(r.stdout + r.stderr)
        assert "key.local-dev" in r.stdout
    assert "(sensitive)" in outputs[-3]
    everything = "\n".join(outputs)
    kv_dump = asyncio.run(_dump_stream(url, f"KV_{BUCKET_CONFIG}")) + asyncio.run(_dump_stream(url, f"KV_{BUCKET_LOCKS}"))
    for secret in [*SECRETS.values(), *generated.values(), rotated["FLEET_KEY_LOCAL_DEV"]]:
        assert secret not in everything
        assert secret.encode() not in kv_dump
    import hashlib

    digest = _digest(url, SECRETS["FLEET_KEY_LOCAL_DEV"])
    assert digest.encode() in kv_dump, "the keyed digest is stored"
    assert digest not in everything
    # and not the plain SHA-256 of old: a dump of the config bucket alone does not allow guessing offline
    assert hashlib.sha256(SECRETS["FLEET_KEY_LOCAL_DEV"].encode()).hexdigest().encode() not in kv_dump


async def _dump_stream(url: str, stream: str) -> bytes:
    """Every message ever stored in a stream (all history), raw."""
    async with await connect(url) as bus:
        js = bus.js
        try:
            info = await js.stream_info(stream)
        except Exception:
            return b""
        out = b""
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except Exception:
                continue
            out += (msg.data or b"") + b"\n"
        return out


def test_force_unlock(nats_server, workdir):
    url = nats_server.url

    async def leave_lock() -> str:
        from fleet.bus.applied import ApplyLock

        async with await connect(url) as bus:
            lock = await ApplyLock.open(bus)
            info = await lock.acquire("abandoned apply")
            lock.info = None  # walk away without releasing, like a killed process
            lock._refresher.cancel()
            return info.id

    lock_id = asyncio.run(leave_lock())
    r = fleet(["apply", "--auto-approve"], url, cwd=workdir)
    assert r.returncode == EXIT_LOCKED and lock_id in r.stderr
    r = fleet(["force-unlock", "nope"], url, cwd=workdir)
    assert r.returncode == 1 and f"fleet force-unlock {lock_id}" in r.stderr
    r = fleet(["force-unlock", lock_id], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert fleet(["apply", "--auto-approve"], url, cwd=workdir).returncode == 0


def test_a_malformed_lock_is_held_by_unknown_and_force_unlock_clears_it(nats_server, workdir):
    """Whoever wrote garbage into the lock (nobody may but admins and the server), apply says who holds it and
    force-unlock clears it; apply never crashes parsing it."""
    url = nats_server.url

    async def jam() -> None:
        from fleet.bus.applied import ApplyLock

        async with await connect(url) as bus:
            lock = await ApplyLock.open(bus)
            await lock.store.put("apply", b'{"v": 1, "ok": false, "message": "\x1b[2J"}')

    asyncio.run(jam())
    r = fleet(["apply", "--auto-approve"], url, cwd=workdir)
    assert r.returncode == EXIT_LOCKED and "unknown (a malformed lock record)" in r.stderr, r.stderr
    assert "fleet force-unlock unknown" in r.stderr
    r = fleet(["force-unlock", "unknown"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert fleet(["apply", "--auto-approve"], url, cwd=workdir).returncode == 0


def test_a_malformed_pepper_is_an_explicit_error(nats_server, workdir):
    url = nats_server.url

    async def spoil() -> None:
        from fleet.bus.kv import open_store

        async with await connect(url) as bus:
            await (await open_store(bus, BUCKET_SECRETS, history=1)).put("pepper", b'{"v": 1, "ok": true}')

    asyncio.run(spoil())
    r = fleet(["apply", "--auto-approve"], url, cwd=workdir)
    assert r.returncode == 1 and "pepper of enrollment key digests" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_rerun_after_interrupted_apply_is_idempotent_and_voids_a_regenerated_secret(nats_server):
    """A change already in the store (an earlier apply died after writing it) counts as done; a secret generated
    again for such a key is declared void to the reveal callback, and the stored hash is kept."""
    from fleet.bus.applied import ConfigStore, load_pepper
    from fleet.reconciler.apply import apply_plan
    from fleet.reconciler.desired import desired_resources
    from fleet.reconciler.diff import make_plan
    from fleet.reconciler.gather import gather, key_hashes
    from fleet.reconciler.plan import Basis
    from fleet.schema.api import load_fleet

    cfg = load_fleet(EXAMPLE).config
    events: list[tuple[str, str | None]] = []

    async def run() -> tuple:
        async with await connect(nats_server.url) as bus:
            pepper = await load_pepper(bus, create=True)
            desired = desired_resources(cfg, key_hashes(cfg, SECRETS, pepper)[0])
            store = await ConfigStore.open(bus)
            plan = make_plan(desired, (await gather(store)).live, Basis())
            # the "earlier run": it stored two records, ci-runners with its own generated secret, then died
            earlier = {"pool.pool-local-main": None, "key.ci-runners": "f" * 64}
            for c in plan.changes:
                if c.address in earlier:
                    spec = dict(c.after, secret_digest=earlier[c.address]) if c.kind == "key" else dict(c.after)
                    await store.create(c.kind, c.id, spec)
            report = await apply_plan(store, plan, SECRETS, reveal=lambda k, s: events.append((k, s)), pepper=pepper)
            stored = await store.get("key.ci-runners")
            again = make_plan(desired, (await gather(store)).live, Basis())
            return report, stored, again

    report, stored, again = asyncio.run(run())
    assert report.already == 2 and report.applied == 15
    assert [k for k, _ in events] == ["ci-runners", "ci-runners"] and events[1][1] is None
    assert report.revealed == {}
    assert stored.spec["secret_digest"] == "f" * 64, "the earlier run's secret stays the valid one"
    assert again.no_op


def _digest(url: str, secret: str) -> str:
    from fleet.bus.applied import load_pepper
    from fleet.bus.records import key_digest

    async def pepper() -> bytes | None:
        async with await connect(url) as bus:
            return await load_pepper(bus)

    return key_digest(asyncio.run(pepper()) or b"", secret)


def test_switching_a_key_to_a_generated_secret_rotates_it(nats_server, workdir):
    url = nats_server.url
    assert fleet(["apply", "--auto-approve"], url, cwd=workdir).returncode == 0
    path = workdir / "fleet.yaml"
    path.write_text(path.read_text().replace("secret: {from_env: FLEET_KEY_LOCAL_DEV}", "secret: {generate: true}"))
    r = fleet(["apply", "--auto-approve", "--reveal-keys-to", "keys.txt"], url, cwd=workdir)
    assert r.returncode == 0, r.stderr
    secret = dict(line.split("=", 1) for line in (workdir / "keys.txt").read_text().split())["local-dev"]
    kv = asyncio.run(_dump_stream(url, f"KV_{BUCKET_CONFIG}"))
    assert _digest(url, secret).encode() in kv  # the new secret's digest replaced the old one
    assert fleet(["plan", "--detailed-exitcode"], url, cwd=workdir).returncode == 0
