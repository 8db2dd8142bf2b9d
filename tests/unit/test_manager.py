"""The manager of `fleet server` (fleet.service.manager) on a real event loop: supervised restarts with the cause
logged, cancellation on stop, leader-only runnables started and stopped with the lease, and a takeover that cannot
hold up the lease's renewal. The election here is a stand-in for fleet.dispatch.leader.Lease (our own seam; the
integration test test_manager_failover.py runs the real lease on a real nats-server)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fleet.errors import TransientError
from fleet.retry import Backoff
from fleet.service.manager import Manager, describe, every

FAST = Backoff(0.001, 0.002)


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition (never a fixed sleep standing in for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class FakeElection:
    """Held while `want` says so; counts its ticks."""

    renew_every = 0.001

    def __init__(self) -> None:
        self.want = False
        self.ticks = 0
        self.released = False
        self.lost_why: str | None = None

    @property
    def held(self) -> bool:
        return self.want

    async def tick(self) -> bool:
        self.ticks += 1
        if not self.want:
            self.lost_why = "another replica holds the lease"
        return self.want

    async def release(self) -> None:
        self.released = True
        self.want = False


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_a_runnable_that_fails_twice_is_restarted_its_cause_logged_and_its_state_visible(
        caplog: pytest.LogCaptureFixture) -> None:
    starts = 0

    async def scenario() -> None:
        nonlocal starts
        up = asyncio.Event()

        async def flaky() -> None:
            nonlocal starts
            starts += 1
            if starts <= 2:
                raise TransientError(f"KV get fleet-v1-hosts/x timed out (try {starts})")
            up.set()
            await asyncio.Event().wait()

        m = Manager(backoff=FAST)
        m.add("flaky", flaky)
        await m.start()
        await asyncio.wait_for(up.wait(), 10)
        view = {r["name"]: r for r in m.view()["runnables"]}["flaky"]
        assert view["state"] == "running"
        assert view["restarts"] == 2
        assert view["last_error"] == "TransientError: KV get fleet-v1-hosts/x timed out (try 2)"
        assert view["since"].endswith("+00:00")
        await m.stop()

    with caplog.at_level(logging.WARNING, logger="fleet.service.manager"):
        run(scenario)
    assert starts == 3
    failures = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert len(failures) == 2
    assert "TransientError: KV get fleet-v1-hosts/x timed out (try 1)" in failures[0].getMessage()
    assert all(r.exc_info is None for r in failures)  # no traceback without FLEET_DEBUG


def test_fleet_debug_adds_the_traceback(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_DEBUG", "1")

    async def scenario() -> None:
        failed = asyncio.Event()

        async def broken() -> None:
            failed.set()
            raise KeyError("pool-x")

        m = Manager(backoff=Backoff(5.0, 5.0))  # one failure, then a long wait: stopped before it restarts
        m.add("broken", broken)
        await m.start()
        await failed.wait()
        await until(lambda: m.runnables["broken"].state == "restarting", "the restart")
        await m.stop()
        assert m.runnables["broken"].state == "stopped"

    with caplog.at_level(logging.WARNING, logger="fleet.service.manager"):
        run(scenario)
    (record,) = [r for r in caplog.records if "broken failed" in r.getMessage()]
    assert "KeyError: 'pool-x'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_stop_cancels_every_runnable_and_lets_it_clean_up() -> None:
    cleaned: list[str] = []

    async def scenario() -> None:
        started = {"a": asyncio.Event(), "b": asyncio.Event()}

        def forever(name: str) -> Callable[[], Awaitable[None]]:
            async def loop() -> None:
                started[name].set()
                try:
                    await asyncio.Event().wait()
                finally:
                    cleaned.append(name)
            return loop

        m = Manager(backoff=FAST)
        m.add("a", forever("a"))
        m.add("b", forever("b"))
        await m.start()
        for ev in started.values():
            await ev.wait()
        tasks = [r.task for r in m.runnables.values()]
        await m.stop()
        assert all(t is not None and t.done() for t in tasks)
        assert {r.state for r in m.runnables.values()} == {"stopped"}
        assert all(r.restarts == 0 for r in m.runnables.values())  # a cancellation is no failure

    run(scenario)
    assert sorted(cleaned) == ["a", "b"]


def test_a_runnable_that_returns_has_ended_and_is_not_restarted() -> None:
    calls = 0

    async def scenario() -> None:
        nonlocal calls

        async def once() -> None:
            nonlocal calls
            calls += 1

        m = Manager(backoff=FAST)
        m.add("once", once)
        await m.start()
        await until(lambda: m.runnables["once"].task is not None and m.runnables["once"].task.done(), "the end")
        assert m.runnables["once"].state == "stopped"
        await m.stop()

    run(scenario)
    assert calls == 1


def test_a_periodic_step_that_raises_is_retried_with_backoff() -> None:
    async def scenario() -> None:
        seen: list[int] = []

        def step() -> None:
            seen.append(len(seen))
            if len(seen) in (2, 3):
                raise OSError("disk full")

        m = Manager(backoff=FAST)
        m.add("tick", every(0.001, step, first=True))
        await m.start()
        await until(lambda: len(seen) >= 6, "six steps")
        await m.stop()
        r = m.runnables["tick"]
        assert r.restarts == 2 and r.last_error == "OSError: disk full"

    run(scenario)


def test_leader_only_runnables_start_when_the_lease_is_gained_and_stop_when_it_is_lost() -> None:
    async def scenario() -> None:
        election = FakeElection()
        starts, stops = 0, 0

        async def dispatcher() -> None:
            nonlocal starts, stops
            starts += 1
            try:
                await asyncio.Event().wait()
            finally:
                stops += 1

        m = Manager(backoff=FAST)
        m.elect_with(election)
        m.add("dispatcher", dispatcher, leader_only=True)
        m.add("everywhere", lambda: asyncio.Event().wait())
        await m.start()
        await until(lambda: election.ticks >= 3, "three ticks")
        assert starts == 0 and m.runnables["dispatcher"].state == "standby" and not m.view()["leader"]
        assert m.runnables["everywhere"].state == "running"

        election.want = True
        await until(lambda: starts == 1 and m.runnables["dispatcher"].state == "running", "the leader's start")
        assert m.view()["leader"] is True

        election.want = False
        await until(lambda: stops == 1 and m.runnables["dispatcher"].state == "standby", "the step-down")
        assert not m.leading and m.runnables["everywhere"].state == "running"  # the others go on

        election.want = True
        await until(lambda: starts == 2 and m.runnables["dispatcher"].state == "running", "the second election")
        assert m.elections == 2

        await m.stop()
        assert stops == 2 and election.released
        assert m.runnables["dispatcher"].state == "stopped"

    run(scenario)


def test_a_takeover_that_never_finishes_does_not_hold_up_the_lease_renewal() -> None:
    async def scenario() -> None:
        election = FakeElection()
        election.want = True
        in_takeover = asyncio.Event()

        async def dispatcher() -> None:
            in_takeover.set()
            await asyncio.Event().wait()  # reading every session: takes as long as it takes

        m = Manager(backoff=FAST)
        m.elect_with(election)
        m.add("dispatcher", dispatcher, leader_only=True)
        await m.start()
        await in_takeover.wait()
        ticks = election.ticks
        await until(lambda: election.ticks >= ticks + 20, "renewals during the takeover")
        assert m.leading and m.runnables["dispatcher"].state == "running"
        await m.stop()

    run(scenario)


def test_registering_twice_is_refused_and_describe_bounds_the_cause() -> None:
    m = Manager()
    m.add("x", lambda: asyncio.sleep(0))
    with pytest.raises(ValueError, match="registered already"):
        m.add("x", lambda: asyncio.sleep(0))
    assert describe(RuntimeError("a\nb")) == "RuntimeError: a b"
    assert describe(RuntimeError()) == "RuntimeError"
    assert len(describe(RuntimeError("x" * 5000))) == 300


def test_ping_lines_show_the_runnables_and_survive_a_hostile_reply() -> None:
    from fleet.cli.ping_cmds import ping_lines

    good = {"server": "abc123", "version": "0.1.0", "hosts": 3, "live": 2, "leader": False,
            "runnables": [{"name": "dispatcher", "state": "standby", "restarts": 0, "last_error": None,
                           "since": "2026-12-07T11:00:00+00:00"},
                          {"name": "liveness-writer", "state": "restarting", "restarts": 4,
                           "last_error": "TransientError: KV timed out", "since": "2026-12-07T11:01:00+00:00"}]}
    text = "\n".join(ping_lines(good))
    assert "fleet server abc123 (fleet 0.1.0) answers: 3 host(s) known, 2 live" in text
    assert "role: standby" in text
    row = next(line for line in text.splitlines() if line.startswith("liveness-writer"))
    assert row.split()[:3] == ["liveness-writer", "restarting", "4"] and "KV timed out" in row

    hostile = {"server": "\x1b[2Jevil\n", "hosts": True, "leader": "yes",
               "runnables": ["x", {"name": "a" * 500, "restarts": "many", "last_error": "\x07" * 3}] + [{}] * 500}
    lines = "\n".join(ping_lines(hostile)).splitlines()
    assert all("\x1b" not in line and "\x07" not in line for line in lines)
    assert not any(line.startswith("role:") for line in lines)
    assert len(lines) <= 3 + 64 and max(len(line) for line in lines) < 400  # at most 64 rows, each bounded
    assert ping_lines(["not", "a", "dict"]) == ["fleet server answered with a reply this client does not understand"]


def test_a_failing_election_stops_the_leaders_runnables_until_it_runs_again() -> None:
    async def scenario() -> None:
        election = FakeElection()
        election.want = True
        running = asyncio.Event()
        stopped = asyncio.Event()
        broken = False

        async def tick() -> bool:
            election.ticks += 1
            if broken:
                raise RuntimeError("lease bug")
            return election.want

        election.tick = tick  # type: ignore[method-assign]

        async def dispatcher() -> None:
            running.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

        m = Manager(backoff=Backoff(5.0, 5.0))  # restarts come late: the step-down must not wait for them
        m.elect_with(election)
        m.add("dispatcher", dispatcher, leader_only=True)
        await m.start()
        await running.wait()
        broken = True
        await asyncio.wait_for(stopped.wait(), 10)
        await until(lambda: m.runnables["dispatcher"].state == "standby", "the step-down")
        assert not m.leading
        assert m.runnables["lease"].state == "restarting"
        assert m.runnables["lease"].last_error == "RuntimeError: lease bug"
        await m.stop()

    run(scenario)
