"""The manager of `fleet server` (controller-runtime's Manager): it owns every long-running loop and the election.

A runnable is a name, a coroutine factory and whether it runs only on the leader. `Manager.start()` runs each in a
task of its own under a supervisor: a runnable that raises is logged with the cause (the exception's type and
message; the traceback too with FLEET_DEBUG=1), counted, and started again after a capped exponential backoff with
jitter (fleet.retry.Backoff, a tenacity wait strategy: RESTART_BACKOFF); one that ran HEALTHY_AFTER_S before it
failed starts again from the shortest delay. A runnable that returns has ended (state `stopped`); a cancellation is
a stop, never a failure. `every(interval, step)` turns a periodic step into a runnable ("loop, catch, sleep" lives
here and nowhere else).

Leader election belongs to the manager: with `elect_with(lease)` (fleet.dispatch.leader.Lease, or anything with
`tick()`, `held`, `renew_every`, `lost_why` and `release()`), the runnable `lease` ticks the lease every
`renew_every` seconds in its own task; when this replica gains the lease the leader-only runnables are started (each
in its own task: the election never awaits them, so a takeover that takes longer than the lease's TTL cannot make
it miss a renewal) and when it loses it they are cancelled (state `standby`). `view()` is what `fleet server`'s
ping reply carries (`fleet ping` shows it): whether this replica leads, and per runnable its state (running,
restarting, stopped, standby), restarts, last error and since when (ISO 8601, UTC). Built by fleet.service.server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fleet.errors import FleetError
from fleet.retry import Backoff

log = logging.getLogger(__name__)

#: between the restarts of a failing runnable: 0.1 s doubling up to 30 s, 50-100% of it
RESTART_BACKOFF = Backoff(0.1, 30.0, floor=0.5)
#: a runnable that ran this long before it failed restarts from the shortest delay again
HEALTHY_AFTER_S = 60.0
#: how long a stop waits for a cancelled runnable to finish its cleanup
STOP_WAIT_S = 5.0
ERROR_CHARS = 300

STATES = ("running", "restarting", "stopped", "standby")


class Election(Protocol):
    renew_every: float
    lost_why: str | None

    @property
    def held(self) -> bool: ...

    async def tick(self) -> bool: ...

    async def release(self) -> None: ...


def every(interval: float, step: Callable[[], Any], *, first: bool = False) -> Callable[[], Awaitable[None]]:
    """A runnable that calls `step()` (awaiting it if it is a coroutine function) every `interval` seconds, first at
    once with `first`, else after one interval; a step that raises fails the runnable, which the manager restarts
    with backoff."""

    async def loop() -> None:
        if not first:
            await asyncio.sleep(interval)
        while True:
            result = step()
            if inspect.isawaitable(result):
                await result
            await asyncio.sleep(interval)

    return loop


def describe(exc: BaseException) -> str:
    """The cause, in one bounded line: `TransientError: KV get … timed out`."""
    text = exc.message if isinstance(exc, FleetError) else str(exc)
    text = " ".join(text.split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


@dataclass
class Runnable:
    name: str
    factory: Callable[[], Awaitable[None]]
    leader_only: bool = False
    state: str = "stopped"
    restarts: int = 0
    last_error: str | None = None
    since: float = field(default_factory=time.time)
    task: asyncio.Task | None = None

    def set(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "leader_only": self.leader_only, "restarts": self.restarts,
                "last_error": self.last_error, "since": _iso(self.since)}


class Manager:
    def __init__(self, *, backoff: Backoff = RESTART_BACKOFF, healthy_after: float = HEALTHY_AFTER_S) -> None:
        self.backoff = backoff
        self.healthy_after = healthy_after
        self.runnables: dict[str, Runnable] = {}
        self.election: Election | None = None
        self.leading = False
        self.elections = 0  # how often this replica gained the lease
        self._started = False

    # ------------------------------------------------------------------------------------------ wiring
    def add(self, name: str, factory: Callable[[], Awaitable[None]], *, leader_only: bool = False) -> Runnable:
        """Register a runnable (started at once if the manager runs already and it may run here)."""
        if name in self.runnables:
            raise ValueError(f"runnable {name!r} is registered already")
        runnable = Runnable(name, factory, leader_only, state="standby" if leader_only else "stopped")
        self.runnables[name] = runnable
        if self._started and (not leader_only or self.leading):
            self._launch(runnable)
        return runnable

    def elect_with(self, election: Election) -> None:
        """Run the leader-only runnables while `election` is held; the lease itself is ticked by runnable `lease`."""
        self.election = election
        self.add("lease", self._elect)

    # ------------------------------------------------------------------------------------------ running
    async def start(self) -> None:
        self._started = True
        for runnable in list(self.runnables.values()):
            if not runnable.leader_only:
                self._launch(runnable)

    async def stop(self) -> None:
        """Stop the leader's runnables, give the lease up (another replica takes over at once), stop the rest."""
        self._started = False
        lease = self.runnables.get("lease")
        if lease is not None:
            await self._halt(lease, "stopped")
        await self._step_down("this replica stops", state="stopped")
        if self.election is not None:
            await self.election.release()
        for runnable in self.runnables.values():
            await self._halt(runnable, "stopped")

    def view(self) -> dict[str, Any]:
        return {"leader": self.leading, "runnables": [r.view() for r in self.runnables.values()]}

    def _launch(self, runnable: Runnable) -> None:
        if runnable.task is None or runnable.task.done():
            runnable.task = asyncio.get_running_loop().create_task(self._supervise(runnable),
                                                                   name=f"fleet-server {runnable.name}")

    async def _halt(self, runnable: Runnable, state: str) -> None:
        task, runnable.task = runnable.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), STOP_WAIT_S)
        runnable.set(state)

    async def _supervise(self, runnable: Runnable) -> None:
        attempt = 0
        while True:
            runnable.set("running")
            began = time.monotonic()
            try:
                await runnable.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure: Exception = exc
            else:
                runnable.set("stopped")
                log.info("%s ended", runnable.name)
                return
            attempt = 1 if time.monotonic() - began >= self.healthy_after else attempt + 1
            runnable.restarts += 1
            runnable.last_error = describe(failure)
            delay = self.backoff.delay(attempt)
            runnable.set("restarting")
            log.warning("%s failed (%s); restarting it in %.1fs (restart %d)", runnable.name, runnable.last_error,
                        delay, runnable.restarts, exc_info=failure if os.environ.get("FLEET_DEBUG") else None)
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------ election
    async def _elect(self) -> None:
        election = self.election
        assert election is not None
        try:
            while True:
                try:
                    held = await election.tick()
                except FleetError as exc:  # the store is out of reach: the lease lasts until its time is up
                    log.warning("dispatch lease: %s", exc.message)
                    held = election.held
                if held and not self.leading:
                    self._step_up()
                elif not held and self.leading:
                    await self._step_down(election.lost_why or "it no longer holds the lease")
                await asyncio.sleep(election.renew_every if held else election.renew_every / 2)
        except Exception:  # a bug: nobody renews until the restart, so the leader's runnables stop now
            await self._step_down("the lease runnable failed")
            raise

    def _step_up(self) -> None:
        """Start the leader's runnables, each in its own task: nothing here awaits them."""
        self.leading = True
        self.elections += 1
        log.info("this replica now leads: starting %s",
                 ", ".join(r.name for r in self.runnables.values() if r.leader_only) or "nothing")
        for runnable in self.runnables.values():
            if runnable.leader_only:
                self._launch(runnable)

    async def _step_down(self, why: str, *, state: str = "standby") -> None:
        if not self.leading:
            return
        self.leading = False
        log.info("stopping the leader's runnables: %s", why)
        for runnable in self.runnables.values():
            if runnable.leader_only:
                await self._halt(runnable, state)
