"""Running sessions on a host: the agent's executor (a sandboxed process per session, fleet.agents.sandbox).

`Runner` is started by fleet.agents.agent. For each Assignment (in the Assignments messages on the host's own subject) it starts the command in
the host's sandbox (fleet.agents.sandbox: an idle sandbox slot, with another uid than the agent's, PID/mount/IPC
namespaces and a view without the agent's state), in the slot's scratch directory (SESSION_DIR, 0700, the slot uid's,
emptied after each session), with an environment that holds only PATH, LANG, HOME/TMPDIR (the scratch directory), the
session's own variables, `FLEET_SESSION_ID`, `FLEET_ATTEMPT`, `FLEET_PROJECT` and `FLEET_CREDENTIALS_SOCKET` (the
agent's own environment, with its enrollment key, is never passed on). The credential socket is the session's own
(`SessionSocket`): it answers for that session alone (who asks is known from which socket was reached, never from
the request) and is gone when the session ends. The runner streams the output to the server (bounded chunks) and
keeps a bounded tail, reports `running` (when the command lives longer than RUNNING_AFTER_S) and the final phase:
succeeded (exit 0), failed, timed_out (its timeout killed it) or cancelled. A final phase is reported until the
server acknowledges it or says it is stale (with backoff, across server restarts and NATS outages), is kept in the
agent's outbox (fleet.agents.outbox) until then, so that an agent restarted meanwhile sends it again, and is listed
in the heartbeats meanwhile, so that a dispatcher fail-over never makes the host run it again. When the command
ends, every process it started ends with it (the slot's init kills every process of the slot); a stop sends SIGTERM to all of them, then SIGKILL after KILL_GRACE_S,
then discards the whole slot.

A host that lost its lease stops its sessions (self-fencing): when its NATS connection has been down, or the agent
itself was stopped (SIGSTOP), for longer than the lease the server gave it, the server has re-queued them and they
may already run elsewhere; `kill_all` ends them at once (SIGTERM, SIGKILL after LEASE_KILL_GRACE_S, all together)
and they are not reported (the server would refuse them anyway: their fencing tokens are dead). The reports of
sessions that had already ended are still sent: whether they count is the server's to say (they do when the
session was not re-queued meanwhile). A session the server says is not this host's any more (a stale `running`
report, or a stop order after a heartbeat listed it under an old fencing token) is ended the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.agents.control import serve_json_socket
from fleet.agents.outbox import Outbox
from fleet.agents.reports import Reports
from fleet.agents.sandbox import SESSION_DIR, SESSION_SOCKET, Sandbox
from fleet.agents.slots import Slot
from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.messages import (
    MAX_MESSAGE_BYTES,
    MAX_OUTPUT_CHUNK,
    MAX_OUTPUT_TAIL,
    Assignment,
    Assignments,
    CancelOrder,
    OutputChunk,
    SessionInfo,
    WorkEvent,
    decode,
)
from fleet.errors import FleetError, ProtocolError
from fleet.retry import Backoff

log = logging.getLogger(__name__)

RUNNING_AFTER_S = 0.05  # a command that ends sooner is reported once, with its final phase (both phases recorded)
OUTPUT_EVERY_S = 0.1
KILL_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long
LEASE_KILL_GRACE_S = 0.3  # ... when the lease is lost (another copy may run elsewhere: no time to lose)
MAX_UNREPORTED = 1000
#: between two sends of a report the server did not answer: 0.25 s doubling up to 5 s, at least half of it
REPORT_BACKOFF = Backoff(0.25, 5.0, floor=0.5)
SOCKET_CLIENTS = 4  # open connections a session may hold on its credential socket (more are closed at once)


@dataclass(eq=False)
class Run:
    assignment: Assignment
    started_at: float = 0.0
    proc: Any = None  # asyncio's Process (unsandboxed), or fleet.agents.slots' SlotProcess (the same interface)
    tail: bytearray = field(default_factory=bytearray)
    sent: int = 0  # bytes of output sent to the server so far
    total: int = 0  # bytes of output read so far
    stop_reason: str | None = None  # cancelled / timed_out / lease lost
    phase: str = "assigned"
    silenced: bool = False  # lease lost: report nothing
    slot: Slot | None = None  # the sandbox slot it runs in (its uid, namespaces and scratch dir), while it runs
    socket: asyncio.AbstractServer | None = None  # its credential socket, while it runs

    @property
    def session(self) -> str:
        return self.assignment.session


class Runner:
    def __init__(self, bus: Bus, machine_id: str, state_dir: Path, sandbox: Sandbox,
                 on_change: Callable[[], None], *, tenant: str | None = None) -> None:
        self.bus = bus
        self.machine_id = machine_id
        self.tenant = tenant
        self.state_dir = state_dir
        self.sandbox = sandbox
        self._socket_seq = 0
        self.on_change = on_change  # a heartbeat should go out now (a session started or ended)
        self.runs: dict[str, Run] = {}
        self.unreported: dict[str, WorkEvent] = {}  # final reports the server has not answered yet
        self.outbox = Outbox(state_dir)
        self.reports = Reports(bus, machine_id)  # the events of one moment in one request
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------------ state
    def running(self) -> int:
        return sum(1 for run in self.runs.values() if run.phase in ("assigned", "running"))

    def infos(self) -> list[SessionInfo]:
        """What the heartbeat reports: running sessions and finished ones not yet acknowledged by the server."""
        out = [SessionInfo(id=r.session, phase=r.phase, fence=r.assignment.fence) for r in self.runs.values()]  # type: ignore[arg-type]
        out += [SessionInfo(id=sid, phase=ev.phase, fence=ev.fence) for sid, ev in self.unreported.items()]
        return out[:128]

    def runs_session(self, session_id: str) -> Run | None:
        run = self.runs.get(session_id)
        return run if run is not None and not run.silenced else None

    def resume(self) -> int:
        """Send again the final reports an earlier run of this agent could not deliver (its outbox); how many."""
        events = self.outbox.load()
        for event in events:
            if event.session not in self.unreported and event.session not in self.runs:
                self.unreported[event.session] = event
                self._spawn(self._deliver(event))
        if events:
            log.info("sending again %d report(s) an earlier run of this agent kept", len(events))
            self.on_change()
        return len(events)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------------ from the server
    async def on_assign(self, msg: object) -> None:
        """The server's Assignments for this host (one message for those of one moment)."""
        try:
            batch = decode(Assignments, msg.data, max_bytes=MAX_MESSAGE_BYTES + 1024)  # type: ignore[attr-defined]
        except ProtocolError as exc:
            log.warning("ignoring malformed assignments: %s", exc.message)
            return
        for assignment in batch.items:
            await self._take(assignment)

    async def _take(self, assignment: Assignment) -> None:
        current = self.runs.get(assignment.session)
        if current is not None:
            if current.assignment.fence == assignment.fence:
                return  # sent again: already running it
            await self._stop(current, "assigned again under a new fencing token", silence=True)
        if assignment.session in self.unreported:
            return  # finished here already; the server will hear about it
        run = Run(assignment)
        self.runs[assignment.session] = run
        self._spawn(self._run(run))

    async def on_cancel(self, msg: object) -> None:
        try:
            order = decode(CancelOrder, msg.data)  # type: ignore[attr-defined]
        except ProtocolError:
            return
        run = self.runs.get(order.session)
        if run is None or (order.fence is not None and order.fence != run.assignment.fence):
            return
        stale = order.reason != "cancelled"
        log.info("session %s: stopping (%s)", order.session, order.reason)
        await self._stop(run, "cancelled" if not stale else order.reason, silence=stale)

    # ------------------------------------------------------------------------------------------ running
    def _environment(self, run: Run, workdir: Path, socket_path: Path) -> dict[str, str]:
        a = run.assignment
        home = SESSION_DIR if self.sandbox.isolated else str(workdir)
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": home,
               "TMPDIR": home, "LANG": os.environ.get("LANG", "C.UTF-8")}
        env.update(a.env)
        env.update({"FLEET_SESSION_ID": a.session, "FLEET_ATTEMPT": str(a.attempt), "FLEET_PROJECT": a.project,
                    "FLEET_CREDENTIALS_SOCKET": SESSION_SOCKET if self.sandbox.isolated else str(socket_path)})
        return env

    async def _open_socket(self, run: Run, path: Path) -> None:
        """The session's own credential socket: it knows which session it serves; it dies with the session."""
        async def answer(request: dict[str, Any]) -> dict[str, Any]:
            if self.runs.get(run.session) is not run or run.silenced or run.phase not in ("assigned", "running"):
                return {"ok": False, "error": "this session has ended"}
            return {"ok": True, "session_id": run.session, "phase": run.phase, "machine_id": self.machine_id,
                    "tenant": self.tenant, "project": run.assignment.project, "attempt": run.assignment.attempt}

        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        run.socket = await serve_json_socket(path, answer, max_clients=SOCKET_CLIENTS, timeout=2.0)
        if run.slot is not None and os.geteuid() == 0:
            os.chown(path, run.slot.uid, run.slot.uid)

    def _cleanup(self, run: Run, workdir: Path, socket_path: Path) -> None:
        if run.socket is not None:
            run.socket.close()
            run.socket = None
        with contextlib.suppress(OSError):
            socket_path.unlink()
        if run.slot is not None:  # the slot's init has removed what the session left in it
            slot, run.slot = run.slot, None
            if run.proc is not None and run.proc.returncode is None:
                slot.destroy("it was left with a session running")  # never reuse a slot that may hold one
            self.sandbox.release(slot)
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)

    async def _run(self, run: Run) -> None:
        a = run.assignment
        workdir = self.state_dir / "sessions" / a.session
        self._socket_seq += 1
        socket_path = self.state_dir / "s" / f"{self._socket_seq}.sock"
        run.started_at = time.time()
        try:
            try:
                if self.sandbox.isolated:  # (the slot's init says what exec says: not found, not executable)
                    run.slot = await self.sandbox.slot()
                    socket_path = run.slot.socket_path
                else:
                    workdir.mkdir(parents=True, exist_ok=True)
                    os.chmod(workdir, 0o700)
                await self._open_socket(run, socket_path)
                env = self._environment(run, workdir, socket_path)
                if run.slot is not None:
                    run.proc = await run.slot.run(list(a.command), env)
                else:
                    run.proc = await asyncio.create_subprocess_exec(
                        *a.command, cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except (OSError, ValueError, FleetError) as exc:  # not found, not executable, no uid free, a NUL byte
                why = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
                run.tail += f"fleet: cannot start {a.command[0][:200]!r}: {why}\n".encode()
                self._cleanup(run, workdir, socket_path)
                await self._final(run, "failed", 127, note=f"cannot start the command: {why}"[:200])
                return
            await self._supervise(run, workdir, socket_path)
        except BaseException:
            self._cleanup(run, workdir, socket_path)
            raise

    async def _supervise(self, run: Run, workdir: Path, socket_path: Path) -> None:
        a = run.assignment
        assert run.proc is not None
        if run.stop_reason:  # cancelled (or its lease lost) while it was starting
            await self._kill(run)
        self.on_change()
        reader = asyncio.get_running_loop().create_task(self._read(run))
        announced = asyncio.get_running_loop().create_task(self._announce(run))
        try:
            if a.timeout_s:
                try:
                    await asyncio.wait_for(run.proc.wait(), a.timeout_s)
                except TimeoutError:
                    run.stop_reason = run.stop_reason or "timed_out"
                    await self._kill(run)
            code = await run.proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        finally:
            announced.cancel()
        if not self.sandbox.isolated:  # no PID namespace: at least what stayed in its process group goes
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGKILL)
        elif run.stop_reason and code > 128:  # bubblewrap says 128+N for a command ended by signal N
            code = 128 - code
        await self._flush_output(run)
        self._cleanup(run, workdir, socket_path)
        if run.silenced:
            self.runs.pop(a.session, None)
            return
        if run.stop_reason == "timed_out":
            phase, note = "timed_out", f"killed after its timeout of {a.timeout_s:g}s"
        elif run.stop_reason == "cancelled":
            phase, note = "cancelled", "cancelled"
        else:
            phase, note = ("succeeded" if code == 0 else "failed"), None
        await self._final(run, phase, code, note=note)

    async def _announce(self, run: Run) -> None:
        await asyncio.sleep(RUNNING_AFTER_S)
        run.phase = "running"
        await self._report(run, WorkEvent(session=run.session, fence=run.assignment.fence, phase="running",
                                          started_at=run.started_at, at=time.time()))

    async def _read(self, run: Run) -> None:
        assert run.proc is not None and run.proc.stdout is not None
        last_sent = time.monotonic()
        while True:
            if run.total > run.sent:  # output not sent yet: it goes out OUTPUT_EVERY_S after the last, more or not
                try:
                    data = await asyncio.wait_for(run.proc.stdout.read(MAX_OUTPUT_CHUNK),
                                                  max(0.0, OUTPUT_EVERY_S - (time.monotonic() - last_sent)))
                except TimeoutError:
                    await self._flush_output(run)
                    last_sent = time.monotonic()
                    continue
            else:
                data = await run.proc.stdout.read(MAX_OUTPUT_CHUNK)
            if not data:
                return
            run.total += len(data)
            run.tail += data
            if len(run.tail) > MAX_OUTPUT_TAIL * 2:
                del run.tail[:len(run.tail) - MAX_OUTPUT_TAIL]
            if time.monotonic() - last_sent >= OUTPUT_EVERY_S or run.total - run.sent >= MAX_OUTPUT_CHUNK:
                await self._flush_output(run)
                last_sent = time.monotonic()

    async def _flush_output(self, run: Run) -> None:
        """Send the output not sent yet (what no longer is in the tail is lost: the server says so)."""
        while run.sent < run.total and not run.silenced:
            start = max(run.sent, run.total - len(run.tail))
            tail_start = run.total - len(run.tail)
            chunk = bytes(run.tail[start - tail_start:start - tail_start + MAX_OUTPUT_CHUNK // 2])
            text = chunk.decode("utf-8", "replace")
            with contextlib.suppress(FleetError):
                await self.bus.publish(f"{subjects.host_work(self.machine_id)}.output", OutputChunk(
                    session=run.session, fence=run.assignment.fence, offset=start, data=text).encode())
            run.sent = start + len(chunk)

    async def _final(self, run: Run, phase: str, code: int | None, *, note: str | None = None) -> None:
        run.phase = phase
        tail = bytes(run.tail[-MAX_OUTPUT_TAIL:]).decode("utf-8", "replace")[-MAX_OUTPUT_TAIL // 4:]
        event = WorkEvent(session=run.session, fence=run.assignment.fence, phase=phase,  # type: ignore[arg-type]
                          exit_code=max(-255, min(255, code)) if code is not None else None,
                          started_at=run.started_at, at=time.time(), output_tail=tail, note=note)
        self.runs.pop(run.session, None)
        if run.silenced:
            return
        if len(self.unreported) < MAX_UNREPORTED:
            self.unreported[run.session] = event
        self.outbox.put(event)  # before it is sent: an agent killed meanwhile sends it at its next start
        self.on_change()
        await self._deliver(event)

    async def _deliver(self, event: WorkEvent) -> None:
        """Send a final report until the server answers it (ok, or stale: no longer ours); it is never dropped."""
        tries = 0
        while True:
            try:
                reply = await self.reports.send(event)
                if reply.ok or reply.stale:
                    if reply.stale:
                        log.info("session %s: the server did not take its %s report (%s)", event.session,
                                 event.phase, reply.message)
                    break
            except FleetError as exc:  # no dispatcher right now (a restart, a fail-over), or NATS is away
                log.debug("reporting session %s: %s", event.session, exc)
            tries += 1
            await asyncio.sleep(REPORT_BACKOFF.delay(tries))
        self.unreported.pop(event.session, None)
        self.outbox.drop(event.session)
        self.on_change()

    async def _report(self, run: Run, event: WorkEvent) -> None:
        """The `running` report: sent until the server answers it or the session ends (the final report carries
        started_at too); when the server says the session is no longer ours, it is ended at once."""
        tries = 0
        while not run.silenced and run.phase == "running":
            try:
                reply = await self.reports.send(event)
                if reply.stale:
                    log.info("session %s: the server says it is no longer ours (%s)", run.session, reply.message)
                    await self._stop(run, "stale", silence=True, grace=LEASE_KILL_GRACE_S)
                if reply.ok or reply.stale:
                    return
            except FleetError as exc:
                log.debug("reporting session %s: %s", run.session, exc)
            tries += 1
            await asyncio.sleep(REPORT_BACKOFF.delay(tries))

    # ------------------------------------------------------------------------------------------ stopping
    async def _stop(self, run: Run, reason: str, *, silence: bool = False, grace: float = KILL_GRACE_S) -> None:
        run.stop_reason = reason
        run.silenced = run.silenced or silence
        await self._kill(run, grace)

    async def _kill(self, run: Run, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM to every process of the session, SIGKILL after `grace`; a sandboxed session that does not
        end then either takes its whole slot with it."""
        proc = run.proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_GRACE_S)):
            self._signal(proc, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                continue
        if run.slot is not None:
            proc.destroy()

    @staticmethod
    def _signal(proc: Any, sig: signal.Signals) -> None:
        if isinstance(proc, asyncio.subprocess.Process):  # unsandboxed: its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)  # the slot's init signals every process of the session

    async def kill_all(self, reason: str, *, grace: float = LEASE_KILL_GRACE_S) -> None:
        """The lease is lost: stop every running session at once, report none of them (the reports of the
        sessions that had ended before are still delivered: the server decides whether they count)."""
        runs = [run for run in self.runs.values() if not run.silenced]
        if runs:
            log.warning("stopping %d session(s): %s", len(runs), reason)
        for run in runs:
            run.silenced = True  # first, all of them: none may report while the others are being stopped
        await asyncio.gather(*(self._stop(run, reason, silence=True, grace=grace) for run in runs))

    async def close(self) -> None:
        await self.kill_all("the agent stops", grace=KILL_GRACE_S)
        self.reports.close()
        for task in list(self._tasks):
            task.cancel()
