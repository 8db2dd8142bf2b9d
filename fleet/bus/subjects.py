"""The NATS subjects and KV bucket names of protocol v1 (documented in docs/protocol.md).

Used by the agent (fleet.agents), the control-plane service (fleet.service), the CLI's clients and benches.
Every subject starts with `fleet.v1.`; a breaking change of the protocol gets a new prefix.
"""

from __future__ import annotations

PREFIX = "fleet.v1"

# Agent -> server (request/reply, served by a queue group of `fleet server` replicas).
ENROLL = f"{PREFIX}.enroll"
REGISTER = f"{PREFIX}.register"
SERVER_QUEUE = "fleet-server"

# Agent -> server (plain publish): heartbeats and the goodbye of a clean shutdown.
HEARTBEAT_WILDCARD = f"{PREFIX}.hb.*"
BYE_WILDCARD = f"{PREFIX}.bye.*"

# CLI -> server (request/reply).
API_PING = f"{PREFIX}.api.ping"
API_HOSTS_LIST = f"{PREFIX}.api.hosts.list"
API_HOSTS_GET = f"{PREFIX}.api.hosts.get"
API_HOSTS_COMMAND = f"{PREFIX}.api.hosts.command"
# Paged, compact view of every host for the reconciler (`fleet plan`): the first page (queue group) takes a
# snapshot in one replica; the later pages of that snapshot go to that replica's own subject (see below).
API_HOSTS_OBSERVED = f"{PREFIX}.api.hosts.observed"

# KV buckets (JetStream, file storage).
BUCKET_CONFIG = "fleet-v1-config"
BUCKET_HOSTS = "fleet-v1-hosts"
BUCKET_ENROLL = "fleet-v1-enroll"


def heartbeat(machine_id: str) -> str:
    """Where host `machine_id` publishes its heartbeats."""
    return f"{PREFIX}.hb.{machine_id}"


def bye(machine_id: str) -> str:
    """Where host `machine_id` publishes its goodbye when it shuts down cleanly."""
    return f"{PREFIX}.bye.{machine_id}"


def host_control(machine_id: str) -> str:
    """Server -> agent commands (pause, resume, drain, revoke) for host `machine_id` (request/reply)."""
    return f"{PREFIX}.host.{machine_id}.control"


def hosts_observed_at(server_id: str) -> str:
    """The pages of an observed-hosts snapshot held by `fleet server` replica `server_id` (no queue group)."""
    return f"{API_HOSTS_OBSERVED}.{server_id}"


def hosts_list_at(server_id: str) -> str:
    """The pages of a `fleet list` snapshot held by `fleet server` replica `server_id` (no queue group)."""
    return f"{API_HOSTS_LIST}.{server_id}"


def machine_id_of(subject: str) -> str:
    """The machine ID in `fleet.v1.hb.<id>` / `fleet.v1.bye.<id>` (the last token)."""
    return subject.rsplit(".", 1)[-1]
