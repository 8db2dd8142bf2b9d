"""Property test of the whole CLI: every command, fed odd arguments, ends with a documented exit code, without a
traceback or an `internal error` line, without a hang (a watchdog), and writes nothing outside its temporary directory.

The click tree is walked (fleet.cli.main.cli, subgroups and hidden aliases included); each command gets arguments
drawn from strategies chosen by each parameter's type (paths under /proc, /sys and /dev, FIFOs, binary, huge and
deeply nested files, long paths; NATS URLs, well- and ill-formed; numbers incl. nan, inf, negative and huge;
names incl. empty, whitespace, unicode, bidi controls, newlines, undecodable bytes), plus random extra tokens and
environment variables. Each runs in-process through click's CliRunner with FLEET_NATS_URL on a closed loopback
port, HOME and cwd in a fresh temporary directory.

Which bugs make it fail: a type that lets nan, inf or a huge number through (the event loop's timer overflows:
an `internal error`); a path used without a check (a write under /proc, a rename that replaces /dev/null when run
as root, a file in a missing directory); a read without a bound (/dev/zero) or one that blocks (a FIFO nobody
writes: a hang); an error message that a newline or a bidi character in a value breaks into several lines; an
exit code outside fleet.errors.EXIT_CODES; a command that starts a process or signals one.

Guards (this process runs as whatever user runs the tests, often root, so they matter):
- an audit hook refuses, while a command runs, every write, rename, removal, chmod or unix-socket bind outside
  the temporary directory (writing /dev/null is allowed), any process start and any signal but 0: a command
  that tries fails the test instead of touching the machine;
- a watchdog thread ends a command that runs longer than HANG_S (a hang is a failure);
- `fleet up` always gets, last, either an argument it must refuse before it starts anything, or --nats on a
  port that another program (a listener of this test) holds, so it never starts a server and never uses 4222;
  `fleet agent logs --follow` is stopped by the watchdog with Ctrl-C (exit 130 is then what is expected).

FLEET_FUZZ_EXAMPLES (default 600) is the number of examples over all commands; raise it for a long soak, e.g.
FLEET_FUZZ_EXAMPLES=6000 python -m pytest tests/unit/test_cli_fuzz.py. FLEET_FUZZ_CENSUS=FILE counts instead
of stopping: every example runs, each failure is appended to FILE as one JSON line, and nothing is shrunk (how
the before/after figures of a fix are measured).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.cli import options
from fleet.cli.main import cli
from fleet.errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USAGE

EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"
HANG_S = 20.0  # the watchdog: a command still running after this is a hang
FOLLOW_S = 1.0  # how long `fleet agent logs --follow` may follow before Ctrl-C


# ------------------------------------------------------------------------------------------- the command tree


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command and group under `group`, hidden ones included."""
    yield path, group
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            yield from walk(cmd, (*path, name))
        else:
            yield (*path, name), cmd


TREE = dict(walk(cli))
CENSUS = os.environ.get("FLEET_FUZZ_CENSUS")
PER_COMMAND = max(3, int(os.environ.get("FLEET_FUZZ_EXAMPLES", "600")) // len(TREE))


def test_the_walk_finds_every_command() -> None:
    leaves = {" ".join(p) for p, c in TREE.items() if not isinstance(c, click.Group)}
    assert {"up", "down", "server", "agent run", "agent logs", "apply", "plan", "route set", "schema",
            "machine show", "execution route set", "keys create", "hosts rm"} <= leaves
    assert len(leaves) >= 35


# ------------------------------------------------------------------------------------------- the guards


class Violation(BaseException):
    """A command tried to act outside its sandbox (not an Exception: nothing in fleet may swallow it)."""


class Hung(BaseException):
    """A command ran longer than HANG_S."""


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _abs(path: Any, follow: bool) -> str | None:
    if isinstance(path, int) or path is None:
        return None  # a file descriptor: its opening was checked
    text = os.fsdecode(path)
    full = os.path.join(os.getcwd(), os.path.expanduser(text)) if not os.path.isabs(text) else text
    if follow:
        return os.path.realpath(full)
    head, tail = os.path.split(os.path.normpath(full))
    return os.path.join(os.path.realpath(head), tail)


class Guard:
    """The audit hook (sys.addaudithook: installed once, active only while `root` is set)."""

    def __init__(self) -> None:
        self.root: str | None = None
        self.violations: list[str] = []
        self._busy = False

    def inside(self, where: str | None) -> bool:
        assert self.root is not None
        return where is None or where == self.root or where.startswith(self.root + os.sep)

    def refuse(self, what: str) -> None:
        self.violations.append(what)
        raise Violation(what)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.root is None or self._busy:
            return
        self._busy = True
        try:
            self.check(event, args)
        finally:
            self._busy = False

    def check(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, _mode, flags = args
            if flags is not None and flags & _WRITE_FLAGS:
                where = _abs(path, follow=True)
                if where != "/dev/null" and not self.inside(where):
                    self.refuse(f"open for writing {where}")
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.chown", "os.utime", "os.truncate",
                       "shutil.rmtree"):
            where = _abs(args[0], follow=False)
            if not self.inside(where):
                self.refuse(f"{event} {where}")
        elif event == "os.chmod":
            where = _abs(args[0], follow=True)
            if not self.inside(where):
                self.refuse(f"chmod {where}")
        elif event in ("os.rename", "os.link", "os.symlink"):
            for arg in (args[0], args[1]) if event == "os.rename" else (args[1],):
                where = _abs(arg, follow=False)
                if not self.inside(where):
                    self.refuse(f"{event} {where}")
        elif event == "socket.bind":
            address = args[1]
            if isinstance(address, str | bytes) and address and not self.inside(_abs(address, follow=False)):
                self.refuse(f"bind {address!r}")
        elif event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork", "os.system", "os.spawn"):
            self.refuse(f"start a process ({event} {args[:2]!r})")
        elif event == "os.kill" and args[1] != 0 or event == "os.killpg":
            self.refuse(f"{event} {args!r}")


GUARD = Guard()
sys.addaudithook(GUARD)


class Watchdog:
    """Raises `exc` in the main thread when a command runs longer than its bound (SIGUSR1, so that it does not
    take SIGALRM from pytest-timeout)."""

    def __init__(self) -> None:
        self.exc: type[BaseException] | None = None
        self.timer: threading.Timer | None = None
        self.main = threading.main_thread().ident
        signal.signal(signal.SIGUSR1, self._fire)

    def _fire(self, signum: int, frame: Any) -> None:
        exc, self.exc = self.exc, None
        if exc is not None:
            raise exc("still running after the watchdog's bound")

    def arm(self, seconds: float, exc: type[BaseException]) -> None:
        self.exc = exc
        assert self.main is not None
        self.timer = threading.Timer(seconds, signal.pthread_kill, (self.main, signal.SIGUSR1))
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        self.exc = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


# ------------------------------------------------------------------------------------------- the sandbox


@dataclass
class Sandbox:
    root: Path  # every write must stay under it
    shared: Path  # read-only fixtures made once: big, deep, binary files, a FIFO
    closed_port: int  # a loopback port nothing listens on (bound, never listening)
    held_port: int  # a loopback port a non-NATS listener holds (for `fleet up`)

    def workdir(self) -> Path:
        """A fresh cwd and HOME with the writable fixtures (each example may edit or create files in it)."""
        work = Path(tempfile.mkdtemp(prefix="ex", dir=self.root))
        shutil.copy(EXAMPLE, work / "fleet.yaml")
        (work / "bad.yaml").write_text("version: 1\norg: {id: Not An ID}\npools: 7\n")
        (work / "broken.yaml").write_text("version: 1\norg: [\n  - {\n")
        (work / "empty.yaml").write_text("")
        (work / "plan.json").write_text('{"format_version": 1, "changes": "no"}\n')
        (work / "other.json").write_text('{"format_version": "9\\nnine", "x": 1}\n')
        (work / "key.txt").write_text("fleet-enroll-key-secret-0123456789\n")
        (work / "creds.creds").write_text("-----BEGIN NATS USER JWT-----\nnot.a.jwt\n------END NATS USER JWT------\n")
        (work / "file.txt").write_text("some text\n")
        (work / "dir").mkdir()
        agent = work / "agent"
        agent.mkdir()
        (agent / "agent.log").write_bytes(b"".join(b"line %d\n" % i for i in range(200))
                                          + b"\xff\xfe not utf-8\n" + b"x" * 100_000 + b"\nlast\n")
        (work / "link-null").symlink_to("/dev/null")
        (work / "link-fifo").symlink_to(self.shared / "fifo")
        (work / "dangling").symlink_to(work / "gone")
        (work / "loop").symlink_to(work / "loop")
        return work


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("fuzz")))
    shared = root / "shared"
    shared.mkdir()
    (shared / "big.yaml").write_bytes(b"# filler\n" * 1_300_000)  # > 10 MiB
    (shared / "big.json").write_bytes(b'{"format_version": 1, "pad": "' + b"x" * 70_000_000 + b'"}')  # > 64 MiB
    (shared / "deep.json").write_text('{"format_version": ' + "[" * 200_000 + "]" * 200_000 + "}")
    (shared / "binary.bin").write_bytes(bytes(range(256)) * 16)
    (shared / "plan.yaml").write_bytes(b"{\x00\x01\x02 binary json?")
    os.mkfifo(shared / "fifo")
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused, and nobody else gets it
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(64)
    stop = threading.Event()

    def accept() -> None:  # a program that is not a NATS server: accepts and hangs up
        holder.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = holder.accept()
                conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    box = Sandbox(root, shared, closed.getsockname()[1], holder.getsockname()[1])
    try:
        yield box
    finally:
        stop.set()
        thread.join(5)
        closed.close()
        holder.close()


# ------------------------------------------------------------------------------------------- the strategies

NAMES = ["", " ", "\t", "a b", "a\nb", "line\r\n", "\u202eevil", "ab\u200bc", "\u2066x\u2069", "é", "ПУЛ-1",
         "pool_local", "Pool-Local-Main", "-x", "--", "x" * 64, "x" * 10_000, "\udcff", "🙂", "a,b", "a=b", "ü" * 300,
         "pool-local-main", "pool-cloud-e2b", "pool-k8s-gpu", "my-fintech-app", "clinical-notes", "nope",
         "0123abcd", "0123abcd-0000-4000-8000-000000000000", "ZZZZ", "abc/../../etc", "."]
NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "-1", "-0.0", "0", "0.0", "1e308", "1e400", "-1e400",
           "1000000000000", "99999999999999999999999", "1_000_000", "0x10", "", " ", "abc", "1,5", "1e-9", "5m",
           "2h", "500ms", "-5", "+3", " 7 ", "1e3", "65536"]
URL_FORMS = ["nats://127.0.0.1:{p}", "tls://127.0.0.1:{p}", "127.0.0.1:{p}", "nats://user:secret@127.0.0.1:{p}",
             "nats://token@localhost:{p}", "nats://[::1]:{p}", "nats://127.0.0.1:{p},nats://localhost:{p}",
             " nats://127.0.0.1:{p} ", "nats://127.0.0.1:{p},", "NATS://127.0.0.1:{p}",
             "", " ", ",", ",,", "nats://", "nats://:{p}", "nats://127.0.0.1:0", "nats://127.0.0.1:65536",
             "nats://127.0.0.1:99999", "nats://127.0.0.1:-1", "nats://127.0.0.1:abc", "nats://127.0.0.1:",
             "http://127.0.0.1:{p}", "foo://x:y", "nats://a b:{p}", "nats://127.0.0.1:{p}/path?q=1#f",
             "nats://[::1:{p}", "nats://999.999.999.999:{p}", "nats://fleet-fuzz.invalid:{p}", "nats:/127.0.0.1:{p}",
             "nats://127.0.0.1:{p}\nnats://x", "nats://\u202e127.0.0.1:{p}", "nats://ü.example:{p}",
             "nats://" + "a" * 300 + ":{p}", "nats://-bad-:{p}", "nats://127.0.0.1:{p}:{p}", "://127.0.0.1:{p}"]


def path_values(box: Sandbox) -> list[str]:
    s = box.shared
    return [
        "fleet.yaml", "bad.yaml", "broken.yaml", "empty.yaml", "plan.json", "other.json", "key.txt", "creds.creds",
        "file.txt", "dir", "dir/", "agent", "agent/agent.log", "missing.yaml", "missing/dir/x.json", "file.txt/x",
        "fleet.yaml/sub/x", "link-null", "link-fifo", "dangling", "loop", "~", "~/x", "~nouser/x", "", " ", "-",
        ".", "..", f"{s}/big.yaml", f"{s}/big.json", f"{s}/deep.json", f"{s}/binary.bin", f"{s}/plan.yaml",
        f"{s}/fifo", "a" * 300, "x/" * 2100, ("d" * 200 + "/") * 3 + "f", "long/" + "p" * 90,
        "/proc/fleet-fuzz/x", "/proc/fleet-fuzz", "/proc/self/status", "/proc", "/sys/fleet-fuzz",
        "/sys/kernel/fleet-fuzz", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/full", "/dev/stdout",
        "/dev/fleet-fuzz", "ünïcödé.yaml", "\u202eevil.yaml", "a\nb", "\udcff.yaml", "with space.yaml",
    ]


def names() -> st.SearchStrategy[str]:
    return st.sampled_from(NAMES) | st.text(max_size=12).filter(lambda t: "\0" not in t)


def numbers(low: float, high: float) -> st.SearchStrategy[str]:
    """Odd spellings, and valid values kept small (a large valid timeout would only make the example wait)."""
    top = min(high, low + 1.0) if math.isfinite(high) else low + 1.0
    small = st.floats(min_value=max(low, 0.05), max_value=max(top, max(low, 0.05)), allow_nan=False)
    return st.sampled_from(NUMBERS) | small.map(lambda v: f"{v:.3g}")


def integers() -> st.SearchStrategy[str]:
    return st.sampled_from(NUMBERS) | st.integers(min_value=-10, max_value=300).map(str)


def urls(box: Sandbox) -> st.SearchStrategy[str]:
    return st.sampled_from(URL_FORMS).map(lambda u: u.replace("{p}", str(box.closed_port)))


def paths(box: Sandbox) -> st.SearchStrategy[str]:
    return st.sampled_from(path_values(box)) | st.text(
        st.characters(exclude_characters="/\0", exclude_categories=["Cs"]), min_size=1, max_size=20)


def _bounds(t: click.ParamType) -> tuple[float, float]:
    low = getattr(t, "min", None)
    high = getattr(t, "max", None)
    return (float(low) if low is not None else 0.0, float(high) if high is not None else math.inf)


def values_for(param: click.Parameter, box: Sandbox) -> st.SearchStrategy[str]:
    """Values for one parameter, chosen by its type."""
    t = param.type
    if isinstance(t, click.Choice):
        kind = "choice"
    elif isinstance(t, click.Path | click.File | options.OutputFile | options.InputFile | options.StateDir):
        kind = "path"
    elif isinstance(t, options.NatsUrl):
        kind = "url"
    elif isinstance(t, options.NameList):
        kind = "names"
    elif isinstance(t, options.Name):
        kind = "name"
    elif isinstance(t, click.types.FloatParamType):
        kind = "seconds"
    elif isinstance(t, click.types.IntParamType):
        kind = "int"
    else:
        kind = "text"
    if kind == "choice":
        return st.sampled_from([*map(str, t.choices), "", "JSON", "yaml", "human\n"])  # type: ignore[attr-defined]
    if kind == "path":
        return paths(box)
    if kind == "seconds":
        return numbers(*_bounds(t))
    if kind == "int":
        return integers()
    if kind == "url":
        return urls(box)
    if kind == "name":
        return names()
    if kind == "names":
        return names() | st.lists(names(), min_size=2, max_size=4).map(",".join)
    # plain text: anything
    return names() | urls(box) | st.sampled_from(NUMBERS) | paths(box)


def junk(box: Sandbox) -> st.SearchStrategy[str]:
    return (st.sampled_from(["--", "-", "--no-such-option", "-x", "--json", "--help", "-h", "--format", "-n",
                             "--nats", "--state-dir", "-f", "--=", "---", "--json=1", "-vvv"])
            | names() | paths(box) | urls(box) | st.sampled_from(NUMBERS))


@st.composite
def argv_for(draw: st.DrawFn, path: tuple[str, ...], cmd: click.Command, box: Sandbox) -> list[str]:
    groups: list[list[str]] = []
    if isinstance(cmd, click.Group):
        subs = sorted(cmd.list_commands(click.Context(cmd)))
        if subs and draw(st.booleans()):  # a near-miss of a subcommand name (never a real one: that runs it)
            name = draw(st.sampled_from(subs))
            groups.append([draw(st.sampled_from([name + "x", name[:-1], name.upper(), " " + name, name + "\n"]))])
    params = [p for p in cmd.params if p.name != "help"]
    opts = [p for p in params if isinstance(p, click.Option)]
    for p in draw(st.lists(st.sampled_from(opts), max_size=4)) if opts else []:
        assert isinstance(p, click.Option)
        name = draw(st.sampled_from(p.opts + p.secondary_opts))
        if p.is_flag or p.count:
            groups.append([name])
        elif name.startswith("--") and draw(st.integers(0, 4)) == 0:
            groups.append([f"{name}={draw(values_for(p, box))}"])
        else:
            groups.append([name, draw(values_for(p, box))])
    for a in (p for p in params if isinstance(p, click.Argument)):
        if draw(st.integers(0, 3)) > 0:
            groups.append([draw(values_for(a, box))])
    groups += [[t] for t in draw(st.lists(junk(box), max_size=2))]
    order = draw(st.permutations(range(len(groups))))
    argv = [tok for i in order for tok in groups[i]]
    if path == ("up",):  # never let `fleet up` start anything: last, a refusal, or a port someone else holds
        argv += draw(st.sampled_from([["--timeout", "nan"], ["--offline-after", "0"],
                                      ["--nats", "nats://127.0.0.1:0"], ["--nats", "nats://10.255.0.1:4100"],
                                      ["--nats", f"nats://127.0.0.1:{box.held_port}"],
                                      ["--nats", f"nats://127.0.0.1:{box.held_port}"]]))
    return argv


ENV_VARS = {
    "FLEET_NATS_URL": "url", "FLEET_NATS_TIMEOUT": "seconds", "FLEET_STATE_DIR": "path", "FLEET_FILE": "path",
    "FLEET_AGENT_STATE_DIR": "path", "FLEET_PROJECT": "name", "FLEET_ENROLL_KEY": "name",
    "FLEET_OFFLINE_AFTER": "seconds", "FLEET_NATS_CREDS": "path",
}


@st.composite
def environment(draw: st.DrawFn, box: Sandbox) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in draw(st.lists(st.sampled_from(sorted(ENV_VARS)), max_size=2, unique=True)):
        kind = ENV_VARS[var]
        strategy = {"url": urls(box), "seconds": numbers(0.1, 1.0), "path": paths(box), "name": names()}[kind]
        env[var] = draw(strategy.filter(lambda v: "\0" not in v))
    if "FLEET_NATS_TIMEOUT" in env:  # a valid but large connect timeout would only make the example wait
        with contextlib.suppress(ValueError):
            if float(env["FLEET_NATS_TIMEOUT"].replace("_", "")) > 2:
                env["FLEET_NATS_TIMEOUT"] = "0.2"
    return env


# ------------------------------------------------------------------------------------------- running one


WATCHDOG: Watchdog | None = None


@dataclass
class Outcome:
    """What check() reads of a run that the guards stopped (click's Result otherwise)."""

    stdout: str
    stderr: str
    exit_code: int | None


def _follows(cmd: click.Command, argv: list[str]) -> bool:
    """Would click parse `argv` with --follow on (`fleet agent logs`)?"""
    try:
        ctx = cmd.make_context("logs", list(argv), resilient_parsing=True)
    except Exception:
        return False
    return bool(ctx.params.get("follow"))


@contextlib.contextmanager
def _isolated_logging() -> Iterator[None]:
    """`fleet agent run` and `fleet server` configure the root logger (handlers on this example's stderr and log
    file): put it back afterwards, so that the next example does not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for h in root.handlers:
            if h not in handlers:
                with contextlib.suppress(Exception):
                    h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def run_one(box: Sandbox, path: tuple[str, ...], argv: list[str],
            extra_env: dict[str, str]) -> tuple[Any, float, bool]:
    """Run `fleet PATH ARGV` in a fresh workdir under the guards: (click's Result or an Outcome, seconds, whether it
    was a `--follow` that the watchdog stopped on purpose)."""
    global WATCHDOG
    if WATCHDOG is None:
        WATCHDOG = Watchdog()
    work = box.workdir()
    env: dict[str, str | None] = {var: None for var in ENV_VARS}
    env.update({"FLEET_NATS_URL": f"nats://127.0.0.1:{box.closed_port}", "FLEET_NATS_TIMEOUT": "0.2",
                "HOME": str(work), "CI": "1", "NO_COLOR": "1", "FLEET_DEBUG": None, "FLEET_LOCK_TTL": None})
    env.update(extra_env)
    cmd = TREE[path]
    follow = path[-1:] == ("logs",) and _follows(cmd, argv)
    old_cwd = os.getcwd()
    os.chdir(work)
    GUARD.violations.clear()
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    began = time.monotonic()
    try:
        with _isolated_logging():
            WATCHDOG.arm(FOLLOW_S if follow else HANG_S, KeyboardInterrupt if follow else Hung)
            GUARD.root = str(box.root)
            try:
                result: Any = CliRunner().invoke(cli, [*path, *argv], env=env, prog_name="fleet",
                                                 catch_exceptions=False)
            except (Hung, Violation) as exc:  # reported by check(), with the arguments that caused it
                result = Outcome("", f"{type(exc).__name__}: {exc}", None)
            finally:
                GUARD.root = None
                WATCHDOG.disarm()
    finally:
        elapsed = time.monotonic() - began
        sys.dont_write_bytecode = dont_write
        os.chdir(old_cwd)
        shutil.rmtree(work, ignore_errors=True)
    return result, elapsed, follow


def check(path: tuple[str, ...], argv: list[str], result: Any, elapsed: float, follow: bool) -> None:
    what = f"fleet {' '.join(path)} {argv!r}"
    out, err = result.stdout, result.stderr
    if not argv and isinstance(TREE[path], click.Group) and result.exit_code == EXIT_USAGE:
        shown = "".join(ln for ln in err.splitlines(keepends=True) if not ln.startswith("warning: "))
        assert shown.startswith("Usage: fleet"), f"[one-line] {what}: a group without a command shows its help\n{err}"
        return
    assert not GUARD.violations, f"[outside] {what}: {GUARD.violations}"
    assert not err.startswith("Hung: "), f"[hang] {what}: no end after {HANG_S:g} s"
    assert "Traceback (most recent call last)" not in out + err, f"[traceback] {what}:\n{out}\n{err}"
    assert "error: internal error" not in err, f"[internal] {what}: {err}"
    assert result.exit_code in EXIT_CODES, f"[exit] {what}: exit {result.exit_code}\n{err}"
    if result.exit_code == EXIT_INTERRUPTED:
        assert follow, f"[interrupted] {what}: interrupted although it does not follow\n{err}"
    if result.exit_code == EXIT_USAGE:  # one `error: …` line, at most one `hint: …` after it; warnings allowed
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning: ")]
        assert lines and lines[0].startswith("error: "), f"[one-line] {what}:\n{err}"
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), f"[one-line] {what}:\n{err}"


def _ids(path: tuple[str, ...]) -> str:
    return " ".join(path) or "fleet"


@pytest.mark.timeout(int(PER_COMMAND * HANG_S + 120))
@pytest.mark.parametrize("path", sorted(TREE), ids=_ids)
def test_every_command_survives_odd_arguments(path: tuple[str, ...], sandbox: Sandbox) -> None:
    cmd = TREE[path]

    @settings(max_examples=PER_COMMAND, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argv=argv_for(path, cmd, sandbox), env=environment(sandbox))
    def prop(argv: list[str], env: dict[str, str]) -> None:
        result, elapsed, follow = run_one(sandbox, path, argv, env)
        if not CENSUS:
            check(path, argv, result, elapsed, follow)
            return
        try:
            check(path, argv, result, elapsed, follow)
            failure = None
        except AssertionError as exc:
            failure = str(exc)
        with open(CENSUS, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"command": " ".join(path), "argv": argv, "env": env, "exit": result.exit_code,
                                 "seconds": round(elapsed, 3), "failure": failure}) + "\n")

    prop()


# ------------------------------------------------------------------------------------------- the guards work


def test_the_guard_refuses_writes_outside_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    """Which bug would make the fuzz miss a write outside its directory? A guard that does not fire."""
    outside = Path(os.path.realpath(tmp_path)) / "outside"
    GUARD.root = str(sandbox.root)
    try:
        for attempt in (lambda: outside.write_text("x"), lambda: outside.mkdir(), lambda: os.kill(os.getpid(), 0),
                        lambda: os.kill(os.getpid(), signal.SIGCONT), lambda: os.rename(sandbox.shared / "x", outside)):
            with contextlib.suppress(Violation, OSError):
                attempt()
        (sandbox.root / "inside").write_text("fine")
        with open("/dev/null", "w") as fh:
            fh.write("fine")
    finally:
        GUARD.root = None
    assert not outside.exists()
    assert len(GUARD.violations) == 4, GUARD.violations
    GUARD.violations.clear()


def test_the_watchdog_ends_a_hang() -> None:
    global WATCHDOG
    if WATCHDOG is None:
        WATCHDOG = Watchdog()
    WATCHDOG.arm(0.2, Hung)
    with pytest.raises(Hung):  # raised only by the watchdog: the wait below would otherwise end without it
        try:
            threading.Event().wait(60)
        finally:
            WATCHDOG.disarm()

