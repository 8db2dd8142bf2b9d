"""Nothing runs twice while its host is alive: 200 paced sessions on live hosts through faults of the control plane.

`fleet server` SIGKILLed and started again, and nats-server SIGKILLed and started again, three times each during one
run of 200 paced `sleep 0.2` sessions on three real agents: every session ends succeeded with its first attempt,
its command ran exactly once (counted from the lines the sessions themselves write, not from fleet's records), and
the server's log has no `security:` line about an honest host. Then an agent SIGSTOPped past its grace: its
sessions run again elsewhere (the documented at-least-once case), and once it is continued its old copies are
ended within a second, without a success reported for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleet.bus import subjects
from fleet.bus.kv import open_store
from fleet.bus.messages import FINAL_PHASES, SessionView
from fleet.dispatch.leader import TTL_S as LEASE_TTL_S
from fleet.errors import FleetError
from fleet.sessions.client import Client
from tests.conftest import LiveFleet, wait_for
from tests.integration.test_dispatch import MAIN, agent_proc, layout, worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SESSIONS = 200
PACE_S = 0.03  # one submit every 30 ms: 6 s of submits, while 12 slots finish 60 sessions a second
FAULTS_AT = (40, 90, 140)  # the fault strikes when this many sessions were submitted
GRACE = "20s"  # the hosts' disconnect grace in the NATS test: longer than its outages (the agents' lease)


def _setup(lf: LiveFleet, grace: str | None, slots: int = 4) -> str:
    lf.layout = layout(slots=slots)
    for pool in lf.layout["pools"]:
        if grace is not None:
            pool["disconnect_grace"] = grace
    return lf.key("fin", pools=(MAIN,))


def _command(out: Path) -> list[str]:
    """Writes one line (its ID and attempt) when it starts, then works for 0.2 s."""
    return ["sh", "-c", f'echo "$FLEET_SESSION_ID $FLEET_ATTEMPT" >> {out}; sleep 0.2']


async def _persist(what: Any, *, within: float = 90.0) -> Any:
    """`what()` until it answers: the client's own fail-over retries cover a server restart; a NATS restart may
    also close a request's connection under it."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await what()
        except FleetError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _leader_lease_held(lf: LiveFleet) -> bool:
    async def held() -> bool:
        async with await lf.bus("server") as bus:
            store = await open_store(bus, subjects.BUCKET_DISPATCH, history=1, ttl=LEASE_TTL_S)
            return await store.get("leader") is not None
    return asyncio.run(held())


def _kill_server(lf: LiveFleet) -> None:
    """SIGKILL the leader; start it again once its lease expired (as an operator's `fleet up` would, some seconds
    later): the new one takes over the moment it is ready, before it heard a single heartbeat."""
    assert lf.server is not None
    lf.server.popen.send_signal(signal.SIGKILL)
    lf.server.popen.wait(10)
    wait_for(lambda: not _leader_lease_held(lf), 10, what="the dead leader's lease expired")
    took_over = lf.server.output().count("now dispatches")
    lf.server = lf.procs.spawn("server", lf.server.popen.args)  # (run_cli is for the main thread only)
    wait_for(lambda: lf.server.output().count("now dispatches") > took_over, 20, what="the new server dispatches")


def _kill_nats(lf: LiveFleet) -> None:
    """SIGKILL nats-server; start it again once the fleet server stopped dispatching for want of it (its lease ran
    out: about 2.5 s down), so that the fleet server takes over again after the outage."""
    assert lf.server is not None
    server, log = lf.nats.server, lf.server
    pid = server.running_pid()
    assert pid is not None
    stepped_down, took_over = log.output().count("stops dispatching"), log.output().count("now dispatches")
    os.kill(pid, signal.SIGKILL)
    if server._proc is not None:
        server._proc.wait(10)
        server._proc = None
    wait_for(lambda: log.output().count("stops dispatching") > stepped_down, 20, what="the leader stepped down")
    server.start()
    wait_for(lambda: log.output().count("now dispatches") > took_over, 30, what="the fleet server dispatches again")


def _run_through_faults(lf: LiveFleet, fault: Any, grace: str | None) -> tuple[list[SessionView], Path]:
    key = _setup(lf, grace)
    for name in ("w0", "w1", "w2"):
        worker(lf, name, key, MAIN)
    out = lf.shared_file("ran.txt")

    async def run() -> list[SessionView]:
        async with Client(lf.url, creds=lf.creds("admin")) as c:
            submits: list[asyncio.Task[SessionView]] = []
            for i in range(SESSIONS):
                if i in FAULTS_AT:
                    await asyncio.to_thread(fault, lf)
                submits.append(asyncio.create_task(_persist(lambda: c.submit("solo-app", _command(out)))))
                await asyncio.sleep(PACE_S)
            subs = await asyncio.gather(*submits)
            return list(await asyncio.gather(*(_persist(lambda s=s: c.wait(s.id, timeout=120)) for s in subs)))

    return asyncio.run(run()), out


def _assert_each_ran_once(lf: LiveFleet, sessions: list[SessionView], out: Path) -> None:
    assert len({s.id for s in sessions}) == SESSIONS
    not_done = [(s.id, s.phase, s.attempt, s.reason) for s in sessions if s.phase != "succeeded"]
    assert not not_done, not_done[:5]  # 0 lost
    lines = [line.split() for line in out.read_text().splitlines()]
    starts = Counter(sid for sid, _ in lines)
    assert set(starts) == {s.id for s in sessions}
    twice = {sid: n for sid, n in starts.items() if n > 1}
    assert not twice, f"{len(twice)} sessions ran more than once: {list(twice.items())[:5]}"  # 0 run twice
    assert {attempt for _, attempt in lines} == {"1"}
    assert all(s.attempt == 1 and [e.phase for e in s.history if e.phase in FINAL_PHASES] == ["succeeded"]
               for s in sessions)
    assert lf.server is not None
    security = [line for line in lf.server.output().splitlines() if "security:" in line]
    assert not security, security[:5]  # no false alarm about an honest host


def test_fleet_server_sigkilled_three_times_runs_nothing_twice(live_fleet: LiveFleet) -> None:
    sessions, out = _run_through_faults(live_fleet, _kill_server, None)  # the hosts' grace: 1 s
    _assert_each_ran_once(live_fleet, sessions, out)
    assert live_fleet.server is not None
    assert live_fleet.server.output().count("now dispatches") == 1 + len(FAULTS_AT)  # each restart took over


def test_nats_server_sigkilled_three_times_runs_nothing_twice(live_fleet: LiveFleet) -> None:
    sessions, out = _run_through_faults(live_fleet, _kill_nats, GRACE)
    _assert_each_ran_once(live_fleet, sessions, out)
    for name in ("w0", "w1", "w2"):
        assert "stopping" not in agent_proc(live_fleet, name).output()  # no host stopped its work


def test_an_agent_stopped_past_its_grace_has_its_sessions_rerun_and_its_copies_ended_when_continued(
        live_fleet: LiveFleet) -> None:
    key = _setup(live_fleet, grace="2s", slots=2)
    stopped_id = worker(live_fleet, "w-stopped", key, MAIN)
    marker = live_fleet.shared_file("started.txt")
    command = ["sh", "-c", f'echo "$FLEET_SESSION_ID $FLEET_ATTEMPT" >> {marker}; exec sleep 30']

    async def run() -> list[str]:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            subs = [await c.submit("solo-app", command) for _ in range(2)]
            for s in subs:
                await _until(c, s.id, {"running"})
            return [s.id for s in subs]

    async def stop_and_continue(ids: list[str]) -> None:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            subs = [await c.get(sid) for sid in ids]
            stopped = agent_proc(live_fleet, "w-stopped")
            copies = _sleeps_under(stopped.pid)
            assert len(copies) == 2, copies
            stopped.popen.send_signal(signal.SIGSTOP)
            try:
                for s in subs:  # its grace (2 s) passes: the sessions run again on the other host
                    view = await _until(c, s.id, {"running"}, 30, attempt=2)
                    assert view.attempt == 2 and view.host != stopped_id
                assert all(p.is_running() for p in copies)  # the stopped host's copies still run meanwhile
            finally:
                stopped.popen.send_signal(signal.SIGCONT)
            continued = time.monotonic()
            gone, alive = psutil.wait_procs(copies, timeout=5)
            ended_after = time.monotonic() - continued
            assert not alive, f"the old copies still run {ended_after:.1f}s after SIGCONT"
            assert ended_after < 1.0, f"the old copies ended {ended_after:.2f}s after SIGCONT"
            for s in subs:
                view = await c.get(s.id)
                assert view.phase == "running" and view.attempt == 2  # nothing the old copy said counted
                assert all(e.phase != "succeeded" for e in view.history)
            assert "lease" in stopped.output()

    ids = asyncio.run(run())  # both run on the only host ...
    worker(live_fleet, "w-other", key, MAIN)  # ... and another one joins, idle
    asyncio.run(stop_and_continue(ids))


async def _until(c: Client, sid: str, phases: set[str], timeout: float = 30.0, attempt: int = 1) -> SessionView:
    deadline = time.monotonic() + timeout
    while True:
        view = await c.get(sid)
        if view.phase in phases and view.attempt >= attempt:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"session {sid} is {view.phase}, not {phases}, after {timeout}s")
        await asyncio.sleep(0.05)


def _sleeps_under(pid: int) -> list[psutil.Process]:
    """The `sleep 30` processes that descend from process `pid` (the agent: its slots' inits and their sessions)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "sleep"]
    return []


def test_a_report_the_server_never_got_survives_an_agent_restart_in_its_outbox(live_fleet: LiveFleet) -> None:
    """The session ends while `fleet server` is down; its agent is then SIGKILLed (its report unsent) and started
    again: the report waits in the agent's outbox, the next server takes it, and the session is not run again."""
    key = _setup(live_fleet, grace=GRACE, slots=2)
    mid = worker(live_fleet, "w-out", key, MAIN)
    marker = live_fleet.shared_file("ran.txt")
    outbox = live_fleet.agent_dir("w-out") / "outbox"

    async def submit() -> str:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            s = await c.submit("solo-app", ["sh", "-c", f'echo "$FLEET_ATTEMPT" >> {marker}; sleep 1; echo finished'])
            await _until(c, s.id, {"running"})
            return s.id

    sid = asyncio.run(submit())
    assert live_fleet.server is not None
    live_fleet.server.popen.send_signal(signal.SIGKILL)  # the session ends while no server listens
    live_fleet.server.popen.wait(10)
    kept = wait_for(lambda: list(outbox.glob("*.json")), 15, what="the report kept in the outbox")
    assert [p.name for p in kept] == [f"{sid}.json"] and oct(kept[0].stat().st_mode & 0o777) == "0o600"
    agent = agent_proc(live_fleet, "w-out")
    agent.popen.send_signal(signal.SIGKILL)
    agent.popen.wait(10)
    live_fleet.agent("w-out", "--pool", MAIN)  # the same machine again: it waits for a server to join
    ready = live_fleet.server.output().count("now dispatches")
    live_fleet.server = live_fleet.procs.spawn("server", live_fleet.server.popen.args)
    wait_for(lambda: live_fleet.server.output().count("now dispatches") > ready, 20, what="the new server")

    async def final() -> SessionView:
        async with Client(live_fleet.url, creds=live_fleet.creds("admin")) as c:
            return await c.wait(sid, timeout=30)

    done = asyncio.run(final())
    assert done.phase == "succeeded" and done.attempt == 1 and done.host == mid
    assert done.output_tail == "finished\n"
    assert marker.read_text().split() == ["1"]  # it ran once
    wait_for(lambda: not list(outbox.glob("*.json")), 10, what="the outbox emptied once the server answered")
    assert "sending again 1 report(s)" in agent_proc(live_fleet, "w-out").output()
