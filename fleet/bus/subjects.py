"""The NATS subjects and KV bucket names of protocol v1 (documented in docs/protocol.md).

Used by the agent (fleet.agents), the host registry and the control-plane service (fleet.hosts, fleet.service),
the CLI's client and the benches. Every subject starts with `fleet.v1.`; a breaking change of the protocol gets a
new prefix. A host's identity on the bus is the machine-ID token of the subject it publishes on:
`machine_id_of` extracts it exactly (one whole token after a known prefix), never by suffix matching.
"""

from __future__ import annotations

import re

from fleet.schema import vocabulary

PREFIX = "fleet.v1"

# Agent -> server (request/reply, served by a queue group of `fleet server` replicas). Enrollment is the only
# subject an unenrolled agent may use; a host registers on its own subject (register(machine_id)).
ENROLL = f"{PREFIX}.enroll"
REGISTER_PREFIX = f"{PREFIX}.register."
REGISTER_WILDCARD = f"{REGISTER_PREFIX}*"
SERVER_QUEUE = "fleet-server"

# Agent -> server (plain publish): heartbeats and the goodbye of a clean shutdown. Every replica subscribes.
HEARTBEAT_PREFIX = f"{PREFIX}.hb."
BYE_PREFIX = f"{PREFIX}.bye."
HEARTBEAT_WILDCARD = f"{HEARTBEAT_PREFIX}*"
BYE_WILDCARD = f"{BYE_PREFIX}*"

# CLI -> server (request/reply, queue group).
API_PING = f"{PREFIX}.api.ping"
API_HOSTS_GET = f"{PREFIX}.api.hosts.get"
API_HOSTS_COMMAND = f"{PREFIX}.api.hosts.command"
# Paged view of every host (`fleet list`, `fleet plan`): the first page (queue group) takes a snapshot in one
# replica; the later pages of that snapshot go to that replica's own subject (hosts_page_at).
API_HOSTS_PAGE = f"{PREFIX}.api.hosts.page"

# Submitters -> server: the session API of one tenant (the tenant is a subject token, so that NATS permissions
# scope a submitter to its tenant): api_sessions(tenant, verb), verbs submit, submit_many, submit_batch, list, get,
# cancel, wait, logs.
API_SESSIONS = f"{PREFIX}.api.sessions"
SESSION_VERBS = ("submit", "submit_many", "submit_batch", "list", "get", "cancel", "wait", "logs")

# KV buckets (JetStream, file storage).
BUCKET_CONFIG = "fleet-v1-config"
BUCKET_HOSTS = "fleet-v1-hosts"
BUCKET_ENROLL = "fleet-v1-enroll"
BUCKET_LOCKS = "fleet-v1-locks"
BUCKET_SECRETS = "fleet-v1-secrets"  # the pepper of enrollment key digests: server and admin only
BUCKET_TRUST = "fleet-v1-trust"  # revoked host identities: server only
BUCKET_SESSIONS = "fleet-v1-sessions"  # every session: server only (the session API serves them)
BUCKET_DISPATCH = "fleet-v1-dispatch"  # the dispatcher lease (key `leader`, entries expire): server only

_MACHINE_ID = re.compile(vocabulary.MACHINE_ID_PATTERN)


def heartbeat(machine_id: str) -> str:
    """Where host `machine_id` publishes its heartbeats."""
    return f"{HEARTBEAT_PREFIX}{machine_id}"


def bye(machine_id: str) -> str:
    """Where host `machine_id` publishes its goodbye when it shuts down cleanly."""
    return f"{BYE_PREFIX}{machine_id}"


def register(machine_id: str) -> str:
    """Where host `machine_id` (re)registers after a restart or a reconnect (request/reply)."""
    return f"{REGISTER_PREFIX}{machine_id}"


def host_prefix(machine_id: str) -> str:
    """Everything the server sends host `machine_id` is under this prefix; only that host may subscribe to it."""
    return f"{PREFIX}.host.{machine_id}"


def host_control(machine_id: str) -> str:
    """Server -> agent commands (pause, resume, drain, revoke) for host `machine_id` (request/reply)."""
    return f"{host_prefix(machine_id)}.control"


def host_work(machine_id: str) -> str:
    """What host `machine_id` reports about its sessions goes under this prefix (events, output)."""
    return f"{PREFIX}.work.{machine_id}"


WORK_PREFIX = f"{PREFIX}.work."


def host_assign(machine_id: str) -> str:
    return f"{host_prefix(machine_id)}.assign"


def host_cancel(machine_id: str) -> str:
    return f"{host_prefix(machine_id)}.cancel"


def api_sessions(tenant: str, verb: str) -> str:
    """The session API of `tenant`: fleet.v1.api.sessions.<tenant>.<verb>."""
    return f"{API_SESSIONS}.{tenant}.{verb}"


def work_parts(subject: str) -> tuple[str, str] | None:
    """(machine ID, kind) of fleet.v1.work.<machine_id>.<kind>, or None."""
    if not subject.startswith(WORK_PREFIX):
        return None
    mid, _, kind = subject[len(WORK_PREFIX):].partition(".")
    return (mid, kind) if is_machine_id(mid) and kind in ("event", "events", "output") else None


def session_api_parts(subject: str) -> tuple[str, str] | None:
    """(tenant, verb) of fleet.v1.api.sessions.<tenant>.<verb>, or None."""
    rest = subject[len(API_SESSIONS) + 1:] if subject.startswith(API_SESSIONS + ".") else ""
    tenant, _, verb = rest.partition(".")
    return (tenant, verb) if tenant and verb in SESSION_VERBS else None


def hosts_page_at(server_id: str) -> str:
    """The later pages of a host snapshot held by `fleet server` replica `server_id` (no queue group)."""
    return f"{API_HOSTS_PAGE}.{server_id}"


def is_machine_id(text: str) -> bool:
    """A canonical machine ID: a lower-case UUID (what the server assigns at enrollment)."""
    return bool(_MACHINE_ID.match(text))


def machine_id_of(subject: str, prefix: str) -> str | None:
    """The machine ID of `<prefix><machine_id>` (e.g. `fleet.v1.hb.<id>`), or None if the subject is anything
    else: another prefix, more tokens, or a token that is not a canonical machine ID."""
    if not subject.startswith(prefix):
        return None
    token = subject[len(prefix):]
    return token if is_machine_id(token) else None
