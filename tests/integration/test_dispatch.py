"""Dispatch end to end: a real nats-server in operator mode, real `fleet server` processes, real agent processes
running real commands. The seed's routing scenarios (preferred, fallback, pending), label matching, a routing
change, pause and drain, revocation, tenant isolation at the claim, and the failures: workers SIGKILLed and
SIGSTOPped mid-run, the dispatcher SIGKILLed mid-run. Sessions are followed through the Python client and the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store
from fleet.bus.messages import (
    FINAL_PHASES,
    MAX_WORK_EVENTS,
    ApiReply,
    SessionRecord,
    SessionView,
    WorkEvent,
    WorkEvents,
    WorkReplies,
    WorkReply,
    decode,
    new_session_id,
)
from fleet.errors import Refused
from fleet.sessions.client import Client, SyncClient
from tests.conftest import LiveFleet, fleet_argv, run_cli, wait_for, wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MAIN, CLOUD, GPU, HEALTH = "pool-local-main", "pool-cloud", "pool-gpu", "pool-health-local"


def layout(*, route: dict[str, Any] | None = None, slots: int = 2) -> dict[str, Any]:
    """Tenant fin-prod: my-fintech-app routed preferred pool-local-main -> fallback pool-cloud (the seed), solo-app
    on pool-local-main only, gpu-app on pool-gpu; tenant health-prod: health-app on its own pool."""
    pool = lambda pid, tenant="fin-prod", **kw: {  # noqa: E731
        "id": pid, "tenant": tenant, "backend": "local", "mode": "persistent",
        "capacity": {"max_concurrent_sessions": slots}, **kw}
    return {
        "tenants": [{"id": "fin-prod"}, {"id": "health-prod"}],
        "projects": [
            {"id": "my-fintech-app", "tenant": "fin-prod", "routing": route or {
                "mode": "preferred-with-fallback", "preferred_pool": MAIN, "fallback_pool": CLOUD}},
            {"id": "solo-app", "tenant": "fin-prod", "routing": {"mode": "preferred-only", "preferred_pool": MAIN}},
            {"id": "gpu-app", "tenant": "fin-prod", "routing": {"mode": "preferred-only", "preferred_pool": GPU}},
            {"id": "health-app", "tenant": "health-prod",
             "routing": {"mode": "preferred-only", "preferred_pool": HEALTH}},
        ],
        "pools": [pool(MAIN), pool(CLOUD), pool(GPU), pool(HEALTH, "health-prod")],
    }


def setup(lf: LiveFleet, **kw: Any) -> dict[str, str]:
    """Apply the layout with one key per tenant; returns the keys' secrets."""
    lf.layout = layout(**kw)
    fin = lf.key("fin", pools=(MAIN, CLOUD, GPU))
    health = lf.key("health", tenant="health-prod", pools=(HEALTH,))
    return {"fin": fin, "health": health}


def worker(lf: LiveFleet, name: str, key: str, pool: str, *args: str) -> str:
    """Start an agent serving `pool`; returns its machine ID once it is active."""
    lf.agent(name, "--pool", pool, *args, key=key)
    return lf.wait_status(name, "active", 30)["id"]


def agent_proc(lf: LiveFleet, name: str) -> Any:
    return next(p for p in lf.procs.procs if p.log.name == f"agent-{name}.out")


def client(lf: LiveFleet, role: str = "admin", creds: str | None = None) -> SyncClient:
    return SyncClient(lf.url, creds=creds or lf.creds(role))


def until(c: SyncClient, sid: str, phases: set[str] | str, timeout: float = 30.0) -> SessionView:
    wanted = {phases} if isinstance(phases, str) else phases
    return wait_for(lambda: (s := c.get(sid)).phase in wanted and s, timeout, 0.05, f"session {sid} {wanted}")


def final_events(s: SessionView) -> list[str]:
    return [e.phase for e in s.history if e.phase in FINAL_PHASES]


def server_log(lf: LiveFleet) -> str:
    assert lf.server is not None
    return lf.server.output()


# ------------------------------------------------------------------------------------------- routing

def test_preferred_then_fallback_then_pending_then_dispatched_when_a_slot_opens(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    main = worker(live_fleet, "w-main", keys["fin"], MAIN)
    cloud = worker(live_fleet, "w-cloud", keys["fin"], CLOUD)
    with client(live_fleet) as c:
        first = [c.submit("my-fintech-app", ["sleep", "60"]) for _ in range(2)]
        assert {s.host for s in first} == {main} and {s.pool for s in first} == {MAIN}
        spill = [c.submit("my-fintech-app", ["sleep", "60"]) for _ in range(2)]
        assert {s.host for s in spill} == {cloud} and {s.pool for s in spill} == {CLOUD}
        waiting = c.submit("my-fintech-app", ["sh", "-c", "echo ran on $FLEET_SESSION_ID"])
        assert waiting.phase == "queued" and waiting.host is None
        assert waiting.reason == f"preferred {MAIN} FULL [2/2], fallback {CLOUD} FULL [2/2]"
        solo = c.submit("solo-app", ["true"])
        assert solo.phase == "queued"

        # the SESSIONS column and `fleet show` are the hosts' own reports
        for s in first + spill:
            until(c, s.id, "running")
        wait_for(lambda: live_fleet.by_name()["w-main"]["sessions"] == {"running": 2, "max": 2}, 10)
        expected = sorted((s.id, "running") for s in first)
        wait_for(lambda: sorted((a["id"], a["phase"]) for a in json.loads(run_cli(
            "show", main, "--json", "--nats", live_fleet.url).output)["active_sessions"]) == expected, 10,
            what="`fleet show` lists the running sessions (its next heartbeat)")
        listed = run_cli("sessions", "list", "--status", "queued", "--nats", live_fleet.url)
        assert waiting.id in listed.output and solo.id in listed.output
        assert "no fallback" in c.get(solo.id).reason  # type: ignore[operator]

        # `fleet route test` sees the same pools full and the real queue
        routed = run_cli("route", "test", "my-fintech-app", "--json", "--nats", live_fleet.url,
                         "-f", str(live_fleet.fleet_file))
        assert routed.exit_code == 0, routed.output
        decision = json.loads(routed.output)
        assert (decision["decision"]["pool"], decision["decision"]["role"]) == (None, "pending"), decision
        # the same reason the dispatcher gave the waiting session: one scheduler
        assert decision["decision"]["reason"]["message"] == waiting.reason
        assert decision["decision"]["reason"]["kind"] == "pool_full"
        assert decision["unplaced"] == {MAIN: {"sessions": 1, "by_reason": {"pool_full": 1}}}
        assert [(p["id"], p["used"], p["total"]) for p in decision["pools"]] == [(MAIN, 2, 2), (CLOUD, 2, 2)]
        assert decision["queued"]["sessions"] == [waiting.id] and decision["queued"]["reason"] == waiting.reason

        # a slot opens on main: the oldest waiting session takes it, the next one waits on
        c.cancel(first[0].id)
        assert until(c, first[0].id, "cancelled").exit_code is not None
        done = until(c, waiting.id, "succeeded")
        assert done.host == main and done.output_tail == f"ran on {waiting.id}\n"
        assert [e.phase for e in done.history] == ["queued", "assigned", "running", "succeeded"]
        assert until(c, solo.id, {"succeeded"}).host == main  # its turn came after: FIFO
        for s in first[1:] + spill:
            c.cancel(s.id)


def test_labels_must_match_and_a_matching_host_takes_the_waiting_session(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-plain", keys["fin"], GPU)
    with client(live_fleet) as c:
        s = c.submit("gpu-app", ["sh", "-c", "echo $FLEET_PROJECT"], labels=["gpu=a100"])
        assert s.phase == "queued"
        assert s.reason == f"preferred pool {GPU}: no host has label gpu=a100, no fallback"
        plain = c.submit("gpu-app", ["true"])  # a session that asks for nothing is not blocked behind it
        assert until(c, plain.id, "succeeded").hostname == "w-plain"
        gpu_key = live_fleet.key("fin-gpu", pools=(GPU,), labels=("gpu=a100",))  # labels come with the key
        gpu = worker(live_fleet, "w-gpu", gpu_key, GPU)
        done = until(c, s.id, "succeeded")
        assert done.host == gpu and done.output_tail == "gpu-app\n"
        assert c.get(s.id).labels == ["gpu=a100"]


def test_a_routes_required_labels_and_model_apply_to_its_sessions_and_show(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet, route={"mode": "preferred-only", "preferred_pool": MAIN,
                                    "required_labels": ["zone=eu"], "model": "claude-3-5-sonnet"})
    worker(live_fleet, "w-plain", keys["fin"], MAIN)
    with client(live_fleet) as c:
        s = c.submit("my-fintech-app", ["true"])
        assert s.phase == "queued" and "zone=eu" in (s.reason or "")
        assert (s.labels, s.route_labels, s.model, s.route_model) == ([], ["zone=eu"], None, "claude-3-5-sonnet")
        own = c.submit("my-fintech-app", ["true"], labels=["zone=eu"], model="gpt-4o")
        assert (own.route_labels, own.route_model) == ([], None)  # the session's own label and model win
        eu_key = live_fleet.key("fin-eu", pools=(MAIN,), labels=("zone=eu",), models=("claude-3-5-sonnet",))
        eu = worker(live_fleet, "w-eu", eu_key, MAIN)
        assert until(c, s.id, "succeeded").host == eu
        assert c.get(own.id).phase == "queued"  # no host of the pool serves gpt-4o
    out = run_cli("sessions", "show", s.id, "--nats", live_fleet.url).output
    assert "zone=eu (the route's)" in out and "claude-3-5-sonnet (the route's)" in out, out


def test_a_routing_change_applies_at_the_next_dispatch_and_in_flight_sessions_stay(live_fleet: LiveFleet,
                                                                                   tmp_path: Path) -> None:
    keys = setup(live_fleet, route={"mode": "preferred-only", "preferred_pool": MAIN})
    main = worker(live_fleet, "w-main", keys["fin"], MAIN)
    cloud = worker(live_fleet, "w-cloud", keys["fin"], CLOUD)
    marker = tmp_path / "go"
    with client(live_fleet) as c:
        before = [c.submit("my-fintech-app", ["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.05; done"])
                  for _ in range(2)]
        assert {s.host for s in before} == {main}
        live_fleet.layout = layout(route={"mode": "preferred-only", "preferred_pool": CLOUD})
        live_fleet.apply()
        after = wait_for(lambda: (s := c.submit("my-fintech-app", ["true"])).pool == CLOUD and s, 10,
                         what="the new route")
        assert after.host == cloud
        marker.touch()
        for s in before:  # they ran to the end where they were
            done = until(c, s.id, "succeeded")
            assert done.host == main and done.pool == MAIN and done.attempt == 1


def test_pause_stops_new_work_drain_finishes_running_work(live_fleet: LiveFleet, tmp_path: Path) -> None:
    keys = setup(live_fleet)
    main = worker(live_fleet, "w-main", keys["fin"], MAIN)
    marker = tmp_path / "go"
    with client(live_fleet) as c:
        running = c.submit("solo-app", ["sh", "-c", f"while [ ! -e {marker} ]; do sleep 0.05; done"])
        until(c, running.id, "running")
        assert run_cli("hosts", "drain", main, "--nats", live_fleet.url).exit_code == 0
        live_fleet.wait_status("w-main", "draining")
        held = c.submit("solo-app", ["true"])
        assert held.phase == "queued" and "no active host (1 draining)" in (held.reason or "")
        marker.touch()
        assert until(c, running.id, "succeeded").host == main  # drain let it finish
        time.sleep(1.0)
        assert c.get(held.id).phase == "queued"
        assert run_cli("hosts", "resume", main, "--nats", live_fleet.url).exit_code == 0
        assert until(c, held.id, "succeeded").host == main
        assert run_cli("hosts", "pause", main, "--nats", live_fleet.url).exit_code == 0
        live_fleet.wait_status("w-main", "paused")
        paused = c.submit("solo-app", ["true"])
        time.sleep(1.0)
        assert c.get(paused.id).phase == "queued"
        assert run_cli("hosts", "resume", main, "--nats", live_fleet.url).exit_code == 0
        until(c, paused.id, "succeeded")


# ------------------------------------------------------------------------------------------- the CLI

def test_fleet_submit_wait_streams_output_and_exits_with_the_commands_code(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-main", keys["fin"], MAIN)
    env = {"FLEET_NATS_URL": live_fleet.url, "FLEET_NATS_CREDS": live_fleet.creds("admin"), "PATH": "/usr/bin:/bin",
           "SECRET_TOKEN": "from-the-shell"}
    run = subprocess.run(fleet_argv("submit", "--project", "solo-app", "--env", "GREETING=hello world",
                                    "--env", "SECRET_TOKEN", "--wait", "--",
                                    "sh", "-c", 'echo "$GREETING"; echo "$SECRET_TOKEN" >&2; exit 7'),
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 7, run.stderr
    sid, *lines = run.stdout.splitlines()
    assert len(sid) == 20 and lines == ["hello world", "from-the-shell"]
    assert f"session {sid} failed (exit 7) on w-main" in run.stderr
    shown = run_cli("sessions", "show", sid, "--nats", live_fleet.url)
    assert shown.exit_code == 0
    assert "Environment:     GREETING, SECRET_TOKEN" in shown.output and "from-the-shell" in shown.output
    assert "hello world" not in json.dumps(json.loads(run_cli("sessions", "show", sid, "--json", "--nats",
                                                              live_fleet.url).output)["env"])
    ok = subprocess.run(fleet_argv("submit", "-p", "solo-app", "--wait", "--", "true"), env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    timed = subprocess.run(fleet_argv("submit", "-p", "solo-app", "--timeout", "0.5", "--wait", "--", "sleep", "30"),
                           env=env, capture_output=True, text=True, timeout=60)
    assert timed.returncode == 124 and "timed_out" in timed.stderr
    missing = subprocess.run(fleet_argv("submit", "-p", "solo-app", "--wait", "--", "/no/such/program"), env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127 and "cannot start" in missing.stdout + missing.stderr
    nope = subprocess.run(fleet_argv("submit", "-p", "no-such-project", "--", "true"), env=env,
                          capture_output=True, text=True, timeout=60)
    assert nope.returncode != 0 and nope.stderr.startswith("error: no project no-such-project")
    assert "Traceback" not in nope.stderr


def test_logs_follow_and_cancel_a_running_session(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-main", keys["fin"], MAIN)
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done; sleep 60"])
        got = ""
        for text in c.logs(s.id, follow=True):
            got += text
            if "line 3" in got:
                break
        assert got == "line 1\nline 2\nline 3\n"
        cancelled = run_cli("sessions", "cancel", s.id[:12], "--nats", live_fleet.url)
        assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
        assert c.get(s.id).phase == "cancelled"
        assert "".join(c.logs(s.id)) .startswith("line 1\n")


# ------------------------------------------------------------------------------------------- isolation

def test_a_worker_of_one_tenant_cannot_claim_or_see_another_tenants_session(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    fin_host = worker(live_fleet, "w-fin", keys["fin"], MAIN)
    health_host = worker(live_fleet, "w-health", keys["health"], HEALTH)
    health_creds = str(live_fleet.agent_dir("w-health") / "host.creds")

    async def attack(session_id: str, fence: int) -> tuple[WorkReply, list[WorkReply], ApiReply, list[str],
                                                           list[str]]:
        bus = await connect(live_fleet.url, creds=health_creds)
        got: list[str] = []

        async def on_msg(msg: Any) -> None:
            got.append(msg.subject)

        try:
            # 1. claim the fin session on its own work subject, with the right session ID and fencing token
            ev = WorkEvent(session=session_id, fence=fence, phase="succeeded", exit_code=0, at=time.time())
            reply = decode(WorkReply, await bus.request(f"{subjects.host_work(health_host)}.event", ev.encode(),
                                                        timeout=5))
            # 1b. the same in a batch on its own `.events` subject, twice, beside a session nobody has: each refused
            other = ev.model_copy(update={"session": new_session_id()})
            batch = WorkEvents(items=[ev, ev, other])
            replies = decode(WorkReplies, await bus.request(f"{subjects.host_work(health_host)}.events",
                                                            batch.encode(), timeout=5)).items
            # 1c. a batch over the bound is refused as a whole, before any event is looked at
            over = b'{"v":1,"items":[%s]}' % b",".join([ev.encode()] * (MAX_WORK_EVENTS + 1))
            too_many = decode(ApiReply, await bus.request(f"{subjects.host_work(health_host)}.events", over,
                                                          timeout=5))
            # 2. the same on the fin host's subject, and listen to the fin host's assignments
            await bus.publish(f"{subjects.host_work(fin_host)}.event", ev.encode())
            await bus.subscribe(subjects.host_assign(fin_host), on_msg)
            await bus.subscribe(f"{subjects.API_SESSIONS}.fin-prod.>", on_msg)
            await bus.flush()
            await asyncio.sleep(0.5)
            return reply, replies, too_many, [text for _, text in bus.denials], got
        finally:
            await bus.close()

    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sleep", "60"])
        running = until(c, s.id, "running")
        assert running.fence is not None
        reply, replies, too_many, denials, seen = asyncio.run(attack(s.id, running.fence))
        assert reply.ok is False and reply.stale is True
        assert [(r.ok, r.stale) for r in replies] == [(False, True)] * 3
        assert too_many.ok is False and too_many.error == "malformed", too_many
        assert any("publish" in d and fin_host in d for d in denials), denials
        assert any("subscription" in d and fin_host in d for d in denials), denials
        assert any("subscription" in d and "sessions.fin-prod" in d for d in denials), denials
        assert seen == []
        still = c.get(s.id)
        assert still.phase == "running" and still.host == fin_host and final_events(still) == []
        wait_for(lambda: f"security: host {health_host} reported succeeded on session {s.id}" in server_log(live_fleet),
                 5, what="the security event in the server log")
        c.cancel(s.id)


def test_a_submitter_is_scoped_to_its_tenant(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    with client(live_fleet, creds=health) as c:
        assert c._client.tenant == "health-prod"
        ok = c.submit("health-app", ["true"], wait=20)
        assert ok.phase == "succeeded"
        with pytest.raises(Refused, match="does not belong to tenant health-prod"):
            c.submit("my-fintech-app", ["true"])
        assert {s.tenant for s in c.list()} == {"health-prod"}
    with client(live_fleet) as admin:
        assert not [s for s in admin.list() if s.project == "my-fintech-app"]  # nothing was stored

    async def around() -> list[str]:  # the fin tenant's session API is not even reachable with these creds
        bus = await connect(live_fleet.url, creds=health)
        try:
            await bus.publish(subjects.api_sessions("fin-prod", "submit"), b"{}")
            await bus.publish(subjects.api_sessions("_all", "list"), b"{}")
            await bus.flush()
            # nats-server's refusals reach error_cb after the flush: until both are there
            return await wait_for_async(lambda: asyncio.sleep(0, [text for _, text in bus.denials]),
                                        lambda got: len(got) >= 2, 10, what="both refusals")
        finally:
            await bus.close()

    denials = asyncio.run(around())
    assert any("sessions.fin-prod.submit" in d for d in denials) and any("sessions._all.list" in d for d in denials)


# ------------------------------------------------------------------------------------------- failure

def test_revocation_requeues_running_sessions_and_locks_the_host_out(live_fleet: LiveFleet, tmp_path: Path) -> None:
    keys = setup(live_fleet)
    doomed = worker(live_fleet, "w-doomed", keys["fin"], MAIN)
    with client(live_fleet) as c:
        sessions = [c.submit("solo-app", ["sh", "-c", "sleep 1; echo attempt $FLEET_ATTEMPT"]) for _ in range(2)]
        for s in sessions:
            until(c, s.id, "running")
        assert run_cli("hosts", "revoke", doomed, "--nats", live_fleet.url).exit_code == 0
        agent = agent_proc(live_fleet, "w-doomed")
        assert agent.popen.wait(15) == 3
        for s in sessions:
            lost = until(c, s.id, "queued", 10)
            assert lost.attempt == 2 and "revoked" in (lost.reason or "")
        other = worker(live_fleet, "w-other", keys["fin"], MAIN)
        for s in sessions:
            done = until(c, s.id, "succeeded")
            assert done.host == other and done.output_tail == "attempt 2\n"
            assert [e.phase for e in done.history] == ["queued", "assigned", "running", "lost", "queued", "assigned",
                                                       "running", "succeeded"]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _chaos_command(out: Path) -> list[str]:
    return ["sh", "-c", f'sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 4 )); echo "$FLEET_SESSION_ID" >> {out}']


def test_five_hundred_sessions_two_workers_killed_every_session_final_exactly_once(live_fleet: LiveFleet,
                                                                                 tmp_path: Path) -> None:
    keys = setup(live_fleet, slots=4)
    names = [f"w{i}" for i in range(5)]
    for name in names:
        worker(live_fleet, name, keys["fin"], MAIN)
    out = live_fleet.shared_file("ran.txt")  # the sessions (each its own uid) append to it

    async def run() -> list[SessionView]:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            subs = await asyncio.gather(*(c.submit("solo-app", _chaos_command(out), max_attempts=5)
                                          for _ in range(500)))
            await wait_for_async(lambda: asyncio.sleep(0, _lines(out)), lambda n: n >= 20, 60,
                                 what="20 sessions run")  # mid-run: some ran, most wait
            for name in names[:2]:  # SIGKILL two workers and their children, mid-run, as a machine dies: frozen
                proc = agent_proc(live_fleet, name)  # first, so that it cannot report its children's deaths
                proc.popen.send_signal(signal.SIGSTOP)  # (a sandboxed session dies at once: no pipe kept open)
                subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
                proc.popen.send_signal(signal.SIGKILL)
            return list(await asyncio.gather(*(c.wait(s.id, timeout=240) for s in subs)))

    done = run()
    sessions = asyncio.run(done)
    assert len({s.id for s in sessions}) == 500
    phases = {s.phase for s in sessions}
    assert phases == {"succeeded"}, [(s.id, s.phase, s.reason) for s in sessions if s.phase != "succeeded"][:5]
    assert all(len(final_events(s)) == 1 for s in sessions)  # exactly one completion accepted each
    lost = [s for s in sessions if s.attempt > 1]
    assert lost, "killing two of five busy workers lost no session: the test did not test anything"
    survivors = {live_fleet.machine_id(n) for n in names[2:]}
    assert {s.host for s in lost} <= survivors
    ran = out.read_text().split()
    assert set(ran) == {s.id for s in sessions}  # every session's command ran; some twice (their host died mid-run)

    async def stored() -> list[SessionRecord]:  # what the bucket holds agrees
        bus = await live_fleet.bus("server")
        try:
            store = await open_store(bus, subjects.BUCKET_SESSIONS, history=1)
            return [SessionRecord.model_validate_json(e.value) for e in await store.snapshot()]
        finally:
            await bus.close()

    records = {r.id: r for r in asyncio.run(stored())}
    assert all(records[s.id].phase == "succeeded" and len(final_events(records[s.id])) == 1 for s in sessions)


def test_a_stopped_worker_that_lost_its_lease_cannot_complete_its_old_session(live_fleet: LiveFleet,
                                                                             tmp_path: Path) -> None:
    keys = setup(live_fleet)
    first = worker(live_fleet, "w-first", keys["fin"], MAIN)
    marker = live_fleet.shared_file("started")  # the sessions (each its own uid) append to it
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", f"echo $FLEET_ATTEMPT >> {marker}; sleep 1.5; echo done $FLEET_ATTEMPT"])
        held = until(c, s.id, "running")
        agent = agent_proc(live_fleet, "w-first")
        agent.popen.send_signal(signal.SIGSTOP)
        try:
            requeued = until(c, s.id, "queued", 15)
            assert requeued.attempt == 2
            second = worker(live_fleet, "w-second", keys["fin"], MAIN)
            done = until(c, s.id, "succeeded")
            assert done.host == second and done.output_tail == "done 2\n"
        finally:
            agent.popen.send_signal(signal.SIGCONT)

        # the old holder, awake again, reports its completion under the old token: refused
        async def late() -> WorkReply:
            bus = await connect(live_fleet.url, creds=str(live_fleet.agent_dir("w-first") / "host.creds"))
            try:
                ev = WorkEvent(session=s.id, fence=held.fence or 0, phase="succeeded", exit_code=0, at=time.time(),
                               output_tail="done 1\n")
                return decode(WorkReply, await bus.request(f"{subjects.host_work(first)}.event", ev.encode(),
                                                           timeout=5))
            finally:
                await bus.close()

        reply = asyncio.run(late())
        assert reply.ok is False and reply.stale is True
        time.sleep(1.0)
        after = c.get(s.id)
        assert after.phase == "succeeded" and after.host == second and after.output_tail == "done 2\n"
        assert final_events(after) == ["succeeded"]
        assert held.fence != after.fence
        # the stopped worker's own process saw its lease gone and stopped the command: it never printed "done 1"
        assert marker.read_text().split() == ["1", "2"]
        assert "lease" in agent.output()


def test_the_dispatcher_killed_midway_loses_nothing(live_fleet: LiveFleet, tmp_path: Path) -> None:
    keys = setup(live_fleet, slots=4)
    standby = live_fleet.procs.spawn("server-2", fleet_argv(
        "server", "--nats", live_fleet.url, "--offline-after", "1.0", "--monitor-interval", "0.1",
        "--heartbeat-interval", "0.2", "--creds", live_fleet.creds("server"), "--trust-dir",
        str(live_fleet.trust.root)))
    for name in ("w0", "w1"):
        worker(live_fleet, name, keys["fin"], MAIN)
    out = live_fleet.shared_file("ran.txt")  # the sessions (each its own uid) append to it

    async def run() -> list[SessionView]:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            first = await asyncio.gather(*(c.submit("solo-app", _chaos_command(out)) for _ in range(60)))
            await wait_for_async(lambda: asyncio.sleep(0, _lines(out)), lambda n: n >= 5, 60,
                                 what="5 sessions run")  # the leader dies mid-run
            assert live_fleet.server is not None
            live_fleet.server.popen.send_signal(signal.SIGKILL)  # the leader: the first server
            more = [await c.submit("solo-app", _chaos_command(out)) for _ in range(40)]  # during the fail-over
            return list(await asyncio.gather(*(c.wait(s.id, timeout=120) for s in [*first, *more])))

    sessions = asyncio.run(run())
    assert {s.phase for s in sessions} == {"succeeded"}
    assert all(len(final_events(s)) == 1 for s in sessions)
    assert set(out.read_text().split()) == {s.id for s in sessions}
    assert "now dispatches" in standby.output()


def test_the_plan_names_queued_sessions_that_a_change_leaves_unroutable(live_fleet: LiveFleet) -> None:
    setup(live_fleet)
    with client(live_fleet) as c:
        waiting = c.submit("gpu-app", ["true"])  # no host in pool-gpu: it waits
        assert waiting.phase == "queued"
    live_fleet.layout = layout()
    live_fleet.layout["projects"] = [p for p in live_fleet.layout["projects"] if p["id"] != "gpu-app"]
    live_fleet.fleet_file.write_text(json.dumps({**json.loads(live_fleet.fleet_file.read_text()),
                                                 **live_fleet.layout}))
    plan = run_cli("plan", "-f", str(live_fleet.fleet_file), "--nats", live_fleet.url, "--json",
                   env=live_fleet.secrets)
    assert plan.exit_code == 0, plan.output
    items = json.loads(plan.output)["consequences"]["items"]
    assert {"kind": "session-unroutable", "subject": waiting.id} in [
        {"kind": i["kind"], "subject": i["subject"]} for i in items], items
    text = run_cli("plan", "-f", str(live_fleet.fleet_file), "--nats", live_fleet.url, env=live_fleet.secrets).output
    assert f"queued session {waiting.id} of project gpu-app: the project is deleted" in text


def test_an_agent_restarted_within_its_grace_loses_its_running_session_to_a_new_attempt(live_fleet: LiveFleet) -> None:
    live_fleet.layout = layout()
    for pool in live_fleet.layout["pools"]:
        pool["disconnect_grace"] = "60s"  # the host stays online while its agent restarts
    key = live_fleet.key("fin", pools=(MAIN,))
    host = worker(live_fleet, "w-main", key, MAIN)
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", 'if [ "$FLEET_ATTEMPT" = 1 ]; then sleep 60; fi; echo attempt $FLEET_ATTEMPT'])
        until(c, s.id, "running")
        agent = agent_proc(live_fleet, "w-main")
        agent.popen.send_signal(signal.SIGSTOP)  # frozen first, so that it cannot report its session's death
        subprocess.run(["pkill", "-KILL", "-P", str(agent.pid)], check=False)  # the agent and its session's process
        agent.popen.send_signal(signal.SIGKILL)
        agent.popen.wait(10)
        assert live_fleet.by_name()["w-main"]["status"] == "active"  # within its grace: still online
        live_fleet.agent("w-main", "--pool", MAIN)  # the same machine, restarted (its state dir has its identity)
        done = until(c, s.id, "succeeded", 40)
        assert done.host == host and done.attempt == 2 and done.output_tail == "attempt 2\n"
        assert "no longer runs it" in next(e.note for e in done.history if e.phase == "lost")


def test_finished_sessions_expire_from_the_bucket_and_waiting_ones_stay(live_fleet: LiveFleet,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    keys = setup(live_fleet)
    assert live_fleet.server is not None
    live_fleet.server.stop()
    monkeypatch.setenv("FLEET_SESSION_RETENTION", "2")
    live_fleet.start_server()
    worker(live_fleet, "w-main", keys["fin"], MAIN)

    async def stored() -> set[str]:
        async with await live_fleet.bus("server") as bus:
            store = await open_store(bus, subjects.BUCKET_SESSIONS, create=False)
            return {e.key for e in await store.snapshot()}

    with client(live_fleet) as c:
        done = c.submit("solo-app", ["true"], wait=20)
        waiting = c.submit("gpu-app", ["true"])  # nobody serves pool-gpu: it waits
        assert (done.phase, waiting.phase) == ("succeeded", "queued")
        assert {done.id, waiting.id} <= asyncio.run(stored())
        wait_for(lambda: done.id not in asyncio.run(stored()), 15, 0.2, "the finished session expires")
        # written before the finished one's last write, and older than the retention by now: still there
        assert waiting.id in asyncio.run(stored()) and c.get(waiting.id).phase == "queued"


def test_a_hostile_submitter_gets_clear_errors_and_changes_nothing(live_fleet: LiveFleet) -> None:
    keys = setup(live_fleet)
    worker(live_fleet, "w-health", keys["health"], HEALTH)
    health = live_fleet.issue("health-ci", "submitter", tenant="health-prod")
    submit = subjects.api_sessions("health-prod", "submit")
    deep = ('{"v":1,"project":"health-app","command":["true"],"env":' + "[" * 5000 + "]" * 5000 + "}").encode()
    nul = json.dumps({"v": 1, "id": "0" * 20, "project": "health-app", "command": ["sh", "-c", "x\0y"]}).encode()
    huge = json.dumps({"v": 1, "project": "health-app", "command": ["x" * 8000] * 9}).encode()
    bad_id = json.dumps({"v": 1, "id": "../../etc", "project": "health-app", "command": ["true"]}).encode()

    async def attack() -> dict[str, Any]:
        bus = await connect(live_fleet.url, creds=health)
        out: dict[str, Any] = {}
        try:
            for name, payload in (("deep", deep), ("nul", nul), ("huge", huge), ("bad_id", bad_id),
                                  ("too_large", b"{" + b" " * 200_000 + b"}")):
                reply = json.loads(await bus.request(submit, payload, timeout=10))
                out[name] = (reply["ok"], reply.get("error"), reply.get("message", ""))
            # waits held by one tenant are bounded: the rest are answered at once, and the fleet still answers
            c = Client(live_fleet.url, creds=health)
            async with c:
                s = await c.submit("health-app", ["sleep", "30"])
                query = json.dumps({"v": 1, "id": s.id, "wait_s": 3}).encode()

                async def timed_wait() -> float:
                    started = time.monotonic()
                    await bus.request(subjects.api_sessions("health-prod", "wait"), query, timeout=15)
                    return time.monotonic() - started

                out["waits"] = await asyncio.gather(*(timed_wait() for _ in range(300)))
                out["quick"] = await c.submit("health-app", ["true"], wait=20)
                await c.cancel(s.id)
            # beyond a submitter's NATS payload limit (256 KiB) nats-server itself closes the connection
            async with await connect(live_fleet.url, creds=health) as big:
                with contextlib.suppress(Exception):
                    await big.nc.publish(submit, b"{" + b" " * 300_000 + b"}")
                    await big.flush(timeout=2)
                out["big_connected"] = await wait_for_async(lambda: asyncio.sleep(0, big.is_connected),
                                                            lambda up: not up, 10, what="the connection closed")
            return out
        finally:
            await bus.close()

    out = asyncio.run(attack())
    assert out["deep"][:2] == (False, "malformed")
    assert out["nul"][:2] == (False, "malformed") and "NUL" in out["nul"][2]
    assert out["huge"][:2] == (False, "malformed") and "longer than" in out["huge"][2]
    assert out["bad_id"][:2] == (False, "malformed")
    assert out["too_large"][:2] == (False, "too_large")
    assert out["big_connected"] is False
    held = [t for t in out["waits"] if t >= 2.5]
    assert len(held) == 256, sorted(out["waits"])  # WAITS_PER_TENANT held; the other 44 answered at once
    assert out["quick"].phase == "succeeded"
    with client(live_fleet) as admin:
        stored = admin.list()
        assert {s.project for s in stored} == {"health-app"} and len(stored) == 2  # the sleep and the quick one
    assert "Traceback" not in server_log(live_fleet)


def test_a_line_a_session_prints_reaches_its_logs_while_it_still_runs(live_fleet: LiveFleet) -> None:
    """Output is sent at most every OUTPUT_EVERY_S, and at the latest that long after it arrived: a session that
    prints one line and then waits shows it (it waited for more output, or for the end, before)."""
    keys = setup(live_fleet)
    worker(live_fleet, "w-main", keys["fin"], MAIN)
    go = live_fleet.shared / "go-logs"  # made when the line was seen
    with client(live_fleet) as c:
        s = c.submit("solo-app", ["sh", "-c", f"echo first-line; while [ ! -e {go} ]; do sleep 0.05; done"])
        until(c, s.id, "running")
        wait_for(lambda: "first-line" in "".join(c.logs(s.id)), 10, 0.05, "the first line in the session's logs")
        go.touch()
        assert until(c, s.id, "succeeded").phase == "succeeded"
