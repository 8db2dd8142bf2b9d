"""Typed messages of protocol v1: what agents, the server and the CLI send each other over NATS, and what the
server stores about a host.

Used by fleet.agents (enroll, register, heartbeat, bye, control replies), fleet.hosts and fleet.service (the
other side of each) and the CLI's client. Every message carries `v` (the protocol version); `decode()` refuses
any other version with UnsupportedVersion, a clear FleetError. Every message from the network is hostile until
decoded: `decode()` refuses a payload over its size limit before parsing it (TooLarge), parses with pydantic's
JSON parser (deep nesting is a parse error, never a RecursionError), and every field is bounded in length and
count, so nothing unbounded is ever stored. Unknown fields are ignored (additive changes stay v1).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from fleet.errors import ProtocolError, TooLarge, UnsupportedVersion
from fleet.schema.vocabulary import (
    ID_MAX,
    LABEL_MAX,
    MACHINE_ID_PATTERN,
    MODEL_MAX,
    AdminStatus,
    HostStatus,
    IsolationMode,
    PoolMode,
)

# re-exported: the protocol errors, and the enums (defined once, in fleet.schema.vocabulary)
__all__ = ["AdminStatus", "HostStatus", "PoolMode", "ProtocolError", "TooLarge", "UnsupportedVersion"]

PROTOCOL_VERSION = 1

#: most bytes of any message a fleet process accepts (an API request, an enrollment, …)
MAX_MESSAGE_BYTES = 64 * 1024
#: most bytes of one heartbeat (checked before it is parsed)
MAX_HEARTBEAT_BYTES = 16 * 1024
#: most sessions one host may report in a heartbeat
MAX_REPORTED_SESSIONS = 128

ControlAction = Literal["pause", "resume", "drain", "revoke"]
HostAction = Literal["pause", "resume", "drain", "revoke", "rm"]
SessionPhase = Literal["queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out", "lost"]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _printable(value: str) -> str:
    """No control characters (a hostname with an escape sequence would rewrite an operator's terminal in `fleet
    list`), no bidi overrides (which make text read differently from what it is)."""
    if _UNPRINTABLE.search(value) is not None:
        raise ValueError("must not contain control or bidirectional-override characters")
    return value


_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
#: one search instead of a test per character: control characters (C0, DEL, C1) and the bidi overrides of _BIDI
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(sorted(_BIDI)) + "]")
Printable = AfterValidator(_printable)


def _made_printable(value: str) -> str:
    """Free text a host reports about its own work (why a session ended), kept but made harmless: each control or
    bidirectional-override character becomes `?`. Not refused, so that an honest agent's report never bounces."""
    if _UNPRINTABLE.search(value) is None:
        return value
    return _UNPRINTABLE.sub("?", value)


MadePrintable = AfterValidator(_made_printable)
MachineId = Annotated[str, StringConstraints(pattern=MACHINE_ID_PATTERN)]
# the length limits of fleet.schema.json's names (fleet.schema.vocabulary); the patterns are checked where a name
# is matched against fleet.yaml's (enrollment scope, routing), so a name that cannot match is merely refused early
Ident = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX), Printable]
Label = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX), Printable]
Model = Annotated[str, StringConstraints(min_length=1, max_length=MODEL_MAX), Printable]
Hostname = Annotated[str, StringConstraints(min_length=1, max_length=255), Printable]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64), Printable]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
def _nkey_checksum(value: str) -> str:
    from fleet.bus.replies import is_user_key  # nkeys is imported only when a key is checked

    if not is_user_key(value):
        raise ValueError("not a user public nkey (bad checksum)")
    return value


NkeyUser = Annotated[str, StringConstraints(pattern=r"^U[A-Z2-7]{55}$"), AfterValidator(_nkey_checksum)]
B64Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]  # 32 bytes, base64url without padding
B64Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{86}$")]  # 64 bytes
Text = Annotated[str, StringConstraints(max_length=2000), Printable]
SocketPath = Annotated[str, StringConstraints(max_length=512), Printable]
Epoch = Annotated[float, AfterValidator(_finite), Field(ge=0, le=1e11)]
Slots = Annotated[int, Field(ge=0, le=100_000)]
DiskGb = Annotated[float, AfterValidator(_finite), Field(ge=0, le=1e7)]


class Message(BaseModel):
    """Base of every v1 message. Unknown fields are ignored (additive changes stay v1)."""

    model_config = ConfigDict(extra="ignore")
    v: StrictInt = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")
_Plan = tuple[dict[str, Any], list[tuple[str, Any]], list[tuple[str, Any]], frozenset[str]]
_PLANS: dict[type, _Plan] = {}


def trusted(cls: type[B], **values: Any) -> B:
    """A `cls` from values fleet itself holds (already validated): what pydantic's `model_construct` does, without
    its walk over every field (aliases, each default resolved on its own). The dispatcher builds ~4 of these per
    session (history events, records, assignments): model_construct was ~13% of `fleet server`'s CPU (cProfile
    with a CPU clock, bench/dispatch.py). Fields not given take their default (a default_factory is called, a
    mutable default copied); a required field not given, or an unknown one, is a TypeError (a bug), never a model
    with a hole."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _trusted_plan(cls)
    template, copied, factories, required = plan
    d = dict(template)  # every field, in the model's order (the order it is serialized in)
    for name, value in copied:
        if name not in values:
            d[name] = value.copy()
    for name, factory in factories:
        if name not in values:
            d[name] = factory()
    d.update(values)
    if len(d) != len(template) or not required.issubset(values):
        missing = required - values.keys()
        raise TypeError(f"trusted({cls.__name__}): missing {sorted(missing)}" if missing else
                        f"trusted({cls.__name__}): unknown fields {sorted(values.keys() - cls.model_fields.keys())}")
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", d)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def set_trusted(model: BaseModel, **values: Any) -> None:
    """Set fields of `model` to values fleet itself holds (already valid), as `model.field = value` each would on a
    model without assignment validation, in one step: the dispatcher sets ~11 fields per session (pydantic's
    __setattr__ walks its handlers for each)."""
    fields = _SETTABLE.get(type(model))
    if fields is None:
        if model.model_config.get("validate_assignment") or model.model_config.get("frozen"):
            raise TypeError(f"set_trusted({type(model).__name__}): a model that validates or refuses assignment")
        fields = _SETTABLE[type(model)] = frozenset(type(model).model_fields)
    if not fields.issuperset(values):
        raise TypeError(f"set_trusted({type(model).__name__}): unknown fields {sorted(values.keys() - fields)}")
    model.__dict__.update(values)
    model.__pydantic_fields_set__.update(values)


_SETTABLE: dict[type, frozenset[str]] = {}  # set_trusted: the fields of each model class it may set


def _trusted_plan(cls: type[BaseModel]) -> _Plan:
    """How `trusted` fills the fields of `cls`: computed once per class."""
    if cls.__pydantic_post_init__ or cls.__private_attributes__ or cls.__pydantic_root_model__:
        raise TypeError(f"trusted({cls.__name__}): a root model, or one with a post-init or private attributes")
    template: dict[str, Any] = {}
    copied: list[tuple[str, Any]] = []
    factories: list[tuple[str, Any]] = []
    required: set[str] = set()
    for name, field in cls.model_fields.items():
        if field.alias not in (None, name) or field.validation_alias not in (None, name):
            raise TypeError(f"trusted({cls.__name__}): field {name} has an alias")
        template[name] = field.default
        if field.is_required():
            required.add(name)
        elif field.default_factory is not None:
            if field.default_factory_takes_validated_data:
                raise TypeError(f"trusted({cls.__name__}): field {name}'s default factory takes data")
            factories.append((name, field.default_factory))
        elif isinstance(field.default, (list, dict, set, bytearray)):
            copied.append((name, field.default))
    return template, copied, factories, frozenset(required)


M = TypeVar("M", bound=Message)


_NO_VERSION = object()


def _version_of(data: bytes | str) -> Any:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return _NO_VERSION
    return obj.get("v", _NO_VERSION) if isinstance(obj, dict) else _NO_VERSION


def decode(cls: type[M], data: bytes | str, *, max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Decode one message of type `cls`; TooLarge, ProtocolError or UnsupportedVersion on anything else."""
    if len(data) > max_bytes:
        raise TooLarge(f"{cls.__name__} of {len(data)} bytes refused (at most {max_bytes})")
    msg: M | None = None
    try:
        parsed = cls.model_validate_json(data)
    except ValidationError as exc:
        version = _version_of(data)
        if version is _NO_VERSION or version == PROTOCOL_VERSION:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "message"
            raise ProtocolError(f"malformed {cls.__name__}: {where}: {first.get('msg')}") from None
    else:
        msg, version = parsed, parsed.v
    if msg is None or version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"unsupported {cls.__name__} version {version!r} (this fleet speaks v{PROTOCOL_VERSION})",
            hint="upgrade fleet on both sides to the same protocol version",
        )
    return msg


# ------------------------------------------------------------------------------------------- building blocks


class Capacity(BaseModel):
    """A host's capacity envelope (shown as maxConcurrentSessions / poolMaxDiskGb)."""

    max_concurrent_sessions: Slots
    pool_max_disk_gb: DiskGb | None = None


class PoolMembership(BaseModel):
    id: Ident
    mode: PoolMode = "persistent"
    isolation: IsolationMode = "sandbox"  # none: the pool lets its hosts run sessions unisolated


class Isolation(BaseModel):
    """How a host isolates its sessions from itself (fleet.agents.sandbox), as the agent reports it. Shown by
    `fleet show` and `fleet list --json` (rendered by `describe`, never as text the host chose)."""

    mechanism: Literal["uid", "userns", "none"]
    namespaces: list[Literal["pid", "mount", "ipc", "user"]] = Field(default_factory=list, max_length=4)
    tool: Literal["bubblewrap"] | None = None
    uid_range: tuple[Annotated[int, Field(ge=0, lt=2**31)], Annotated[int, Field(ge=0, lt=2**31)]] | None = None
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] | None = None
    reason: Text | None = None  # why a host cannot isolate (mechanism none)

    def describe(self) -> str:
        if self.mechanism == "none":
            return "none: sessions run as the agent" + (f" ({self.reason})" if self.reason else "")
        who = (f"user {self.user}" if self.user else
               f"uid {self.uid_range[0]}-{self.uid_range[1]} per slot" if self.uid_range else
               "the agent's uid in a user namespace")
        spaces = "+".join(n for n in ("pid", "mount", "ipc", "user") if n in self.namespaces)
        return f"{who}, {spaces} namespaces" + (f" ({self.tool})" if self.tool else "")


#: most pools, labels and models one host may have (its envelope)
MAX_HOST_POOLS, MAX_HOST_LABELS, MAX_HOST_MODELS = 32, 64, 64


class Envelope(BaseModel):
    """The one host envelope: the pools a host serves, the labels and models it has, its session slots (None: its
    pools decide). What an agent asks for (EnrollRequest), what enrollment grants (fleet.hosts.enrollment.Decision)
    and what is stored (HostRecord) are this model; their disk envelope keeps its v1 wire names (`pool_max_disk_gb`
    in the request, `max_disk_gb` in the record). The resolved envelope (the record capped by its applied pools) is
    fleet.hosts.model.Host's, and travels to the agent as the JoinReply (pools with their modes, `capacity`)."""

    model_config = ConfigDict(extra="ignore")
    pools: list[Ident] = Field(default_factory=list, max_length=MAX_HOST_POOLS)
    labels: list[Label] = Field(default_factory=list, max_length=MAX_HOST_LABELS)
    models: list[Model] = Field(default_factory=list, max_length=MAX_HOST_MODELS)
    max_sessions: Slots | None = None


class SessionInfo(BaseModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=64), Printable]
    phase: SessionPhase
    fence: int | None = Field(default=None, ge=0)  # the fencing token of the assignment it runs under


# ------------------------------------------------------------------------------------------- agent <-> server


class EnrollRequest(Message, Envelope):
    """First contact of a host: the enrollment key's secret plus what it asks to serve (its Envelope)."""

    key: Secret = Field(repr=False)
    hostname: Hostname
    version: Version
    pool_max_disk_gb: DiskGb | None = None
    credential_socket: SocketPath | None = None
    isolation: Isolation | None = None
    nkey: NkeyUser | None = None  # the public key of the host's own identity; the server signs a JWT for it
    tenant: Ident | None = None  # what the host *claims*; the server ignores it (the key decides)
    box: B64Key | None = None  # a one-time X25519 public key: the reply is sealed to it (fleet.bus.enrolling)
    proof: B64Signature | None = None  # the nkey's signature of the request's key and box: proof it holds the seed


class SealedReply(Message):
    """The answer to an EnrollRequest: a JoinReply sealed to the request's `box` key (only that agent can read it)."""

    sealed: Annotated[str, StringConstraints(max_length=2 * MAX_MESSAGE_BYTES)]


class RegisterRequest(Message):
    """A known host (re)joining after a restart or a reconnect, on its own subject fleet.v1.register.<machine_id>
    (which only its identity may publish on); consumes no key use."""

    hostname: Hostname
    version: Version
    credential_socket: SocketPath | None = None
    isolation: Isolation | None = None


class JoinReply(Message):
    """The server's answer to EnrollRequest and RegisterRequest."""

    ok: bool
    reason: str | None = None  # a code: unknown_key, expired, exhausted, pool_out_of_scope, pool_full, ...
    message: str | None = None
    machine_id: str | None = None
    jwt: str | None = None  # only in the reply to a first enrollment: the host's identity, signed by the server
    tenant: str | None = None
    key_id: str | None = None
    pools: list[PoolMembership] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    capacity: Capacity | None = None
    heartbeat_interval_s: float | None = None
    lease_s: float | None = None  # the server re-queues this host's sessions after hearing nothing for this long
    status: AdminStatus | None = None  # the status fleet.yaml declares for this host, if it declares one


class Heartbeat(Message):
    """What a host reports every heartbeat interval on fleet.v1.hb.<machine_id>: its dynamic state only.

    Who it is comes from the subject; what it may serve (tenant, pools, labels, models, capacity) comes from its
    enrollment record and the applied pools, never from here.
    """

    seq: int = Field(ge=0)
    sent_at: Epoch
    started_at: Epoch  # epoch seconds of the daemon's last (re)start
    status: AdminStatus
    running: Slots = 0
    sessions: list[SessionInfo] = Field(default_factory=list, max_length=MAX_REPORTED_SESSIONS)
    version: Version


class Bye(Message):
    """A host's goodbye on a clean shutdown (fleet.v1.bye.<machine_id>): it is offline now, not silently."""

    reason: Annotated[str, StringConstraints(max_length=64), Printable] = "shutdown"


class ControlCommand(Message):
    """Server -> agent on fleet.v1.host.<machine_id>.control."""

    action: ControlAction
    by: Annotated[str, StringConstraints(max_length=200), Printable] = "control-plane"


class ControlReply(Message):
    ok: bool
    status: str | None = None
    message: str | None = None


# ------------------------------------------------------------------------------------------- CLI <-> server


class HostQuery(Message):
    """fleet.v1.api.hosts.get: a machine ID or a unique prefix of one."""

    id: Annotated[str, StringConstraints(max_length=64)]


class HostCommand(Message):
    """fleet.v1.api.hosts.command: do `action` to host `id` (ID or unique prefix). `force` lets `rm` forget a host
    that is still live."""

    id: Annotated[str, StringConstraints(max_length=64)]
    action: HostAction
    force: bool = False


class ApiReply(Message):
    """Every API reply: ok + data, or an error code (fleet.errors.WIRE_ERRORS), a message and maybe a hint."""

    ok: bool
    error: str | None = None
    message: str | None = None
    hint: str | None = None
    retryable: bool | None = None  # so that even a code this client does not know keeps its retry meaning
    data: Any = None


def ok_reply(data: Any) -> bytes:
    """ApiReply(ok=True, data=data).encode(), without building the model around `data` (a JSON-able value): the
    answer to every submit, built once per session."""
    return ok_reply_raw(pydantic_core.to_json(data))


def ok_reply_raw(data: bytes) -> bytes:
    """ok_reply of `data` encoded already (JSON)."""
    return b'{"v":%d,"ok":true,"error":null,"message":null,"hint":null,"retryable":null,"data":%s}' % (
        PROTOCOL_VERSION, data)


#: most rows one host page may carry (the server also keeps a page under the NATS max_payload)
HOSTS_PAGE_MAX = 5000


class HostsPageRequest(Message):
    """fleet.v1.api.hosts.page[.<server>]: rows [offset, offset+limit) of a host snapshot.

    Without `snapshot` the server takes a new one (every host, sorted by machine ID, as of now) and answers its
    first page; the other pages name that snapshot, so that all pages describe the same moment.
    """

    snapshot: Annotated[str, StringConstraints(max_length=64)] | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=HOSTS_PAGE_MAX, ge=1, le=HOSTS_PAGE_MAX)


class HostsPage(Message):
    """One page of a host snapshot (the `data` of the ApiReply).

    `rows` are arrays in the order of `columns` (the fields of fleet.hosts.model.Host). A page may hold fewer
    than `limit` rows (the server keeps it under NATS max_payload): `offset + len(rows)` is where the next one
    starts; `total` rows in all.
    """

    snapshot: str
    server: str  # the replica holding the snapshot: ask it for the other pages on hosts_page_at(server)
    total: int = Field(ge=0)
    offset: int = Field(ge=0)
    columns: list[str]
    rows: list[list[Any]] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------- stored records


class HostRecord(Message, Envelope):
    """The durable identity of a host in KV bucket fleet-v1-hosts (key = machine_id).

    Written by the enrollment authority (create), and by compare-and-set on revocation, on a change of the status
    the agent reports, at (re)registration (hostname, version) and when the host goes offline (last_seen), so
    that what `fleet list` shows survives a server restart. Never written per heartbeat.
    """

    machine_id: MachineId
    tenant: Ident
    key_id: Ident
    hostname: Hostname
    # pools, labels, models, max_sessions: its Envelope as enrollment granted it (max_sessions None: its pools decide)
    max_disk_gb: DiskGb | None = None  # likewise for its disk envelope
    nkey: NkeyUser | None = None  # the public key of its NATS identity (revoking the host revokes it)
    enrolled_at: str
    revoked: bool = False
    revoked_at: str | None = None
    admin_status: AdminStatus = "active"  # what the agent last reported (persisted on change)
    version: Version | None = None
    credential_socket: SocketPath | None = None
    isolation: Isolation | None = None  # what the agent last reported at (re)registration
    last_seen: Epoch | None = None  # epoch seconds of the last heartbeat, as of the last write

    @field_validator("pools", mode="before")
    @classmethod
    def _pool_ids(cls, value: Any) -> Any:
        """Records written before pools were plain IDs stored `{"id", "mode"}` objects."""
        if isinstance(value, list):
            return [p.get("id") if isinstance(p, dict) else p for p in value]
        return value

    @model_validator(mode="before")
    @classmethod
    def _earlier_layout(cls, data: Any) -> Any:
        """Records written by fleet 0.1 kept a `capacity` object and `last_status`."""
        if isinstance(data, dict) and isinstance(data.get("capacity"), dict) and "max_sessions" not in data:
            data = {**data, "max_sessions": data["capacity"].get("max_concurrent_sessions"),
                    "max_disk_gb": data["capacity"].get("pool_max_disk_gb")}
        if isinstance(data, dict) and data.get("last_status") in ("paused", "draining") and "admin_status" not in data:
            data = {**data, "admin_status": data["last_status"]}
        return data


# ------------------------------------------------------------------------------------------- sessions

FINAL_PHASES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
LIVE_PHASES = frozenset({"assigned", "running"})
MAX_COMMAND_ARGS = 256
MAX_ENV = 64
MAX_COMMAND_BYTES = 64 * 1024  # a session record must fit one NATS message with room to spare
MAX_ENV_BYTES = 64 * 1024
MAX_OUTPUT_TAIL = 16 * 1024  # bytes of output a session keeps (the end of it)
MAX_OUTPUT_CHUNK = 8 * 1024
MAX_HISTORY = 64

SessionId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{20}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain a NUL byte (no command or environment can hold one)")
    return value


EnvValue = Annotated[str, StringConstraints(max_length=8192), AfterValidator(_no_nul)]
Arg = Annotated[str, StringConstraints(max_length=8192), AfterValidator(_no_nul)]
Seconds = Annotated[float, AfterValidator(_finite), Field(gt=0, le=7 * 86400)]


def new_session_id() -> str:
    """20 hex characters, ordered by submission time: milliseconds since the epoch, then 32 random bits. Chosen by
    the submitting client (fleet.sessions.client), so that a submit sent again is recognised."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


class SessionOptions(Message):
    """What a submit and a submit_many say alike: the project and what its sessions ask (labels, model, priority,
    timeout, attempts, environment). One set of fields and bounds for both."""

    project: Ident
    labels: list[Label] = Field(default_factory=list, max_length=32)
    model: Model | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    timeout_s: Seconds | None = None
    max_attempts: int = Field(default=3, ge=1, le=20)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=MAX_ENV)

    def _check_env(self) -> None:
        if sum(len(k) + len(v) for k, v in self.env.items()) > MAX_ENV_BYTES:
            raise ValueError(f"the environment is larger than {MAX_ENV_BYTES} characters in all")


class SubmitRequest(SessionOptions):
    """fleet.v1.api.sessions.<tenant>.submit: run `command` for `project` (a project of that tenant), as session
    `id` (the client's choice: the same ID sent again is the same session, never a second one)."""

    id: SessionId | None = None
    command: list[Arg] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)
    wait_s: float = Field(default=0.0, ge=0, le=3600)  # answer when the session ends (or after wait_s)

    @model_validator(mode="after")
    def _bounded(self) -> SubmitRequest:
        if sum(len(a) for a in self.command) > MAX_COMMAND_BYTES:
            raise ValueError(f"the command is longer than {MAX_COMMAND_BYTES} characters in all")
        self._check_env()
        return self


MAX_SUBMIT_BATCH = 1000  # sessions one submit_many request may carry (a request stays under a submitter's payload)
SUBMIT_MANY_BYTES = 240 * 1024  # the largest submit_many request (below fleet.bus.identities.CLIENT_PAYLOAD)


class BatchItem(BaseModel):
    """One session of a SubmitManyRequest: its ID (the client's choice) and its command."""

    id: SessionId
    command: list[Arg] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)


class SubmitManyRequest(SessionOptions):
    """fleet.v1.api.sessions.<tenant>.submit_many: run each of `sessions` for `project`, every one with the same
    labels, model, priority, timeout, attempts and environment; the reply comes once every one is stored. At most
    MAX_SUBMIT_BATCH sessions and SUBMIT_MANY_BYTES; the same IDs sent again are the same sessions."""

    sessions: list[BatchItem] = Field(min_length=1, max_length=MAX_SUBMIT_BATCH)

    @model_validator(mode="after")
    def _bounded(self) -> SubmitManyRequest:
        for item in self.sessions:
            if sum(len(a) for a in item.command) > MAX_COMMAND_BYTES:
                raise ValueError(f"session {item.id}: the command is longer than {MAX_COMMAND_BYTES} characters")
        self._check_env()
        return self

    def requests(self) -> list[SubmitRequest]:
        """Each session as the SubmitRequest it stands for (already validated: built without validation)."""
        shared: dict[str, Any] = {name: getattr(self, name) for name in SessionOptions.model_fields}
        return [trusted(SubmitRequest, id=item.id, command=item.command, wait_s=0.0, **shared)
                for item in self.sessions]


class SubmitBatchRequest(Message):
    """fleet.v1.api.sessions.<tenant>.submit_batch: independent submits, each a whole SubmitRequest (its own project,
    command, options and `wait_s`), sent together by a client that had several at the same moment
    (fleet.sessions.client coalesces concurrent `submit` calls). Each item is answered on its own, as a `submit`
    would answer it, in SubmitBatchReply messages on the request's reply subject: an item stored without a wait as
    soon as the batch is stored, one with `wait_s` once it ended or wait_s passed. At most MAX_SUBMIT_BATCH items
    and SUBMIT_MANY_BYTES; every item carries its ID (the client's), so an item sent again is the same session."""

    items: list[SubmitRequest] = Field(min_length=1, max_length=MAX_SUBMIT_BATCH)

    @model_validator(mode="after")
    def _ids(self) -> SubmitBatchRequest:
        ids = [item.id for item in self.items]
        if None in ids:
            raise ValueError("every item of a batch names its session ID")
        if len(set(ids)) < len(ids):
            raise ValueError("a batch names one session ID twice")
        return self


class BatchResult(BaseModel):
    """One item's answer in a SubmitBatchReply: `i` is its index in the request; `session` (a SessionView's
    fields) when ok, else the error fields of an ApiReply."""

    i: int = Field(ge=0, lt=MAX_SUBMIT_BATCH)
    ok: bool
    session: dict[str, Any] | None = None
    error: str | None = None
    message: str | None = None
    hint: str | None = None
    retryable: bool | None = None


class SubmitBatchReply(BaseModel):
    """The `data` of each ApiReply on the reply subject of a SubmitBatchRequest, as many as it takes: the items
    answered at one moment (one message per event-loop turn, not one per item). `last`: no more come for this
    request. An ApiReply with `ok: false` there answers every item not answered yet with that error (the request was
    refused, or the server failed midway: such items are sent again, and the same IDs find any that was stored)."""

    results: list[BatchResult] = Field(max_length=MAX_SUBMIT_BATCH)
    last: bool = False


class PhaseEvent(BaseModel):
    phase: SessionPhase
    at: float
    host: str | None = None
    attempt: int = 1
    note: str | None = None


class SessionRecord(Message):
    """A session, as stored in KV bucket fleet-v1-sessions (key = id) and as the session API returns it (without
    its environment's values)."""

    id: SessionId
    tenant: Ident
    project: Ident
    command: list[Arg]
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    labels: list[Label] = Field(default_factory=list)
    model: Model | None = None
    priority: int = 0
    timeout_s: float | None = None
    max_attempts: int = 3
    phase: SessionPhase = "queued"
    attempt: int = 1
    host: str | None = None
    pool: str | None = None
    fence: int | None = None  # the KV revision of the write that assigned it (None: the record's own revision)
    exit_code: int | None = None
    reason: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    history: list[PhaseEvent] = Field(default_factory=list)
    output_tail: str = ""

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES


class SessionView(SessionRecord):
    """A session as the session API returns it: its environment's names only, and why it waits when it does."""

    env: list[EnvName] = Field(default_factory=list)  # type: ignore[assignment]
    hostname: str | None = None  # of `host`, as the dispatcher knows it
    # what the project's routing adds today (its required labels, its model when the session names none)
    route_labels: list[Label] = Field(default_factory=list)  # as many as fleet.yaml gives (like `labels`)
    route_model: Model | None = None
    # while queued: the scheduler's one reason (fleet.scheduler REASON_KINDS) and the pool it waits for
    wait_kind: Ident | None = None
    wait_pool: Ident | None = None


class SessionQuery(Message):
    """fleet.v1.api.sessions.<tenant>.get / .cancel / .wait: one session (ID or unique prefix)."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    wait_s: float = Field(default=0.0, ge=0, le=3600)


LIST_MAX = 10_000  # sessions one list request may ask for


class SessionListRequest(Message):
    """fleet.v1.api.sessions.<tenant>.list: sessions oldest first (by when the leader stored them), `limit` of them:
    without `after`, the newest `limit`; with `after` (the `next` of a SessionPage, or "" for the very first), the
    `limit` that come after that cursor. The reply is a SessionPage."""

    project: Ident | None = None
    phase: SessionPhase | None = None
    limit: int = Field(default=1000, ge=1, le=LIST_MAX)
    after: str | None = Field(default=None, max_length=64)


class SessionPage(BaseModel):
    """The reply to a list: `sessions` (oldest first; at most 512 KiB of them, so maybe fewer than asked), `total`
    (how many match), `truncated` (these are not all that match) and `next` (the cursor that continues after the
    last one, while there are more after it; else null). Client.list_page follows `next` to fill a request."""

    sessions: list[SessionView]
    total: int = Field(ge=0)
    truncated: bool
    next: str | None = None


class LogsRequest(Message):
    """fleet.v1.api.sessions.<tenant>.logs: output from byte `offset` on; waits up to `wait_s` for more."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=20)]
    offset: int = Field(default=0, ge=0)
    wait_s: float = Field(default=0.0, ge=0, le=60)


class Assignment(Message):
    """One session for a host to run under this fencing token; sent inside an Assignments message."""

    session: SessionId
    fence: int = Field(ge=0)
    attempt: int = Field(ge=1)
    tenant: Ident
    project: Ident
    command: list[Arg] = Field(min_length=1, max_length=MAX_COMMAND_ARGS)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=MAX_ENV)
    timeout_s: float | None = None


#: most assignments one Assignments message carries, and its most bytes (the sender starts another past either)
MAX_ASSIGNMENTS = 256
ASSIGNMENTS_BYTES = 60 * 1024


def batched(items: Sequence[T], size: Callable[[T], int], *, most: int, max_bytes: int) -> list[list[T]]:
    """`items` in order, cut into runs of at most `most` items and `max_bytes` of `size` (+1 a separator each); an
    item larger than `max_bytes` goes alone. How Assignments and WorkEvents messages are filled."""
    out: list[list[T]] = []
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item) + 1
        if batch and (len(batch) >= most or total + n > max_bytes):
            out.append(batch)
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        out.append(batch)
    return out


def items_payload(encoded: Iterable[bytes]) -> bytes:
    """The encoding of an Assignments or WorkEvents message whose items are encoded already (no second encode)."""
    return b'{"v":%d,"items":[%s]}' % (PROTOCOL_VERSION, b",".join(encoded))


class Assignments(Message):
    """Server -> host on fleet.v1.host.<machine_id>.assign: the assignments of this host that one moment made (one
    message per host per event-loop turn of the dispatcher, not one per session: fleet.dispatch.applier)."""

    items: list[Assignment] = Field(min_length=1, max_length=MAX_ASSIGNMENTS)


class CancelOrder(Message):
    """Server -> host on fleet.v1.host.<machine_id>.cancel: stop this session (cancelled, or its lease is gone)."""

    session: SessionId
    fence: int | None = None
    reason: Annotated[str, StringConstraints(max_length=200)] = "cancelled"


class WorkEvent(Message):
    """Host -> server on fleet.v1.work.<machine_id>.event (request/reply): a session of this host changed phase."""

    session: SessionId
    fence: int = Field(ge=0)
    phase: Literal["running", "succeeded", "failed", "cancelled", "timed_out"]
    exit_code: int | None = Field(default=None, ge=-255, le=255)
    started_at: Epoch | None = None
    at: Epoch
    output_tail: Annotated[str, StringConstraints(max_length=MAX_OUTPUT_TAIL)] = ""
    note: Annotated[str, StringConstraints(max_length=200), MadePrintable] | None = None  # stored as the reason


class WorkReply(Message):
    ok: bool
    stale: bool = False  # the session is no longer this host's under this fence: stop it, report nothing more
    message: str | None = None


#: most events one WorkEvents request carries, and its most bytes (the agent starts another past either)
MAX_WORK_EVENTS = 128
WORK_EVENTS_BYTES = 60 * 1024


class WorkEvents(Message):
    """Host -> server on fleet.v1.work.<machine_id>.events (request/reply): the phase changes of this host's sessions
    that one moment made, answered by WorkReplies (one reply per event, in order). What fleet agents send; the
    single WorkEvent on `.event` stays for a host that reports one at a time."""

    items: list[WorkEvent] = Field(min_length=1, max_length=MAX_WORK_EVENTS)


class WorkReplies(Message):
    items: list[WorkReply]


class OutputChunk(Message):
    """Host -> server on fleet.v1.work.<machine_id>.output: more output of a running session."""

    session: SessionId
    fence: int = Field(ge=0)
    offset: int = Field(ge=0)  # byte offset of `data` in the session's output
    data: Annotated[str, StringConstraints(max_length=MAX_OUTPUT_CHUNK)]
