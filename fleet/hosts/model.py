"""The one host model: `Host`, a registered host as every reader sees it, and the rules that derive it.

A host has a durable record (fleet.bus.messages.HostRecord: identity, tenant, key, pools, envelope, fixed at
enrollment) and dynamic state (the last heartbeat: reported status, running sessions, version, when). `Host` is
both, resolved against the applied pools: its session slots are the record's capped by every pool it serves
(`host_slots`), its labels are the record's plus its pools', its status follows `status_of` (the one status
rule). The registry of `fleet server` (fleet.hosts.registry) builds Hosts; they travel as rows of `HOST_COLUMNS`
(`to_row` / `from_row`); `fleet list`, `fleet show`, the reconciler (fleet.reconciler.live.ObservedHost is this
class), `fleet route test` and the routing rules read them. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.schema.vocabulary import HOST_STATUSES, LIVE_STATUSES

STATUSES = HOST_STATUSES  # the names readers of this module know them by (fleet.schema.vocabulary defines them)
__all__ = ["LIVE_STATUSES", "STATUSES"]


@dataclass(frozen=True, slots=True)
class Session:
    """A session a host reports as running on it."""

    session_id: str
    phase: str
    project: str | None = None
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class Host:
    """A registered host: its record resolved against the applied pools, plus what its heartbeats say."""

    machine_id: str
    tenant: str
    hostname: str = ""
    key_id: str | None = None
    pools: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    status: str = "active"
    running: int = 0
    max_sessions: int = 0
    sessions: tuple[Session, ...] = ()
    pool_modes: tuple[str, ...] = ()  # the mode of each pool in `pools`, same order
    max_disk_gb: float | None = None
    last_seen: float | None = None  # epoch seconds of the last heartbeat (kept across server restarts)
    started_at: float | None = None  # epoch seconds of the agent's last (re)start, while it is live
    version: str | None = None  # fleet version the agent runs
    enrolled_at: str | None = None
    revoked_at: str | None = None
    credential_socket: str | None = None
    declared: str | None = None  # the status fleet.yaml declares for this host (hosts:), if any
    isolation: str | None = None  # how it isolates its sessions (fleet.bus.messages.Isolation.describe)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)  # unknown columns of a newer server

    # the one host shape routing and the scheduler read (fleet.routing.HostView): slots, and slots used
    @property
    def slots(self) -> int:
        return self.max_sessions

    @property
    def used(self) -> int:
        return self.running

    @property
    def drained(self) -> bool:
        """Draining with nothing running: safe to stop."""
        return is_drained(self.status, self.running)

    def to_row(self) -> list[Any]:
        """The host as a row of HOST_COLUMNS (compact on the wire: 100k hosts page by page)."""
        return [getattr(self, name) if name != "sessions" else [[s.session_id, s.phase] for s in self.sessions]
                for name in HOST_COLUMNS]

    def replace(self, **changes: Any) -> Host:
        return dataclasses.replace(self, **changes)


#: the columns of a host row, in order: every field of Host but `extra`
HOST_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Host) if f.name != "extra")


def status_of(*, revoked: bool, live: bool, reported: str | None) -> str:
    """The one status rule. revoked (from the record) beats everything; a host without a recent heartbeat is
    offline (liveness is decided by the server, never claimed by a host); otherwise what the agent reports:
    active, paused or draining. "Drained" is not a status: it is draining with nothing running (`is_drained`)."""
    if revoked:
        return "revoked"
    if not live or reported not in LIVE_STATUSES:
        return "offline"
    return reported


#: the status each remote control command (`fleet hosts pause|resume|drain`) puts a host in
COMMAND_STATUS = {"pause": "paused", "resume": "active", "drain": "draining"}


def declared_conflict(host: Host, action: str) -> str | None:
    """Why `action` (pause, resume, drain) would not last on `host`: fleet.yaml declares another status for it
    (`hosts:`), which the declared-status controller (fleet.hosts.declared) restores within seconds. None when it
    would last."""
    want = COMMAND_STATUS.get(action)
    if want is None or host.declared is None or host.declared == want:
        return None
    return (f"host {host.machine_id} ({host.hostname}) is declared {host.declared} in fleet.yaml (`hosts:`): "
            f"the control plane would make it {host.declared} again within seconds, so it was not told to {action}")


def is_drained(status: str, running: int) -> bool:
    return status == "draining" and running == 0


def host_slots(pool_slots: Iterable[int | None]) -> int | None:
    """A host's session slots given the max_concurrent_sessions of every pool it serves: the smallest (a host
    serving two pools must fit both envelopes). None when no pool says."""
    known = [n for n in pool_slots if n]
    return min(known) if known else None


DEFAULT_MAX_SESSIONS = 4


def envelope(requested: int | None, pool_slots: int | None) -> int:
    """The session slots a host may use: what it asked for at enrollment (if it asked), capped by the smallest
    envelope of its applied pools (`host_slots`); DEFAULT_MAX_SESSIONS when neither says."""
    if requested is None:
        return pool_slots if pool_slots is not None else DEFAULT_MAX_SESSIONS
    return requested if pool_slots is None else min(requested, pool_slots)


def sorted_unique(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({item for group in groups for item in group}))


def from_row(columns: Sequence[str], row: Sequence[Any]) -> Host:
    """A Host from a row whose columns are named by `columns` (a newer server's extra columns land in `extra`).

    Raises ValueError/TypeError on a malformed row: rows come from the network, and a plan must never be built
    on a host it misread.
    """
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        (known if name in _FIELD_TYPES else extra)[name] = value
    for name in ("machine_id", "tenant"):
        if not isinstance(known.get(name), str):
            raise ValueError(f"{name} must be a string")
    out: dict[str, Any] = {}
    for name, value in known.items():
        kind = _FIELD_TYPES[name]
        if kind == "sessions":
            value = tuple(Session(str(s[0]), str(s[1])) for s in (value or ()))
        elif kind == "strs":
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings")
            value = tuple(value)
        elif kind == "int":
            if type(value) is not int:
                raise ValueError(f"{name} must be an integer")
        elif kind == "float?":
            if value is not None and type(value) not in (int, float):
                raise ValueError(f"{name} must be a number")
        elif kind == "str?":
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
        elif kind == "str" and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        out[name] = value
    if out.get("status", "active") not in STATUSES:
        raise ValueError(f"unknown status {out.get('status')!r}")
    return Host(**out, extra=extra)


def row_reader(columns: Sequence[str]) -> Callable[[Sequence[Any]], Host]:
    """`from_row` bound to `columns`, for the many rows of one page.

    When the columns are exactly HOST_COLUMNS (a server of this version), a row takes an unrolled path (~3 µs
    instead of ~7 µs: 100k hosts are read for every plan). It accepts only what from_row accepts (exact types,
    a known status); any row it does not accept outright goes through from_row, which builds it or says why.
    """
    if tuple(columns) != HOST_COLUMNS:
        return functools.partial(from_row, columns)
    return _host_row


def _strs(value: Any) -> bool:
    return (type(value) is list or type(value) is tuple) and all(type(v) is str for v in value)


def _host_row(row: Sequence[Any]) -> Host:
    if type(row) is not list or len(row) != len(HOST_COLUMNS):
        return from_row(HOST_COLUMNS, row)
    (machine_id, tenant, hostname, key_id, pools, labels, models, status, running, max_sessions, sessions, pool_modes,
     max_disk_gb, last_seen, started_at, version, enrolled_at, revoked_at, credential_socket, declared, isolation) = row
    if not (type(machine_id) is str and type(tenant) is str and type(hostname) is str and type(status) is str
            and status in STATUSES and type(running) is int and type(max_sessions) is int
            and _strs(pools) and _strs(labels) and _strs(models) and _strs(pool_modes)
            and (max_disk_gb is None or type(max_disk_gb) is float or type(max_disk_gb) is int)
            and (last_seen is None or type(last_seen) is float or type(last_seen) is int)
            and (started_at is None or type(started_at) is float or type(started_at) is int)
            and (key_id is None or type(key_id) is str) and (version is None or type(version) is str)
            and (enrolled_at is None or type(enrolled_at) is str) and (revoked_at is None or type(revoked_at) is str)
            and (credential_socket is None or type(credential_socket) is str)
            and (declared is None or type(declared) is str) and (isolation is None or type(isolation) is str)):
        return from_row(HOST_COLUMNS, row)
    return Host(machine_id, tenant, hostname, key_id, tuple(pools), tuple(labels), tuple(models), status, running,
                max_sessions, tuple(Session(str(s[0]), str(s[1])) for s in sessions) if sessions else (),
                tuple(pool_modes), max_disk_gb, last_seen, started_at, version, enrolled_at, revoked_at,
                credential_socket, declared, isolation)


_FIELD_TYPES = {
    "machine_id": "str", "tenant": "str", "hostname": "str", "key_id": "str?", "pools": "strs", "labels": "strs",
    "models": "strs", "status": "str", "running": "int", "max_sessions": "int", "sessions": "sessions",
    "pool_modes": "strs", "max_disk_gb": "float?", "last_seen": "float?", "started_at": "float?", "version": "str?",
    "enrolled_at": "str?", "revoked_at": "str?", "credential_socket": "str?", "declared": "str?",
    "isolation": "str?",
}
assert set(_FIELD_TYPES) == set(HOST_COLUMNS), "every Host field needs a row type"
assert HOST_COLUMNS == ("machine_id", "tenant", "hostname", "key_id", "pools", "labels", "models", "status", "running",
                        "max_sessions", "sessions", "pool_modes", "max_disk_gb", "last_seen", "started_at", "version",
                        "enrolled_at", "revoked_at", "credential_socket", "declared", "isolation"), "update _host_row too"
