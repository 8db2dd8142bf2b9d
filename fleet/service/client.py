"""The CLI's client of the control-plane API (`fleet.v1.api.*`): ping, list hosts, get one, send a command.

Called by fleet.cli.inventory_cmds and fleet.cli.runtime_cmds. Turns "NATS is down", "NATS is up but no
`fleet server` answers" and API error replies into FleetError subclasses with a hint.
"""

from __future__ import annotations

from typing import Any

from fleet.bus import subjects
from fleet.bus.connection import Bus, NoResponders, RequestTimeout, connect
from fleet.bus.messages import ApiReply, HostCommand, HostQuery, Message, decode
from fleet.errors import FleetError, NotFound, Refused, TransientError

SERVER_HINT = "start one with `fleet up` (embedded) or `fleet server --nats URL`"


class InvalidId(FleetError):
    """A machine ID that is malformed or matches several hosts (exit 1)."""


class ServerUnavailable(TransientError):
    """NATS answers but no `fleet server` does."""


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
        raise Refused(message_text)
    return reply.data


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

    async def list_hosts(self) -> list[dict[str, Any]]:
        return await call(self._bus(), subjects.API_HOSTS_LIST)

    async def get_host(self, ident: str) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_HOSTS_GET, HostQuery(id=ident))

    async def command(self, ident: str, action: str) -> dict[str, Any]:
        return await call(self._bus(), subjects.API_HOSTS_COMMAND, HostCommand(id=ident, action=action),  # type: ignore[arg-type]
                          timeout=8.0)
