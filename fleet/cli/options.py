"""Shared click options and parameter types, so that every command spells and checks its arguments the same way.

Options: `-f/--file` (FLEET_FILE), `--nats` (FLEET_NATS_URL) with `--creds` (FLEET_NATS_CREDS) and
`--connect-timeout`, `--state-dir` (FLEET_STATE_DIR, and the agent's FLEET_AGENT_STATE_DIR), `--json` / `--format`.

Types: each refuses a bad value while the command line is parsed, before anything runs, in one line (click's
BadParameter, which fleet.cli.main prints as `error: …` and ends with exit 64), quoting the value with control,
invisible and undecodable characters escaped (`shown`): `Seconds` / `Number` (finite, bounded), `Count` (bounded
int), `NatsUrl` (`nats://` or `tls://` host:port lists), `OutputFile` (a regular file in a writable directory,
never under /proc, /sys or /dev), `InputFile` (an existing regular file of bounded size), `StateDir` (a directory
fleet may keep state in), `Name` / `NameList` (identifiers, hostnames, labels: no empty, whitespace, control or
bidi characters, bounded, the patterns of fleet.schema.json). Used by every module of fleet.cli; imports nothing
heavy (`fleet list` loads it).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from fleet.bus.settings import TlsSettings
from fleet.errors import FleetError, InvalidRequest

# the patterns and lengths of fleet.schema.json's names: what an ID, a label, a model is (defined once, there)
from fleet.schema.vocabulary import ID_MAX, ID_PATTERN, LABEL_MAX, LABEL_PATTERN, MODEL_MAX, MODEL_PATTERN

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_FILE = "fleet.yaml"
DEFAULT_STATE_DIR = ".fleet"
DEFAULT_AGENT_STATE_DIR = "~/.local/state/fleet-agent"


PATH_MAX = 4095  # bytes of a path the kernel accepts (Linux PATH_MAX without the NUL)
NAME_MAX = 255  # bytes of one path component
SOCKET_PATH_MAX = 107  # bytes of a unix socket path (sun_path without the NUL)
STATE_ROOM = 256  # bytes left for the paths fleet and nats-server make inside a state dir
SYSTEM_DIRS = ("/proc", "/sys", "/dev")
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, format (bidi, zero-width), surrogate, unassigned


def shown(value: object, limit: int = 60) -> str:
    """`value` quoted for a one-line message: control, invisible (bidi) and undecodable characters escaped, and
    cut to about `limit` characters."""
    text = str(value)
    cut = len(text) > limit
    out = []
    for ch in text[:limit]:
        if unicodedata.category(ch) in _INVISIBLE or (ch.isspace() and ch != " "):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                       if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "'" + "".join(out).replace("'", "\\'") + ("…" if cut else "") + "'"


def _invisible(text: str) -> bool:
    return any(unicodedata.category(ch) in _INVISIBLE or ch.isspace() for ch in text)


# ------------------------------------------------------------------------------------------------ numbers


class Number(click.FloatRange):
    """A finite float from `min` to `max` (click's FloatRange lets nan through: every comparison with it is
    false); nan, inf and out-of-range values are refused."""

    name = "number"

    def __init__(self, min: float = 0.0, max: float = 1e9, *, min_open: bool = False) -> None:
        super().__init__(min=min, max=max, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value) > 100:
            self.fail(f"{shown(value)} is not a number", param, ctx)
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{shown(value)} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


class Seconds(Number):
    """A duration in seconds: a finite number from `min` to `max` (nan, inf, negative and huge refused: a huge
    timeout would overflow the event loop's timer)."""

    name = "seconds"


class Count(click.IntRange):
    """A whole number from `min` to `max`."""

    name = "count"

    def __init__(self, min: int = 0, max: int = 1_000_000) -> None:
        super().__init__(min=min, max=max)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value) > 40:  # int() of 10,000 digits is slow, and never in range
            self.fail(f"{shown(value)} is not a whole number from {self.min} to {self.max}", param, ctx)
        return super().convert(value, param, ctx)


# ------------------------------------------------------------------------------------------------ NATS URLs

NATS_SCHEMES = ("nats", "tls")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _masked(server: str) -> str:
    """A server URL without its user and password, for messages."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", server)


def nats_server_problem(server: str) -> str | None:
    """What is wrong with one server of a --nats list (None: nothing). Accepts `[nats|tls]://[user[:pw]@]host[:port]`
    and `host[:port]`, as nats-py does."""
    if _invisible(server):
        return "contains a space or a control character"
    url = server if "://" in server else f"nats://{server}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        return f"is not a URL ({exc})"
    if parts.scheme.lower() not in NATS_SCHEMES:
        return f"scheme {shown(parts.scheme)} is not one of {', '.join(s + '://' for s in NATS_SCHEMES)}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "a NATS URL has no path, query or fragment"
    host = parts.hostname or ""
    if not host:
        return "has no host"
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{shown(host)} is not an IPv6 address"
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{shown(host)} is not an IPv4 address"
    elif len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.rstrip(".").split(".")):
        return f"{shown(host)} is not a host name"
    hostport = parts.netloc.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        rest = hostport.split("]", 1)[1]
    else:
        rest = hostport[hostport.index(":"):] if ":" in hostport else ""
    if rest and (not rest.startswith(":") or rest.count(":") > 1):
        return f"{shown(rest)} after the host is not :PORT"
    if rest == ":":
        return "has an empty port"
    port_text = rest[1:]
    if port_text and not port_text.isdigit():
        return f"port {shown(port_text)} is not a number"
    if port_text and not 1 <= int(port_text) <= 65535:
        return f"port {int(port_text)} is out of range: from 1 to 65535"
    return None


class NatsUrl(click.ParamType):
    """One NATS URL or a comma-separated list of them (a cluster); returns the list as given, trimmed."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        servers = [s.strip() for s in str(value).split(",")]
        servers = [s for s in servers if s]
        if not servers:
            self.fail("no server URL given; e.g. nats://127.0.0.1:4222", param, ctx)
        for server in servers:
            problem = nats_server_problem(server)
            if problem is not None:
                self.fail(f"{shown(_masked(server))}: {problem}", param, ctx)
        return ",".join(servers)


# ------------------------------------------------------------------------------------------------ paths


def _system_dir(path: str) -> str | None:
    return next((top for top in SYSTEM_DIRS if path == top or path.startswith(top + "/")), None)


def _too_long(path: str) -> str | None:
    raw = os.fsencode(path)
    if len(raw) > PATH_MAX:
        return f"path longer than {PATH_MAX} bytes"
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        return f"a name in the path is longer than {NAME_MAX} bytes"
    return None


def _text(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _expand(text: str) -> Path:
    """`text` with a leading ~ or ~user expanded; ValueError for a user (or a HOME) that does not exist."""
    expanded = os.path.expanduser(text)
    if text.startswith("~") and expanded == text:
        raise ValueError(f"{shown(text.split('/')[0])}: no such user (or no home directory)")
    return Path(expanded)


def _path(ptype: click.ParamType, text: str, param: click.Parameter | None, ctx: click.Context | None) -> Path:
    """`text` as a path for the path types below: not empty, ~ expanded, short enough (ptype.fail otherwise)."""
    if not text.strip():
        ptype.fail("empty path", param, ctx)
    try:
        path = _expand(text)
    except ValueError as exc:
        ptype.fail(str(exc), param, ctx)
    problem = _too_long(os.path.abspath(path))
    if problem:
        ptype.fail(f"{shown(text)}: {problem}", param, ctx)
    return path


#: what OutputFile(stdout=True) returns for `-` and /dev/stdout
STDOUT = Path("-")


class OutputFile(click.ParamType):
    """A file fleet writes: a regular file (or a new one) in an existing, writable directory; never a path under
    /proc, /sys or /dev (a device or kernel file is not an output; as root, replacing one would break the
    machine). With `stdout=True`, `-` and /dev/stdout mean standard output (returned as STDOUT)."""

    name = "file"

    def __init__(self, *, stdout: bool = False) -> None:
        self.stdout = stdout

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        text = _text(value)
        if self.stdout and text in ("-", "/dev/stdout"):
            return STDOUT
        path = _path(self, text, param, ctx)
        full = os.path.abspath(path)
        real = os.path.realpath(full)
        top = _system_dir(full) or _system_dir(real)
        if top:
            self.fail(f"{shown(text)} is under {top}: not a file fleet writes"
                      + ("; use - for standard output" if self.stdout else ""), param, ctx)
        try:
            st: os.stat_result | None = os.stat(real)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self.fail(f"{shown(text)}: {exc.strerror or exc}", param, ctx)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                self.fail(f"{shown(text)} is a directory", param, ctx)
            if not stat.S_ISREG(st.st_mode):
                self.fail(f"{shown(text)} is not a regular file", param, ctx)
            if not os.access(real, os.W_OK):
                self.fail(f"{shown(text)} is not writable", param, ctx)
        parent = os.path.dirname(real)
        if not os.path.isdir(parent):
            self.fail(f"{shown(text)}: directory {shown(parent)} does not exist", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"{shown(text)}: directory {shown(parent)} is not writable", param, ctx)
        return path


class InputFile(click.ParamType):
    """A file fleet reads: an existing, readable regular file of at most `max_bytes` (a FIFO too with
    `fifo=True`, e.g. `--enroll-key-file <(pass show key)`); directories, devices (/dev/zero, /dev/urandom) and
    sockets are refused. Readers still read at most max_bytes (fleet.cli.shared.read_bounded)."""

    name = "file"

    def __init__(self, *, max_bytes: int, fifo: bool = False, what: str = "file") -> None:
        self.max_bytes, self.fifo, self.what = max_bytes, fifo, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        text = _text(value)
        path = _path(self, text, param, ctx)
        try:
            st = os.stat(path)
        except OSError as exc:
            self.fail(f"{shown(text)}: {exc.strerror or exc}", param, ctx)
        if stat.S_ISDIR(st.st_mode):
            self.fail(f"{shown(text)} is a directory, not a {self.what}", param, ctx)
        if stat.S_ISFIFO(st.st_mode) and self.fifo:
            return path
        if not stat.S_ISREG(st.st_mode):
            self.fail(f"{shown(text)} is not a regular file, not a {self.what}", param, ctx)
        if st.st_size > self.max_bytes:
            self.fail(f"{shown(text)} is larger than {self.max_bytes} bytes: not a {self.what}", param, ctx)
        if not os.access(path, os.R_OK):
            self.fail(f"{shown(text)} is not readable", param, ctx)
        return path


def usable_dir_problem(path: Path) -> str | None:
    """Why `path` cannot hold fleet's files (None: it can): its nearest existing ancestor must be a writable
    directory (`path` itself when it exists)."""
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return "it is not a directory" if existing == path else f"its parent {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "it is not writable" if existing == path else f"its parent {existing} is not writable"
    return None


class StateDir(click.ParamType):
    """A directory fleet keeps state in: never under /proc, /sys or /dev, never /, and short enough for the paths
    fleet makes in it. `create=True` (`fleet up`, `fleet agent run`): it must be a directory, or creatable in a
    writable one. `agent=True`: room for the agent's unix sockets, and not a directory shared with every user
    (the agent makes its state dir private: mode 0700)."""

    name = "directory"

    def __init__(self, *, create: bool = False, agent: bool = False) -> None:
        self.create, self.agent = create, agent

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        text = _text(value)
        path = _path(self, text, param, ctx)
        full = Path(os.path.abspath(path))
        if len(os.fsencode(str(full))) > PATH_MAX - STATE_ROOM:
            self.fail(f"{shown(text)}: path longer than {PATH_MAX - STATE_ROOM} bytes (fleet makes paths inside it)",
                      param, ctx)
        real = os.path.realpath(full)
        top = _system_dir(str(full)) or _system_dir(real)
        if top:
            self.fail(f"{shown(text)} is under {top}: not a place for fleet's state", param, ctx)
        if real == "/":
            self.fail(f"{shown(text)} is the root directory: not a place for fleet's state", param, ctx)
        if self.agent:
            longest = len(os.fsencode(str(full / "control.sock")))
            if longest > SOCKET_PATH_MAX:
                self.fail(f"{shown(text)} is too long for the agent's unix sockets (the absolute path may have at "
                          f"most {SOCKET_PATH_MAX - len('/control.sock')} bytes)", param, ctx)
        if self.create:
            problem = usable_dir_problem(full)
            if problem:
                self.fail(f"cannot use state dir {shown(text)}: {problem}", param, ctx)
            if self.agent and full.is_dir() and full.stat().st_mode & stat.S_IWOTH:
                self.fail(f"{shown(text)} is writable by every user (like /tmp): the agent keeps its credential "
                          "there and makes it private (mode 0700); use a directory of its own", param, ctx)
        return path


# ------------------------------------------------------------------------------------------------ names


class Name(click.ParamType):
    """A name that identifies something: refused when empty, longer than `max_length`, with whitespace, control
    or invisible (bidi, zero-width) characters, or not matching `pattern` (described by `rule`); `strip` and
    `lower` normalise it first; `conceal` keeps the value out of messages (a secret). `error`, when given, is the
    FleetError class to raise instead of a usage error (for machine IDs: the refusal the server sends, exit 1)."""

    name = "name"

    def __init__(self, what: str, *, pattern: str | None = None, rule: str = "", max_length: int = 253,
                 strip: bool = False, lower: bool = False, error: type[FleetError] | None = None,
                 hint: str | None = None, metavar: str = "NAME", conceal: bool = False) -> None:
        self.name, self.hint, self.conceal = metavar, hint, conceal
        self.what, self.rule, self.max_length, self.error = what, rule, max_length, error
        self.strip, self.lower = strip, lower
        self.pattern = re.compile(pattern) if pattern else None

    def problem(self, text: str) -> str | None:
        """What is wrong with `text` (None: nothing), in words that quote it (unless `conceal`: a secret)."""
        if not text:
            return f"empty {self.what}"
        if _invisible(text):
            quoted = "" if self.conceal else f" {shown(text)}"
            return f"malformed {self.what}{quoted}: it contains a space, control or invisible character"
        if len(text) > self.max_length:
            quoted = "" if self.conceal else f" {shown(text, 30)}"
            return f"malformed {self.what}{quoted}: longer than {self.max_length} characters"
        if self.pattern is not None and not self.pattern.match(text):
            quoted = "" if self.conceal else f" {shown(text)}"
            return f"malformed {self.what}{quoted}" + (f" ({self.rule})" if self.rule else "")
        return None

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip() if self.strip else str(value)
        text = text.lower() if self.lower else text
        problem = self.problem(text)
        if problem is not None:
            if self.error is not None:
                raise self.error(problem, hint=self.hint)
            self.fail(problem, param, ctx)
        return text


class NameList(click.ParamType):
    """Comma-separated names (blanks between commas ignored), each checked by `item`; returns a tuple."""

    name = "list"

    def __init__(self, item: Name) -> None:
        self.item = item
        self.name = f"{item.name}[,{item.name}...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        items = tuple(v.strip() for v in str(value).split(",") if v.strip())
        for item in items:
            problem = self.item.problem(item)
            if problem is not None:
                self.fail(problem, param, ctx)
        return items


ID = Name("fleet.yaml ID", pattern=ID_PATTERN, max_length=ID_MAX, metavar="ID",
          rule="lower-case letters, digits and '-', at most 63 characters")
LABEL = Name("label", pattern=LABEL_PATTERN, max_length=LABEL_MAX, rule="name or name=value, e.g. gpu=a100",
             metavar="LABEL")
MODEL = Name("model name", pattern=MODEL_PATTERN, max_length=MODEL_MAX,
             rule="letters, digits and . _ : / -, e.g. claude-3-5-sonnet", metavar="MODEL")
MACHINE_ID = Name("machine ID", pattern=r"^[0-9a-f-]{1,36}$", max_length=36, strip=True, lower=True,
                  rule="a UUID or a prefix of one", error=InvalidRequest, hint="`fleet list` shows the machine IDs",
                  metavar="MACHINE_ID")
LOCK_ID = Name("lock ID", pattern=r"^[A-Za-z0-9._-]+$", max_length=64, rule="as `fleet apply` printed it",
               metavar="LOCK_ID")
HOSTNAME = Name("hostname", max_length=253, metavar="HOSTNAME")
SECRET = Name("key secret", max_length=1024, strip=True, metavar="SECRET", conceal=True)


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class NatsSettings:
    """Where and how to reach NATS; passed to fleet.bus.connect by commands (`connect(**nats.kwargs())`)."""

    url: str
    creds: str | None
    connect_timeout: float
    tls: TlsSettings | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"url": self.url, "creds": self.creds, "connect_timeout": self.connect_timeout, "tls": self.tls}


def default_creds(role: str = "admin") -> str | None:
    """The creds file `fleet up` wrote for `role`, when the command runs where it ran: <state dir>/trust/<role>.creds
    (state dir: FLEET_STATE_DIR, default .fleet). None when there is none."""
    path = Path(os.environ.get("FLEET_STATE_DIR") or DEFAULT_STATE_DIR) / "trust" / f"{role}.creds"
    return os.fspath(path) if path.is_file() else None


def file_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`-f/--file FILE`: the fleet.yaml to read (default fleet.yaml, env FLEET_FILE). The loader checks the file
    itself and reports a bad one as a diagnostic (missing, a directory, binary, too large, a FIFO without writer)."""
    return click.option(
        "-f",
        "--file",
        "file",
        type=click.Path(path_type=Path, dir_okay=True),
        default=DEFAULT_FILE,
        envvar="FLEET_FILE",
        show_default=True,
        show_envvar=True,
        help="The fleet.yaml to read.",
    )(func)


CONNECT_TIMEOUT = Seconds(min=0.1, max=600)
MAX_CREDS_BYTES = 64 * 1024


def _nats_options(role: str, creds_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator behind `nats_options` (operators: the admin identity by default) and `agent_nats_options`
    (agents: the enrollment identity by default)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--nats",
            "nats_url",
            type=NatsUrl(),
            default=DEFAULT_NATS_URL,
            envvar="FLEET_NATS_URL",
            show_default=True,
            show_envvar=True,
            help="NATS server URL of the control plane, nats:// or tls:// (comma-separate several for a cluster).",
        )
        @click.option(
            "--creds",
            "nats_creds",
            type=InputFile(max_bytes=MAX_CREDS_BYTES, what="NATS credentials file"),
            envvar="FLEET_NATS_CREDS",
            show_envvar=True,
            default=None,
            help=creds_help,
        )
        @click.option(
            "--connect-timeout",
            "nats_timeout",
            type=CONNECT_TIMEOUT,
            default=3.0,
            envvar="FLEET_NATS_TIMEOUT",
            show_default=True,
            help="Seconds to wait for the NATS server before giving up.",
        )
        @click.option("--tls-ca", "tls_ca", type=InputFile(max_bytes=1024 * 1024, what="CA certificate"),
                      envvar="FLEET_NATS_TLS_CA", show_envvar=True, default=None,
                      help="CA certificate to verify the NATS server's TLS certificate.")
        @click.option("--tls-cert", "tls_cert", type=InputFile(max_bytes=1024 * 1024, what="client certificate"),
                      envvar="FLEET_NATS_TLS_CERT", show_envvar=True, default=None,
                      help="Client certificate, when the NATS server asks for one (with --tls-key).")
        @click.option("--tls-key", "tls_key", type=InputFile(max_bytes=1024 * 1024, what="client key"),
                      envvar="FLEET_NATS_TLS_KEY", show_envvar=True, default=None,
                      help="Private key of --tls-cert.")
        @functools.wraps(func)
        def wrapper(*args: Any, nats_url: str, nats_creds: Path | None, nats_timeout: float, tls_ca: Path | None,
                    tls_cert: Path | None, tls_key: Path | None, **kwargs: Any) -> Any:
            creds = os.fspath(nats_creds) if nats_creds is not None else default_creds(role)
            if bool(tls_cert) != bool(tls_key):
                raise click.UsageError("--tls-cert and --tls-key go together")
            tls = TlsSettings(*(os.fspath(p) if p else None for p in (tls_ca, tls_cert, tls_key)))
            return func(*args, nats=NatsSettings(nats_url, creds, nats_timeout, tls or None), **kwargs)

        return wrapper

    return decorate


#: `--nats URL`, `--creds FILE`, `--connect-timeout S`, `--tls-*`; the command receives one `nats: NatsSettings`
nats_options = _nats_options("admin", "NATS credentials file (JWT + NKey seed). Default: .fleet/trust/admin.creds "
                                      "(under FLEET_STATE_DIR) when `fleet up` made one there.")
#: the same for `fleet server`, whose --creds is the fleet server identity
server_nats_options = _nats_options("server", "NATS credentials of the fleet server identity. Default: "
                                              ".fleet/trust/server.creds (under FLEET_STATE_DIR) when `fleet up` made "
                                              "one there.")
#: the same for `fleet agent run`, whose --creds is the enrollment identity (only the first start needs it)
agent_nats_options = _nats_options("enroll", "Credentials of the enrollment identity, used once, to enroll (after that "
                                             "the agent uses its own host.creds). Default: .fleet/trust/enroll.creds "
                                             "(under FLEET_STATE_DIR) when `fleet up` made one there.")


def state_dir_option(create: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--state-dir DIR`: where the embedded fleet keeps its data and PID files (env FLEET_STATE_DIR);
    `create=True` for the commands that make it (`fleet up`)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return click.option(
            "--state-dir",
            type=StateDir(create=create),
            default=DEFAULT_STATE_DIR,
            envvar="FLEET_STATE_DIR",
            show_default=True,
            show_envvar=True,
            help="State directory of the embedded fleet.",
        )(func)

    return decorate


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--json`: machine-readable output instead of the table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def format_option(*choices: str, default: str = "human") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format CHOICE` (plus `--json` as a shorthand for `--format json`); the command receives `fmt`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default=default,
            show_default=True,
            help="Output format.",
        )
        @click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
        @functools.wraps(func)
        def wrapper(*args: Any, fmt: str, as_json: bool, **kwargs: Any) -> Any:
            return func(*args, fmt="json" if as_json else fmt, **kwargs)

        return wrapper

    return decorate


def agent_state_dir_option(create: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--state-dir DIR` of a worker agent (env FLEET_AGENT_STATE_DIR): identity, credential, sockets, log;
    `create=True` for `fleet agent run`, which makes it."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return click.option(
            "--state-dir",
            "agent_state_dir",
            type=StateDir(create=create, agent=True),
            default=DEFAULT_AGENT_STATE_DIR,
            envvar="FLEET_AGENT_STATE_DIR",
            show_default=True,
            show_envvar=True,
            help="State directory of the agent (identity, credential, control and credential sockets, log).",
        )(func)

    return decorate
