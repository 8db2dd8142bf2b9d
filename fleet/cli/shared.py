"""Helpers shared by the CLI commands: running a command's async body (signals become a clean cancellation, with
the command's own words for what an interruption leaves behind) and `fleet server`'s loop (`run_service`: uvloop),
loading the config with diagnostics printed, the plugin registry, atomic file writes, bounded file reads, and
`iso_time`, the one form of a time in every JSON output of the CLI (ISO 8601 in UTC, with its zone: docs/cli.md).

Called by fleet.cli.*_cmds modules only.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fleet.errors import FleetError, Interrupted, UsageError

if TYPE_CHECKING:  # loaded by the commands that read fleet.yaml, not by `fleet list`
    from fleet.plugins.registry import Registry
    from fleet.schema.api import LoadResult

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_service(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `fleet server`'s loop on uvloop when it is installed (a dependency on Linux and macOS: ~15 % off a
    session's round trip, docs/benchmarks.md), else on asyncio's own loop; FLEET_EVENT_LOOP=asyncio chooses
    asyncio's. Short commands keep asyncio (uvloop's import costs more than it saves there), and so do agents (they
    spawn a process per session, which costs 2.5x the CPU on uvloop)."""
    import asyncio
    import importlib.util
    import os

    choice = os.environ.get("FLEET_EVENT_LOOP", "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise UsageError(f"FLEET_EVENT_LOOP must be uvloop or asyncio, not {choice[:40]!r}")
    if choice == "uvloop" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


#: what a command says when a signal interrupts it: (message after "interrupted by SIGINT: ", hint); called then
Interruption = Callable[[], tuple[str, str | None]]


def _nothing_more() -> tuple[str, str | None]:
    return "nothing more was done", None


def run_async(main: Callable[[], Awaitable[T]], interrupted: Interruption = _nothing_more) -> T:
    """asyncio.run(main()), with Ctrl-C, SIGTERM and SIGHUP (a cancelled CD job, a dropped SSH session) turned into
    a cancellation of the command: its `finally` blocks run (an apply releases its lock), then Interrupted, in the
    words `interrupted` gives (called then, so that it can name what the command was doing: the session it
    followed, the lock it released)."""
    import asyncio  # here, not at the top: `fleet validate` and `fleet schema` never run a loop (~17 ms of imports)

    async def runner() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        got: list[int] = []

        def on_signal(signum: int) -> None:
            got.append(signum)
            if task is not None:
                task.cancel()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main()
        except asyncio.CancelledError:
            if got:
                what, hint = interrupted()
                raise Interrupted(f"interrupted by {signal.Signals(got[0]).name}: {what}", hint=hint) from None
            raise
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


def iso_time(epoch: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC with its zone and milliseconds (`2026-01-31T09:30:00.250Z`), the form of
    every time in the CLI's JSON (hosts, sessions, their history); None stays None (never happened)."""
    if epoch is None:
        return None
    seconds, millis = divmod(round(epoch * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def cyclic_gc_paused(command: Callable[..., T]) -> Callable[..., T]:
    """No cyclic GC while `command` runs (`fleet plan`, `fleet apply`): they build large graphs that live as long
    as the command (the parsed fleet.yaml, every host of the fleet), which hold no garbage, yet every full
    collection would traverse them again. The command is short-lived; the collector's state is restored when it
    returns (tests run commands in-process)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        was = gc.isenabled()
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return wrapper


@functools.cache
def plugin_registry() -> Registry:
    from fleet.plugins.registry import load_registry

    reg = load_registry()
    for warning in reg.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    return reg


def print_diagnostics(result: LoadResult) -> None:
    """Every diagnostic on stderr, errors red, warnings yellow, then a count line."""
    for d in result.diagnostics:
        first, *rest = d.format().split("\n")
        click.secho(first, fg="red" if d.severity == "error" else "yellow", err=True)
        for line in rest:
            click.echo(line, err=True)
    if result.errors:
        n, w = len(result.errors), len(result.warnings)
        click.echo(f"{n} error{'s' if n != 1 else ''}" + (f", {w} warning{'s' if w != 1 else ''}" if w else ""), err=True)


def load_fleet(*args: Any, **kwargs: Any) -> LoadResult:
    """fleet.schema.api.load_fleet, imported on first use (the schema stack is heavy; `fleet list` needs none)."""
    from fleet.schema.api import load_fleet as load

    return load(*args, **kwargs)


def load_config_or_report(file: Path, *, report: bool = True, exit_on_error: bool = True, strict: bool = False) -> LoadResult:
    """Load fleet.yaml; print its diagnostics on stderr (unless the caller reports them itself, as
    `fleet validate --format json` does); exit 1 on errors when exit_on_error."""
    result = load_fleet(file, backends=plugin_registry().settings_validators())
    if report:
        print_diagnostics(result)
    if exit_on_error and (not result.ok or (strict and result.warnings)):
        sys.exit(1)
    return result


def atomic_write(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace a file's content atomically (temp file + rename), so a crash never leaves half a file.

    mode=None edits an existing file: its mode, a UTF-8 BOM and symlinks are kept (the link's target is written).
    With a mode (0600 for secrets) the file is created or replaced with exactly that mode.
    """
    target = path.resolve()
    prefix = ""
    if mode is None:
        mode = target.stat().st_mode & 0o777
        with open(target, "rb") as fh:
            prefix = "\ufeff" if fh.read(3) == b"\xef\xbb\xbf" else ""
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(prefix + text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FleetError(f"cannot write {path}: {exc.strerror or exc}") from exc


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The content of `path`, refused beyond `limit` bytes: a regular file or a FIFO (opened without blocking, so
    a FIFO that nobody writes reads as empty instead of hanging), never a directory or a device (/dev/zero).
    UsageError (naming `what`, e.g. `--enroll-key-file`) when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{what} {path}: is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise UsageError(f"{what} {path}: not a regular file")
        os.set_blocking(fd, True)
        try:
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise UsageError(f"{what} {path}: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise UsageError(f"{what} {path}: larger than {limit} bytes")
    return raw
