"""The CLI's client of the control-plane API (`fleet.v1.api.*`): ping, list hosts, get one, send a command,
and read every observed host page by page (`observed_rows`, for `fleet plan`).

Called by fleet.cli.inventory_cmds, fleet.cli.runtime_cmds and fleet.cli.live. Turns "NATS is down", "NATS is
up but no `fleet server` answers" and API error replies into FleetError subclasses with a hint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus, NoResponders, RequestTimeout, connect
from fleet.bus.messages import (
    HOSTS_PAGE_MAX,
    OBSERVED_COLUMNS,
    ApiReply,
    HostCommand,
    HostQuery,
    HostsPage,
    HostsPageRequest,
    Message,
    ProtocolError,
    decode,
)
from fleet.errors import FleetError, NotFound, Refused, TransientError

SERVER_HINT = "start one with `fleet up` (embedded) or `fleet server --nats URL`"


class InvalidId(FleetError):
    """A machine ID that is malformed or matches several hosts (exit 1)."""


class ServerUnavailable(TransientError):
    """NATS answers but no `fleet server` does."""


class SnapshotExpired(TransientError):
    """The server no longer holds the observed-hosts snapshot being read (expired, or that replica restarted)."""


async def call(bus: Bus, subject: str, message: Message | None = None, *, timeout: float = 5.0) -> Any:
    payload = message.encode() if message is not None else b'{"v": 1}'
    try:
        data = await bus.request(subject, payload, timeout=timeout, what="fleet server")
    except NoResponders as exc:
        raise ServerUnavailable(f"NATS at {bus.url} is up but no fleet server answers", hint=SERVER_HINT) from exc
    except RequestTimeout as exc:
        raise ServerUnavailable(f"the fleet server at {bus.url} did not answer within {timeout:g}s",
                                hint="check `fleet server` logs (.fleet/server.log after `fleet up`)") from exc
    reply = decode(ApiReply, data)
    if not reply.ok:
        message_text = reply.message or reply.error or "request failed"
        if reply.error == "not_found":
            raise NotFound(message_text, hint="`fleet list` shows the machine IDs")
        if reply.error in ("malformed", "ambiguous"):
            raise InvalidId(message_text, hint="pass a full machine ID or a longer prefix from `fleet list`")
        if reply.error == "expired":
            raise SnapshotExpired(message_text)
        raise Refused(message_text)
    return reply.data


async def _page(bus: Bus, subject: str, request: HostsPageRequest, timeout: float) -> HostsPage:
    data = await call(bus, subject, request, timeout=timeout)
    try:
        page = HostsPage.model_validate(data)
    except ValueError as exc:
        raise ProtocolError(f"malformed HostsPage from the fleet server: {exc}") from exc
    if tuple(page.columns[:len(OBSERVED_COLUMNS)]) != OBSERVED_COLUMNS:
        raise ProtocolError(f"unexpected observed-host columns {page.columns} (this fleet reads {list(OBSERVED_COLUMNS)})")
    return page


async def observed_rows(bus: Bus, *, page_size: int = HOSTS_PAGE_MAX, concurrency: int = 4, timeout: float = 10.0,
                        attempts: int = 3, convert: Callable[[list[list[Any]]], list[Any]] | None = None) -> list[Any]:
    """Every host the control plane knows, as rows in the order of OBSERVED_COLUMNS, sorted by machine ID.

    The first request takes a snapshot in one `fleet server` replica and returns its first page and the total;
    the remaining pages of that snapshot are asked of the same replica, `concurrency` at a time, so the server
    builds a page while the CLI decodes the previous one (and `convert`s it, when given: e.g. rows -> models,
    one page at a time). A page the server cut short (NATS max_payload) is completed by asking for the rest. If
    the snapshot expires meanwhile, start over (up to `attempts` times).
    """
    conv = convert or (lambda rows: rows)
    page_size = max(1, min(page_size, HOSTS_PAGE_MAX))
    for attempt in range(attempts):
        first = await _page(bus, subjects.API_HOSTS_OBSERVED, HostsPageRequest(offset=0, limit=page_size), timeout)
        total, snap = first.total, first.snapshot
        subject = subjects.hosts_observed_at(first.server)
        chunks: dict[int, list[Any]] = {0: conv(first.rows)}
        sem = asyncio.Semaphore(concurrency)

        async def fetch(start: int, end: int, snap: str = snap, subject: str = subject, total: int = total,
                        chunks: dict[int, list[Any]] = chunks, sem: asyncio.Semaphore = sem) -> None:
            while start < end:
                async with sem:
                    page = await _page(bus, subject, HostsPageRequest(snapshot=snap, offset=start, limit=end - start),
                                       timeout)
                if not page.rows:
                    raise ProtocolError(f"the fleet server returned an empty page at offset {start} of {total}")
                chunks[start] = conv(page.rows)
                start += len(page.rows)

        tasks = [asyncio.ensure_future(fetch(a, min(a + page_size, total)))
                 for a in range(len(first.rows), total, page_size)]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, SnapshotExpired) and attempt < attempts - 1:
                continue
            raise
        rows = [row for start in sorted(chunks) for row in chunks[start]]
        if len(rows) != total:
            raise ProtocolError(f"the fleet server returned {len(rows)} observed hosts, expected {total}")
        return rows
    raise SnapshotExpired("the observed-hosts snapshot kept expiring")  # not reached


class ControlPlaneClient:
    """A short-lived connection for one CLI command."""

    def __init__(self, url: str, creds: str | None = None, connect_timeout: float = 3.0) -> None:
        self.url, self.creds, self.connect_timeout = url, creds, connect_timeout
        self.bus: Bus | None = None

    async def __aenter__(self) -> ControlPlaneClient:
        self.bus = await connect(self.url, creds=self.creds, connect_timeout=self.connect_timeout, name="fleet-cli")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            await self.bus.close()

    def _bus(self) -> Bus:
        if self.bus is None:
            raise FleetError("client not connected")
        return self.bus

    async def ping(self, timeout: float = 2.0) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_PING, timeout=timeout)

    async def list_hosts(self, page_size: int = 1000) -> list[dict[str, Any]]:
        """Every host view, in enrollment order, page by page (one reply cannot hold 10k hosts)."""
        bus = self._bus()
        for attempt in range(3):
            first = await call(bus, subjects.API_HOSTS_LIST, HostsPageRequest(limit=page_size))
            if isinstance(first, list):  # a server that does not page answers with every host at once
                return first
            hosts: list[dict[str, Any]] = list(first["hosts"])
            subject = subjects.hosts_list_at(first["server"])
            try:
                while len(hosts) < first["total"]:
                    page = await call(bus, subject, HostsPageRequest(snapshot=first["snapshot"], offset=len(hosts),
                                                                     limit=page_size))
                    if not page["hosts"]:
                        raise ProtocolError(f"the fleet server returned an empty host page at {len(hosts)}")
                    hosts += page["hosts"]
            except SnapshotExpired:
                if attempt == 2:
                    raise
                continue
            return hosts
        raise SnapshotExpired("the host list kept expiring")  # not reached

    async def get_host(self, ident: str) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_HOSTS_GET, HostQuery(id=ident))

    async def command(self, ident: str, action: str) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_HOSTS_COMMAND, HostCommand(id=ident, action=action),  # type: ignore[arg-type]
                          timeout=8.0)
