"""The client of the control-plane API (`fleet.v1.api.*`): ping, every host page by page, one host, a command
(refused here when fleet.yaml declares the host another status: fleet.hosts.model.declared_conflict).

Called by the CLI (fleet.cli.inventory_cmds, runtime_cmds), the reconciler's plan and apply (observed hosts) and
the benches; the server side of paging is fleet.hosts.paging. Requests go through fleet.bus.api.call (typed
errors, retries; re-exported here for the callers that already import it from this module). `host_pages()` is the one
reader of paged snapshots: the first page comes from any replica, the rest from the replica that holds the
snapshot, several at a time, each page converted as it arrives. Hosts arrive as fleet.hosts.model.Host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from typing import Any

from fleet.bus import subjects
from fleet.bus.api import ATTEMPTS, SERVER_HINT, call
from fleet.bus.connection import Bus, connect
from fleet.bus.messages import (
    HOSTS_PAGE_MAX,
    HostCommand,
    HostQuery,
    HostsPage,
    HostsPageRequest,
)
from fleet.bus.settings import TlsSettings
from fleet.errors import FleetError, ProtocolError, Refused, SnapshotExpired
from fleet.hosts.model import COMMAND_STATUS, Host, declared_conflict, row_reader

__all__ = ["SERVER_HINT", "ControlPlaneClient", "call", "host_pages", "hosts_of"]


def hosts_of(columns: list[str], rows: list[list[Any]]) -> list[Host]:
    """Hosts from rows; a malformed row is a ProtocolError naming it, never a plan built on a misread host."""
    out = []
    read = row_reader(columns)
    for row in rows:
        try:
            out.append(read(row))
        except (ValueError, TypeError, IndexError) as exc:
            name = row[0] if isinstance(row, list) and row else "?"
            raise ProtocolError(f"malformed host {str(name)[:40]} from the fleet server: {exc}") from exc
    return out


def _host(data: Any) -> Host:
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or not isinstance(data.get("row"), list):
        raise ProtocolError("malformed host reply from the fleet server")
    return hosts_of(data["columns"], [data["row"]])[0]


async def _page(bus: Bus, subject: str, request: HostsPageRequest, timeout: float) -> HostsPage:
    data = await call(bus, subject, request, timeout=timeout)
    try:
        return HostsPage.model_validate(data)
    except ValueError as exc:
        raise ProtocolError(f"malformed host page from the fleet server: {exc}") from exc


async def host_pages(bus: Bus, *, page_size: int = HOSTS_PAGE_MAX, concurrency: int = 4, timeout: float = 10.0,
                     attempts: int = 3) -> list[Host]:
    """Every host the control plane knows, sorted by machine ID, from one consistent snapshot.

    The first request takes the snapshot in one replica and returns its first page and the total; the other pages
    are asked of that replica, `concurrency` at a time, and converted as they arrive (while the server builds the
    next). A page cut short (NATS max_payload) is completed by asking for the rest. If the snapshot expires
    meanwhile, start over (up to `attempts` times).

    The cyclic GC is paused meanwhile: every object built here is kept (rows become Hosts), so a collection finds
    nothing, yet it would traverse the growing list of hosts again and again (at 100k hosts that doubled the time).
    """
    with _gc_paused():
        return await _host_pages(bus, page_size, concurrency, timeout, attempts)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def _host_pages(bus: Bus, page_size: int, concurrency: int, timeout: float, attempts: int) -> list[Host]:
    page_size = max(1, min(page_size, HOSTS_PAGE_MAX))
    for attempt in range(attempts):
        first = await _page(bus, subjects.API_HOSTS_PAGE, HostsPageRequest(offset=0, limit=page_size), timeout)
        total, snap, columns = first.total, first.snapshot, first.columns
        subject = subjects.hosts_page_at(first.server)
        chunks: dict[int, list[Host]] = {0: hosts_of(columns, first.rows)}
        sem = asyncio.Semaphore(concurrency)

        async def fetch(start: int, end: int, snap: str = snap, subject: str = subject, total: int = total,
                        chunks: dict[int, list[Host]] = chunks, sem: asyncio.Semaphore = sem,
                        columns: list[str] = columns) -> None:
            while start < end:
                async with sem:
                    page = await _page(bus, subject, HostsPageRequest(snapshot=snap, offset=start, limit=end - start),
                                       timeout)
                if not page.rows:
                    raise ProtocolError(f"the fleet server returned an empty page at offset {start} of {total}")
                chunks[start] = hosts_of(columns, page.rows)
                start += len(page.rows)

        # The server cut the first page to stay under max_payload: ask for pages of that many rows, not for pages
        # that it would build, encode, cut and encode again, then complete with a second request each.
        step = len(first.rows) if 0 < len(first.rows) < min(page_size, total) else page_size
        tasks = [asyncio.ensure_future(fetch(a, min(a + step, total)))
                 for a in range(len(first.rows), total, step)]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, SnapshotExpired) and attempt < attempts - 1:
                continue
            raise
        hosts = [h for start in sorted(chunks) for h in chunks[start]]
        if len(hosts) != total:
            raise ProtocolError(f"the fleet server returned {len(hosts)} hosts, expected {total}")
        return hosts
    raise SnapshotExpired("the host snapshot kept expiring")  # not reached


class ControlPlaneClient:
    """A short-lived connection for one CLI command."""

    def __init__(self, url: str, creds: str | None = None, connect_timeout: float = 3.0, *,
                 tls: TlsSettings | None = None) -> None:
        self.url, self.creds, self.connect_timeout, self.tls = url, creds, connect_timeout, tls
        self.bus: Bus | None = None

    async def __aenter__(self) -> ControlPlaneClient:
        self.bus = await connect(self.url, creds=self.creds, connect_timeout=self.connect_timeout, tls=self.tls,
                                 name="fleet-cli")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.bus is not None:
            await self.bus.close()

    def _bus(self) -> Bus:
        if self.bus is None:
            raise FleetError("client not connected")
        return self.bus

    async def ping(self, timeout: float = 2.0, attempts: int = ATTEMPTS) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_PING, timeout=timeout, attempts=attempts)

    async def hosts(self, page_size: int = 2000) -> list[Host]:
        return await host_pages(self._bus(), page_size=page_size)

    async def host(self, ident: str) -> Host:
        return _host(await call(self._bus(), subjects.API_HOSTS_GET, HostQuery(id=ident)))

    async def command(self, ident: str, action: str, *, force: bool = False) -> Host:
        """Not retried: a command that failed may still have taken effect, and an agent that did not answer in
        time rarely answers a second later; the user sees the error and decides. A pause, resume or drain that
        fleet.yaml's `hosts:` would undo (fleet.hosts.model.declared_conflict) is refused before it is sent."""
        if action in COMMAND_STATUS:
            host = await self.host(ident)
            conflict = declared_conflict(host, action)
            if conflict is not None:
                raise Refused(conflict, hint=f"change or remove its entry under `hosts:` in fleet.yaml (id: "
                                             f"{host.machine_id}) and run `fleet apply`")
            ident = host.machine_id  # the prefix resolved once: the command goes to the host that was checked
        return _host(await call(self._bus(), subjects.API_HOSTS_COMMAND,
                                HostCommand(id=ident, action=action, force=force), timeout=8.0, attempts=1))  # type: ignore[arg-type]
