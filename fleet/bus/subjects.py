"""The NATS subjects and KV bucket names of protocol v1 (documented in docs/protocol.md).

Used by the agent (fleet.agents), the host registry and the control-plane service (fleet.hosts, fleet.service),
the CLI's client and the benches. Every subject starts with `fleet.v1.`; a breaking change of the protocol gets a
new prefix. A host's identity on the bus is the machine-ID token of the subject it publishes on:
`machine_id_of` extracts it exactly (one whole token after a known prefix), never by suffix matching.
"""

from __future__ import annotations

import re

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
# scope a submitter to its tenant), and the output of its sessions (server -> submitters).
API_SESSIONS = f"{PREFIX}.api.sessions"
SESSION_OUTPUT = f"{PREFIX}.out"

# KV buckets (JetStream, file storage).
BUCKET_CONFIG = "fleet-v1-config"
BUCKET_HOSTS = "fleet-v1-hosts"
BUCKET_ENROLL = "fleet-v1-enroll"
BUCKET_LOCKS = "fleet-v1-locks"
BUCKET_SECRETS = "fleet-v1-secrets"  # the pepper of enrollment key digests: server and admin only
BUCKET_TRUST = "fleet-v1-trust"  # revoked host identities: server only

_MACHINE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


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
    """What host `machine_id` reports about its sessions goes under this prefix (the dispatch issue)."""
    return f"{PREFIX}.work.{machine_id}"


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
