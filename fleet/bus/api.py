"""The one way to ask the control-plane API (`fleet.v1.api.*`) something: request, reply, typed error.

Called by fleet.hosts.client (hosts, commands, paging) and fleet.sessions.client (sessions). `call()` turns "NATS is
up but no `fleet server` answers" into ServerUnavailable, and an error reply into the FleetError subclass its wire
code names (fleet.errors.from_wire), so retry meaning survives the trip; retryable errors (a transient failure, a
lost race) are retried with backoff before they reach the user. An expired snapshot is never retried here: only
the reader of the pages knows how to start over.
"""

from __future__ import annotations

from typing import Any

from fleet.bus.connection import Bus, NoResponders, RequestTimeout
from fleet.bus.messages import ApiReply, Message, decode
from fleet.errors import FleetError, ServerUnavailable, SnapshotExpired, from_wire
from fleet.retry import Backoff, call_retrying


class NotDelivered(ServerUnavailable):
    """No fleet server listened on the subject: the request was processed by no one (safe to send again, even a
    request that is not idempotent, such as a submit)."""


SERVER_HINT = "start one with `fleet up` (embedded) or `fleet server --nats URL`"
ATTEMPTS = 3
#: between attempts: 0.2 s doubling (50-100% of it), at most 1.6 s
CALL_BACKOFF = Backoff(0.2, 1.6, floor=0.5)


async def call(bus: Bus, subject: str, message: Message | None = None, *, timeout: float = 5.0,
               attempts: int = ATTEMPTS) -> Any:
    """One API request; the reply's data, or the FleetError it carries. Retryable failures are retried."""
    payload = message.encode() if message is not None else b'{"v": 1}'
    return await call_retrying(_call_once, bus, subject, payload, timeout, retry_on=_retryable, attempts=attempts,
                               wait=CALL_BACKOFF)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, FleetError) and exc.retryable and not isinstance(exc, SnapshotExpired)


async def _call_once(bus: Bus, subject: str, payload: bytes, timeout: float) -> Any:
    try:
        data = await bus.request(subject, payload, timeout=timeout, what="fleet server")
    except NoResponders as exc:
        raise NotDelivered(f"NATS at {bus.url} is up but no fleet server answers", hint=SERVER_HINT) from exc
    except RequestTimeout as exc:
        raise ServerUnavailable(f"the fleet server at {bus.url} did not answer within {timeout:g}s",
                                hint="check `fleet server` logs (.fleet/server.log after `fleet up`)") from exc
    reply = decode(ApiReply, data, max_bytes=len(data))  # our own server's reply: as large as NATS allowed
    if not reply.ok:
        raise from_wire(reply.error, reply.message, reply.hint, reply.retryable)
    return reply.data
