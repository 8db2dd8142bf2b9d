"""Sandbox slots: the agent's side of fleet.agents.slot_init. A slot is one bubblewrap sandbox (its own uid, PID, mount
and IPC namespaces, the view) that runs one session at a time and is reused, clean, for the next one.

Used by fleet.agents.sandbox (`Sandbox.slot`/`release`), for the runner (fleet.agents.sessions). Why slots and not a
sandbox per session: creating one costs two execs (bubblewrap, setpriv) and a Python start, ~2-3 ms of CPU on a
small VM, which halved the rate of short sessions; a slot pays that once, and a session in it costs one posix_spawn
(see slot_init's docstring). What makes reuse safe: the slot's init kills every process of the slot when a session
ends (they all have its uid and live in its namespace) and removes every file the session left; when it cannot
(SysV IPC objects, a process that would not die, a file it cannot remove) it says so and exits, and the slot is
discarded. Sessions of one slot are sessions of one agent, so of one tenant; a slot's uid is its own for as long as
it lives (machine-wide, fleet.agents.sandbox.UidPool).

Host layout: `<state dir>/slots/<n>/` (root's, 0755; bound at /run/fleet in the slot) holds `session.sock` (the
running session's credential socket, made by the runner and owned by the slot's uid) and `scratch/` (the slot's
uid's, 0700; /run/fleet/scratch, the sessions' HOME and TMPDIR).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet.errors import FleetError

log = logging.getLogger(__name__)

INIT = Path(__file__).with_name("slot_init.py")
START_TIMEOUT_S = 15.0
REPLY_TIMEOUT_S = 10.0
MAX_REPLY = 64 << 10  # bytes of one frame from a slot's init


class SlotProcess:
    """A session running in a slot, with the interface of asyncio's Process that the runner uses (`pid` is the
    command's pid inside the slot; signals go through the slot's init, to every process of the session)."""

    def __init__(self, slot: Slot, pid: int, stdout: asyncio.StreamReader, done: asyncio.Future[int]) -> None:
        self.slot = slot
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._done = done  # made before the run request: a quick command's exit may come with its pid

    async def wait(self) -> int:
        code = await asyncio.shield(self._done)
        self.returncode = code
        return code

    def send_signal(self, sig: int) -> None:
        """To every process of the session (the slot's init sends it with kill(-1))."""
        if self.returncode is None and not self._done.done() and self.slot.alive:
            self.slot.send({"op": "signal", "sig": int(sig)})

    def destroy(self) -> None:
        """The last resort: end the whole slot (SIGKILL to bubblewrap; its init and every process go with it)."""
        self.slot.destroy("its session did not end when killed")



class Slot:
    """One sandbox that runs sessions one at a time."""

    def __init__(self, index: int, argv: Callable[[int], list[str]], directory: Path, uid: int, env: dict[str, str],
                 on_discard: Callable[[Slot], None]) -> None:
        self.index, self._argv, self.dir, self.uid, self._env = index, argv, directory, uid, env
        self._on_discard = on_discard
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.current: SlotProcess | None = None
        self._done: asyncio.Future[int] | None = None  # the running session's exit code, to come
        self.clean = asyncio.Event()  # set: ready for a session (nothing of the last one is left)
        self.alive = False

    @property
    def socket_path(self) -> Path:
        return self.dir / "session.sock"

    @property
    def scratch(self) -> Path:
        return self.dir / "scratch"

    async def start(self) -> None:
        """Start the sandbox and wait for its init's `ready` (FleetError with bubblewrap's reason if it fails)."""
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        if self.scratch.exists():  # what a discarded slot of this index left (rm: however deep it is)
            await (await asyncio.create_subprocess_exec("rm", "-rf", "--one-file-system", str(self.scratch))).wait()
            if self.scratch.exists():
                raise FleetError(f"cannot remove {self.scratch}, left by a discarded sandbox slot")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.scratch.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(self.scratch, self.uid, self.uid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        errors = self.dir.parent / f"{self.index}.log"
        try:
            with open(errors, "wb") as err:
                self.proc = await asyncio.create_subprocess_exec(
                    *self._argv(theirs.fileno()), pass_fds=(theirs.fileno(),), env=self._env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err)
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
        self.alive = True
        try:
            hello = await asyncio.wait_for(self._replies.get(), START_TIMEOUT_S)
        except (TimeoutError, FleetError) as exc:
            self.destroy("it did not start")
            said = errors.read_text(errors="replace").strip().splitlines() if errors.exists() else []
            raise FleetError(f"a sandbox slot does not start: {(said[-1:] or [str(exc) or 'no reason given'])[0][:300]}"
                             ) from exc
        if not hello.get("ready"):
            self.destroy("it did not start")
            raise FleetError(f"a sandbox slot said {hello!r} at start")
        self.clean.set()

    async def run(self, argv: list[str], env: dict[str, str]) -> SlotProcess:
        """Start a session's command in this slot (OSError as exec would raise it when it cannot be started)."""
        await self.clean.wait()
        if not self.alive:
            raise FleetError("this sandbox slot has ended")
        self.clean.clear()
        read_fd, write_fd = os.pipe()
        done = self._done = asyncio.get_running_loop().create_future()
        try:
            self.send({"op": "run", "argv": argv, "env": env}, fd=write_fd)
        finally:
            os.close(write_fd)
        try:
            reply = await asyncio.wait_for(self._replies.get(), REPLY_TIMEOUT_S)
        except BaseException:
            os.close(read_fd)
            self.destroy("it did not answer a run request")
            raise
        if "pid" not in reply:
            self._done = None
            self.clean.set()  # nothing ran
            os.close(read_fd)
            raise OSError(int(reply.get("errno") or 0), str(reply.get("error") or "the slot did not start it"))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        self.current = SlotProcess(self, int(reply["pid"]), reader, done)
        return self.current

    def send(self, obj: dict[str, Any], fd: int | None = None) -> None:
        if self._sock is None:
            raise FleetError("this sandbox slot has ended")
        data = json.dumps(obj).encode()
        frame = struct.pack(">I", len(data)) + data
        sent = 0
        while sent < len(frame):  # a frame is a few KB and the init reads at once: this does not hold the loop
            try:
                if fd is not None and sent == 0:
                    sent += socket.send_fds(self._sock, [frame], [fd])
                else:
                    sent += self._sock.send(frame[sent:])
            except BlockingIOError:
                select.select([], [self._sock], [], 1.0)
            except OSError as exc:
                self.destroy(f"its socket failed: {exc}")
                raise FleetError("this sandbox slot has ended") from exc

    def _on_readable(self) -> None:
        assert self._sock is not None
        ended: str | None = None
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    ended = "its init ended"
                    break
                self._buf += chunk
        except BlockingIOError:
            pass
        except OSError as exc:
            ended = f"its socket failed: {exc}"
        while len(self._buf) >= 4:  # what it said before it ended counts
            (size,) = struct.unpack(">I", self._buf[:4])
            if size > MAX_REPLY:  # the init's replies are small: this is not the init speaking
                self.destroy(f"it sent a frame of {size} bytes")
                return
            if len(self._buf) < 4 + size:
                break
            try:
                msg = json.loads(bytes(self._buf[4:4 + size]))
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError):
                self.destroy("it sent a frame that is not a JSON object")
                return
            del self._buf[:4 + size]
            if "exit" in msg:
                self._end(int(msg["exit"]))
            elif "clean" in msg:
                if msg["clean"]:
                    self.clean.set()
                else:
                    self.destroy(str(msg.get("why") or "it could not clean up"))
            else:
                self._replies.put_nowait(msg)
        if ended is not None:
            self.destroy(ended)

    def _end(self, code: int) -> None:
        done, self._done, self.current = self._done, None, None
        if done is not None and not done.done():
            done.set_result(code)

    def destroy(self, why: str) -> None:
        """End this slot for good: its sandbox, every process in it, and its place in the pool."""
        if not self.alive:
            return
        self.alive = False
        self.clean.set()  # whoever waits for it finds it dead
        self._replies.put_nowait({"error": f"the sandbox slot ended: {why}"})  # a run request waiting, too
        log.info("sandbox slot %d discarded: %s", self.index, why)
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._end(128 + signal.SIGKILL)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # bubblewrap: --die-with-parent takes its init, and the namespace, with it
            asyncio.get_running_loop().create_task(self._discard_when_gone(self.proc))
        else:
            self._on_discard(self)

    async def _discard_when_gone(self, proc: asyncio.subprocess.Process) -> None:
        """The slot's uid goes back to the pool only once its sandbox is gone."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
        self._on_discard(self)


class SlotPool:
    """The slots of one agent: an idle one for each session, a new one when none is idle."""

    def __init__(self, argv: Callable[[int, int, Path], list[str]], root: Path, take_uid: Callable[[], Any],
                 env: dict[str, str]) -> None:
        self._argv, self.root, self._take_uid, self._env = argv, root, take_uid, env
        self.idle: list[Slot] = []
        self.busy: set[Slot] = set()
        self._leases: dict[Slot, Any] = {}
        self._free_index: list[int] = []
        self._next = 0

    async def acquire(self) -> Slot:
        """An idle slot, clean ones first (one still removing its last session's files is waited for in
        `Slot.run`); a new one when none is idle."""
        self.idle = [s for s in self.idle if s.alive]
        if self.idle:
            ready = [s for s in self.idle if s.clean.is_set()]
            slot = ready[-1] if ready else self.idle[-1]
            self.idle.remove(slot)
            self.busy.add(slot)
            return slot
        return await self.acquire_new()

    async def acquire_new(self) -> Slot:
        """A new slot, busy (release it to make it idle)."""
        lease = self._take_uid()
        index = self._free_index.pop() if self._free_index else self._next
        self._next = max(self._next, index + 1)
        directory = self.root / str(index)
        slot = Slot(index, lambda fd: self._argv(fd, lease.uid, directory), directory, lease.uid, self._env,
                    self._discarded)
        self._leases[slot] = lease
        self.busy.add(slot)
        try:
            await slot.start()
        except BaseException:
            self._discarded(slot)
            raise
        return slot

    async def warm(self, count: int) -> None:
        """Start idle slots until there are `count` in all."""
        while len([s for s in (*self.idle, *self.busy) if s.alive]) < count:
            slot = await self.acquire_new()
            self.release(slot)

    def release(self, slot: Slot) -> None:
        self.busy.discard(slot)
        if slot.alive:
            self.idle.append(slot)

    def _discarded(self, slot: Slot) -> None:
        self.busy.discard(slot)
        with contextlib.suppress(ValueError):
            self.idle.remove(slot)
        lease = self._leases.pop(slot, None)
        if lease is not None:
            lease.release()
            self._free_index.append(slot.index)

    def stop(self) -> None:
        for slot in [*self.idle, *self.busy]:
            slot.destroy("the agent stops")


INIT_IN_VIEW = "/run/fleet-init.py"


def init_view() -> list[str]:
    """bubblewrap's arguments that put the slot's init (this package's slot_init.py, read-only) in the view."""
    return ["--ro-bind", str(INIT), INIT_IN_VIEW]


def init_command(fd: int) -> list[str]:
    """The slot init's argv (after bubblewrap's and setpriv's)."""
    return [sys.executable, "-I", "-S", INIT_IN_VIEW, str(fd)]
