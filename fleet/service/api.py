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
from collections.abc import Callable
from typing import Any

from fleet import __version__
from fleet.bus import replies, subjects
from fleet.bus.connection import Bus
from fleet.bus.enrolling import bound_to, seal
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
from fleet.hosts.ratelimit import PerHost
from fleet.hosts.registry import HostEntry, Registry
from fleet.hosts.revocation import Revocations

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
AGENT_TIMEOUT_S = 3.0
REGISTER_RATE, REGISTER_BURST = 0.5, 5.0  # registrations a second per host, and how many may come at once


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
        #: operator mode: every requester replies on its identity's inbox (fleet.bus.replies.identity_inbox)
        self.strict_replies = False
        #: the server's manager (fleet.service.manager.Manager.view): whether this replica leads, its runnables
        self.manager_view: Callable[[], dict[str, Any]] | None = None
        #: registrations per host: an agent registers at start and after a reconnect; a flood is dropped unread
        self.registrations = PerHost(rate=REGISTER_RATE, burst=REGISTER_BURST)

    # ------------------------------------------------------------------------------------------ agents
    async def enroll(self, msg: Any) -> bytes | None:
        """Answer an enrollment, sealed to the agent's box key, on the inbox of the nkey it proves it holds
        (fleet.bus.enrolling). In operator mode a request that is malformed or unproven is not answered at all:
        every enrolling agent shares the enroll identity, so there is no inbox that is surely the sender's."""
        metrics = self.enroller.metrics
        try:
            req = decode(EnrollRequest, msg.data)
        except ProtocolError as exc:
            if self.strict_replies:
                metrics["enroll_unanswered_malformed"] += 1
                return None
            return JoinReply(ok=False, reason=exc.code, message=exc.message).encode()
        if self.strict_replies and not bound_to(req, msg.reply or ""):
            metrics["enroll_unanswered_unproven"] += 1
            log.debug("enrollment request without a proof bound to its reply inbox: not answered")
            return None
        try:
            reply = await self.enroller.enroll(req)
        except FleetError as exc:  # no reason: the agent retries
            reply = JoinReply(ok=False, message=f"enrollment failed: {exc.message}")
        except Exception as exc:  # a bug must not be answered in clear, nor kill the subscription
            log.exception("enrollment failed")
            metrics["internal"] += 1
            reply = JoinReply(ok=False, message=f"internal error in the fleet server ({type(exc).__name__})")
        return seal(reply.encode(), req.box) if req.box else reply.encode()

    def register_reply_ok(self, subject: str, reply: str) -> bool:
        """A registration is answered only on the inbox of the identity its host record names (only that identity
        may publish on the host's register subject, and only it may read that inbox)."""
        if self.strict_replies:
            mid = subjects.machine_id_of(subject, subjects.REGISTER_PREFIX)
            entry = self.registry.entries.get(mid) if mid is not None else None
            if entry is not None and entry.record.nkey:
                return reply.startswith(replies.inbox_of(entry.record.nkey))
            return replies.identity_inbox(subject, reply)
        return replies.any_inbox(subject, reply)

    def admit_register(self, msg: Any) -> bool:
        """Bus.serve's admission of a registration: within its host's budget (keyed by the subject's last token,
        which only that host may publish on), else dropped before it is read or takes a handler."""
        if self.registrations.take(msg.subject[len(subjects.REGISTER_PREFIX):]):
            return True
        self.enroller.metrics["register_rate_limited"] += 1
        return False

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
        manager = self.manager_view() if self.manager_view is not None else {}
        return ApiReply(ok=True, data={"version": __version__, "server": self.server_id, **self.registry.counts(),
                                       "heartbeats": merged.get("heartbeats", 0), "metrics": dict(merged),
                                       **manager}).encode()

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
        if cmd.action == "revoke":  # a revoked host again: its identity's revocation is pushed again
            return await self._revoke(entry)
        if entry.record.revoked:
            raise HostRevoked(f"host {mid} is revoked", hint=f"forget it with `fleet hosts rm {mid[:8]}`")
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
        """Revoke a host: its NATS identity first (its key is in the record in memory, so nothing stored can stand
        in the way), then its record, its pool places, and a word to the agent. Each step runs even if an earlier
        one failed; the first failure is raised at the end. Revoking a revoked host pushes the revocation again."""
        mid = entry.record.machine_id
        failures: list[FleetError] = []
        try:
            await self._void_identity(entry)
        except FleetError as exc:
            failures.append(exc)
        at = format_time(now_utc())
        try:
            record = await modify_record(self.hosts, mid, lambda r: None if r.revoked else
                                         r.model_copy(update={"revoked": True, "revoked_at": at}), fallback=entry.record)
        except FleetError as exc:
            failures.append(exc)
        else:
            if record is not None:
                entry.record = record  # this replica answers with it at once; the informer brings it to every replica
                log.warning("security: host %s (%s, tenant %s) revoked", mid, record.hostname, record.tenant)
        for pool in entry.record.pools:
            try:
                await self.enroller.leave_pool(pool, mid)
            except FleetError as exc:
                log.warning("could not free the place of host %s in pool %s: %s", mid, pool, exc.message)
        try:
            await self.bus.publish(subjects.host_control(mid), ControlCommand(action="revoke").encode())
        except FleetError as exc:
            log.info("could not tell host %s it is revoked: %s", mid, exc)
        if failures:
            raise failures[0]
        return self._host_reply(entry)

    async def _void_identity(self, entry: HostEntry) -> None:
        """Make the NATS server close the host's connection and refuse its identity from now on."""
        if self.revocations is None or not entry.record.nkey:
            return
        mid = entry.record.machine_id
        try:
            await self.revocations.revoke(entry.record.nkey, mid)
        except FleetError as exc:
            raise TransientError(f"NATS has not taken the revocation of host {mid}'s identity yet: {exc.message}",
                                 hint=f"the server retries in the background; `fleet hosts revoke {mid[:8]}` pushes "
                                      "it again") from exc

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
            try:
                await self.enroller.leave_pool(pool, mid)
            except FleetError as exc:
                log.warning("could not free the place of host %s in pool %s: %s", mid, pool, exc.message)
        self.registry.apply_record(mid, None)
        log.info("host %s (%s) removed from the registry", mid, entry.record.hostname)
        return self._reply_for(host, removed=True)
