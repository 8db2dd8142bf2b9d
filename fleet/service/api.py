"""The request handlers of `fleet server`: enrollment and registration for agents, the host API for the CLI.

Each handler takes a NATS message and returns the reply payload, or raises a FleetError that fleet.bus.connection
`Bus.serve` sends back as its wire code; `Bus.serve` also bounds their size and concurrency, so a command waiting
on an agent that does not answer never stalls `fleet list`. Handlers:

- `enroll` / `register` (`fleet.v1.enroll`, `fleet.v1.register`) -> fleet.hosts.enrollment.Enroller
- `ping` (`fleet.v1.api.ping`): version, replica, host counts, and what was dropped or refused (metrics)
- `page` (`fleet.v1.api.hosts.page[.<server>]`): paged host snapshots (fleet.hosts.paging)
- `get` (`fleet.v1.api.hosts.get`): one host by ID or unique prefix
- `command` (`fleet.v1.api.hosts.command`): pause / resume / drain (through the live agent), revoke (the record,
  then the agent), rm (forget an offline or revoked host; `force` for a live one)

Wired by fleet.service.server.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fleet import __version__
from fleet.bus import subjects
from fleet.bus.connection import Bus
from fleet.bus.kv import Store
from fleet.bus.messages import (
    ApiReply,
    ControlCommand,
    ControlReply,
    EnrollRequest,
    HostCommand,
    HostQuery,
    HostsPageRequest,
    JoinReply,
    RegisterRequest,
    decode,
)
from fleet.bus.records import format_time, now_utc
from fleet.errors import (
    AgentUnreachable,
    FleetError,
    HostOffline,
    HostRevoked,
    NotFound,
    ProtocolError,
    Refused,
    TransientError,
)
from fleet.hosts.enrollment import Enroller, modify_record
from fleet.hosts.model import HOST_COLUMNS, Host
from fleet.hosts.paging import Snapshots
from fleet.hosts.registry import HostEntry, Registry
from fleet.hosts.revocation import Revocations

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
AGENT_TIMEOUT_S = 3.0


class HostApi:
    def __init__(self, bus: Bus, registry: Registry, enroller: Enroller, hosts: Store, server_id: str, *,
                 page_bytes: int | None = None, metrics: list[Counter[str]] | None = None,
                 revocations: Revocations | None = None) -> None:
        self.revocations = revocations
        self.bus = bus
        self.registry = registry
        self.enroller = enroller
        self.hosts = hosts
        self.server_id = server_id
        self.page_bytes = page_bytes
        self.snapshots = Snapshots(registry, server_id)
        self.metrics = metrics or []

    # ------------------------------------------------------------------------------------------ agents
    async def enroll(self, msg: Any) -> bytes:
        try:
            req = decode(EnrollRequest, msg.data)
        except ProtocolError as exc:  # a refusal the agent reports and stops on (a transient failure it retries)
            return JoinReply(ok=False, reason=exc.code, message=exc.message).encode()
        return (await self.enroller.enroll(req)).encode()

    async def register(self, msg: Any) -> bytes:
        machine_id = subjects.machine_id_of(msg.subject, subjects.REGISTER_PREFIX)
        if machine_id is None:
            return JoinReply(ok=False, reason="malformed", message="register on fleet.v1.register.<machine-id>").encode()
        try:
            req = decode(RegisterRequest, msg.data)
        except ProtocolError as exc:
            return JoinReply(ok=False, reason=exc.code, message=exc.message).encode()
        return (await self.enroller.register(machine_id, req)).encode()

    # ------------------------------------------------------------------------------------------ CLI
    async def ping(self, msg: Any) -> bytes:
        merged: Counter[str] = Counter()
        for counter in self.metrics:
            merged.update(counter)
        return ApiReply(ok=True, data={"version": __version__, "server": self.server_id, **self.registry.counts(),
                                       "heartbeats": merged.get("heartbeats", 0), "metrics": dict(merged)}).encode()

    async def page(self, msg: Any) -> bytes:
        return self.snapshots.page(decode(HostsPageRequest, msg.data), self._page_budget())

    def _page_budget(self) -> int:
        max_payload = getattr(getattr(self.bus, "nc", None), "max_payload", None) or DEFAULT_MAX_PAYLOAD
        return min(self.page_bytes or max_payload, max_payload - 512)

    async def get(self, msg: Any) -> bytes:
        entry = self.registry.resolve(decode(HostQuery, msg.data).id)
        return self._host_reply(entry)

    def _host_reply(self, entry: HostEntry, **extra: Any) -> bytes:
        return self._reply_for(self.registry.host(entry), **extra)

    def _reply_for(self, host: Host, **extra: Any) -> bytes:
        """A host reply: its row, and which replica answered (operators of several replicas want to know)."""
        return ApiReply(ok=True, data={"columns": HOST_COLUMNS, "row": host.to_row(), "served_by": self.server_id,
                                       **extra}).encode()

    async def command(self, msg: Any) -> bytes:
        cmd = decode(HostCommand, msg.data)
        entry = self.registry.resolve(cmd.id)
        mid = entry.record.machine_id
        if cmd.action == "rm":
            return await self._remove(entry, cmd.force)
        if entry.record.revoked:
            raise HostRevoked(f"host {mid} is revoked", hint=f"forget it with `fleet hosts rm {mid[:8]}`")
        if cmd.action == "revoke":
            return await self._revoke(entry)
        if not entry.live:
            raise HostOffline(f"host {mid} is offline; {cmd.action} needs a live agent",
                              hint="declare its status under `hosts:` in fleet.yaml: it is applied when it returns")
        reply = await self._tell(mid, cmd.action)
        if not reply.ok:
            raise Refused(f"host {mid}: {cmd.action} failed: {reply.message}")
        self.registry.reported(entry, reply.status)  # the agent's answer is as good as its next heartbeat
        return self._host_reply(entry)

    async def _tell(self, mid: str, action: str) -> ControlReply:
        try:
            data = await self.bus.request(subjects.host_control(mid), ControlCommand(action=action).encode(),  # type: ignore[arg-type]
                                          timeout=AGENT_TIMEOUT_S, what=f"host {mid}")
        except FleetError as exc:
            raise AgentUnreachable(f"host {mid} did not answer {action} within {AGENT_TIMEOUT_S:g}s: {exc.message}",
                                   hint="the agent may be overloaded or cut off; retry, or check `fleet show`") from exc
        return decode(ControlReply, data)

    async def _revoke(self, entry: HostEntry) -> bytes:
        mid = entry.record.machine_id
        at = format_time(now_utc())
        record = await modify_record(self.hosts, mid, lambda r: None if r.revoked else
                                     r.model_copy(update={"revoked": True, "revoked_at": at}))
        if record is not None:
            entry.record = record  # this replica answers with it at once; the informer brings it to every replica
            log.warning("security: host %s (%s, tenant %s) revoked", mid, record.hostname, record.tenant)
        for pool in entry.record.pools:
            await self.enroller.leave_pool(pool, mid)
        try:
            await self.bus.publish(subjects.host_control(mid), ControlCommand(action="revoke").encode())
        except FleetError as exc:
            log.info("could not tell host %s it is revoked: %s", mid, exc)
        await self._void_identity(entry)
        return self._host_reply(entry)

    async def _void_identity(self, entry: HostEntry) -> None:
        """Make the NATS server close the host's connection and refuse its identity from now on."""
        if self.revocations is None or not entry.record.nkey:
            return
        try:
            await self.revocations.revoke(entry.record.nkey, entry.record.machine_id)
        except FleetError as exc:
            raise TransientError(f"host {entry.record.machine_id} is revoked in the registry, but NATS has not taken "
                                 f"the revocation of its identity yet: {exc.message}",
                                 hint="the server retries in the background; run the command again to check") from exc

    async def _remove(self, entry: HostEntry, force: bool) -> bytes:
        mid = entry.record.machine_id
        if entry.live and not entry.record.revoked and not force:
            raise Refused(f"host {mid} ({entry.record.hostname}) is live; only offline or revoked hosts are removed",
                          hint=f"drain and stop it first, revoke it, or pass --force: `fleet hosts rm --force {mid[:8]}`")
        host = self.registry.host(entry)
        if entry.live and not entry.record.revoked:  # forced: the agent must stop too, not run on unknown
            try:
                await self.bus.publish(subjects.host_control(mid), ControlCommand(action="revoke").encode())
            except FleetError as exc:
                log.info("could not tell host %s to stop: %s", mid, exc)
        await self._void_identity(entry)  # a forgotten host's identity must not keep working
        current = await self.hosts.get(mid)
        if current is None:
            raise NotFound(f"no host with ID {mid}")
        await self.hosts.delete(mid, last=current.revision)
        for pool in entry.record.pools:
            await self.enroller.leave_pool(pool, mid)
        self.registry.apply_record(mid, None)
        log.info("host %s (%s) removed from the registry", mid, entry.record.hostname)
        return self._reply_for(host, removed=True)
