"""Typed messages of protocol v1: what agents, the server and the CLI send each other over NATS.

Used by fleet.agents (enroll, register, heartbeat, bye, control replies), fleet.service (the other side of each)
and the CLI's clients. Every message carries `v` (the protocol version); `decode()` refuses any other version
with UnsupportedVersion, a clear FleetError, instead of crashing on fields it does not know.
The heartbeat hot path of the server uses `decode_heartbeat_fast` (plain json + the version check) because it
must ingest tens of thousands per second; the full `Heartbeat` model documents and builds the same shape.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import FleetError

PROTOCOL_VERSION = 1

HostStatus = Literal["active", "paused", "draining", "idle", "offline", "revoked"]
AgentStatus = Literal["active", "paused", "draining", "idle"]
PoolMode = Literal["persistent", "on_demand", "hybrid"]
ControlAction = Literal["pause", "resume", "drain", "revoke"]


class ProtocolError(FleetError):
    """A message could not be decoded (not JSON, wrong shape)."""


class UnsupportedVersion(ProtocolError):
    """A message of a protocol version this fleet does not speak."""


class Message(BaseModel):
    """Base of every v1 message. Unknown fields are ignored (additive changes stay v1)."""

    model_config = ConfigDict(extra="ignore")
    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


M = TypeVar("M", bound=Message)


def _check_version(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed {what}: expected a JSON object")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"unsupported {what} version {version!r} (this fleet speaks v{PROTOCOL_VERSION})",
            hint="upgrade fleet on both sides to the same protocol version",
        )
    return obj


def decode(cls: type[M], data: bytes | str) -> M:
    """Decode one message of type `cls`; ProtocolError / UnsupportedVersion on anything else."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed {cls.__name__}: not JSON ({exc})") from exc
    _check_version(obj, cls.__name__)
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise ProtocolError(f"malformed {cls.__name__}: {where}: {first.get('msg')}") from exc


def decode_heartbeat_fast(data: bytes) -> dict[str, Any]:
    """The heartbeat as a plain dict, version-checked; cheap enough for the server's hot path."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed Heartbeat: not JSON ({exc})") from exc
    return _check_version(obj, "Heartbeat")


# ------------------------------------------------------------------------------------------- building blocks


class Capacity(BaseModel):
    """A host's capacity envelope (shown as maxConcurrentSessions / poolMaxDiskGb)."""

    max_concurrent_sessions: int = Field(ge=0)
    pool_max_disk_gb: float | None = None


class PoolMembership(BaseModel):
    id: str
    mode: PoolMode = "persistent"


class SessionInfo(BaseModel):
    id: str
    phase: str


# ------------------------------------------------------------------------------------------- agent <-> server


class EnrollRequest(Message):
    """First contact of a host: the enrollment key's secret plus what it asks to serve."""

    key: str = Field(min_length=1, repr=False)
    hostname: str
    version: str
    pools: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    max_sessions: int | None = Field(default=None, ge=0)
    pool_max_disk_gb: float | None = None
    tenant: str | None = None  # what the host *claims*; the server ignores it (the key decides)


class RegisterRequest(Message):
    """A known host (re)joining after a restart or a reconnect; consumes no key use."""

    machine_id: str
    credential: str = Field(repr=False)
    hostname: str
    version: str


class JoinReply(Message):
    """The server's answer to EnrollRequest and RegisterRequest."""

    ok: bool
    reason: str | None = None  # a code: unknown_key, expired, exhausted, pool_out_of_scope, ...
    message: str | None = None
    machine_id: str | None = None
    credential: str | None = Field(default=None, repr=False)  # only in the reply to a first enrollment
    tenant: str | None = None
    key_id: str | None = None
    pools: list[PoolMembership] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    capacity: Capacity | None = None
    heartbeat_interval_s: float | None = None


class Heartbeat(Message):
    """What a host reports every heartbeat interval on fleet.v1.hb.<machine_id>."""

    machine_id: str
    hostname: str
    version: str
    started_at: float  # epoch seconds of the daemon's last (re)start
    sent_at: float
    seq: int
    status: AgentStatus
    capacity: Capacity
    pools: list[PoolMembership]
    labels: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    sessions: list[SessionInfo] = Field(default_factory=list)
    running: int = 0
    max_sessions: int = 0
    credential_socket: str | None = None


class Bye(Message):
    """A host's goodbye on a clean shutdown (fleet.v1.bye.<machine_id>): it is offline now, not silently."""

    machine_id: str
    reason: str = "shutdown"


class ControlCommand(Message):
    """Server -> agent on fleet.v1.host.<machine_id>.control."""

    action: ControlAction
    by: str = "control-plane"


class ControlReply(Message):
    ok: bool
    status: str | None = None
    message: str | None = None


# ------------------------------------------------------------------------------------------- CLI <-> server


class HostQuery(Message):
    """fleet.v1.api.hosts.get: a machine ID or a unique prefix of one."""

    id: str


class HostCommand(Message):
    """fleet.v1.api.hosts.command: do `action` to host `id` (ID or unique prefix)."""

    id: str
    action: ControlAction


class ApiReply(Message):
    """Every API reply: ok + data, or an error code and a message."""

    ok: bool
    error: str | None = None  # not_found, ambiguous, malformed, offline, refused, internal
    message: str | None = None
    data: Any = None


#: most rows one observed-hosts page may carry (the server also keeps a page under the NATS max_payload)
HOSTS_PAGE_MAX = 5000
#: the columns of an observed-hosts row, in order (a row is a JSON array, to keep 100k hosts small on the wire)
OBSERVED_COLUMNS = ("machine_id", "hostname", "tenant", "key_id", "pools", "labels", "models", "status", "running",
                    "max_sessions", "sessions")


class HostsPageRequest(Message):
    """fleet.v1.api.hosts.observed[.<server>]: rows [offset, offset+limit) of an observed-hosts snapshot.

    Without `snapshot` the server takes a new one (every host sorted by machine ID, statuses as of now) and
    answers its first page; the other pages name that snapshot, so that all pages describe the same moment.
    """

    snapshot: str | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=HOSTS_PAGE_MAX, ge=1, le=HOSTS_PAGE_MAX)


class HostsPage(Message):
    """One page of an observed-hosts snapshot (the `data` of the ApiReply).

    `rows` are arrays in the order of `columns` (OBSERVED_COLUMNS): machine_id, hostname, tenant, key_id,
    pools[], labels[], models[], status (active, paused, draining, offline, revoked: as the server computes it),
    running, max_sessions, sessions[[id, phase]]. A page may hold fewer than `limit` rows (the server keeps it
    under NATS max_payload): `offset + len(rows)` is where the next one starts; `total` rows in all.
    """

    snapshot: str
    server: str  # the replica holding the snapshot: ask it for the other pages on hosts_observed_at(server)
    total: int = Field(ge=0)
    offset: int = Field(ge=0)
    columns: list[str] = Field(default_factory=lambda: list(OBSERVED_COLUMNS))
    rows: list[list[Any]] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------- stored records


class HostRecord(Message):
    """The durable identity of a host in KV bucket fleet-v1-hosts (key = machine_id)."""

    machine_id: str
    tenant: str
    key_id: str
    hostname: str
    pools: list[PoolMembership]
    labels: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    capacity: Capacity
    credential_sha256: str
    enrolled_at: str
    revoked: bool = False
    revoked_at: str | None = None
    last_status: str | None = None
