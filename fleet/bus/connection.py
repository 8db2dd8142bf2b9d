"""Connecting to NATS with bounded timeouts, and the thin `Bus` handle the rest of fleet talks through.

Called by the CLI (short-lived, `persistent=False`: a few fast attempts, then ConnectionFailed), by the agent
and by `fleet server` (`persistent=True`: the first connection is bounded too, after which the client
reconnects forever). Nothing outside fleet.bus imports nats: `Bus` exposes publish / subscribe / request and
the KV stores (fleet.bus.kv), and turns nats' exceptions into fleet.errors types at this boundary.

`Bus.serve` is how a service answers requests from the network: a request whose reply subject is not the requester's
own inbox (fleet.bus.replies: a reply rule per endpoint) is dropped unanswered, its handler never run, so nobody
makes the service publish where it chooses; a payload over the subject's size limit is refused before it is read, at most `concurrency` handlers run at once (one slow handler, e.g. waiting on an
agent, never stalls the others, and a flood waits in NATS instead of becoming tasks), and every FleetError a
handler raises goes back as its wire code (fleet.errors.WIRE_ERRORS); anything else is logged and answered as
an internal error. Drops and refusals are counted in `Bus.metrics`.

A request (or the opening of a KV bucket, fleet.bus.kv) whose publish the NATS server refuses this identity ends
with PermissionDenied as soon as the server says so (`Bus.refusable`), not when its timeout runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.aio.msg import Msg

from fleet.bus import replies
from fleet.bus.messages import ApiReply
from fleet.bus.settings import TlsSettings
from fleet.errors import (
    AuthRefused,
    ConnectionFailed,
    FleetError,
    InternalError,
    PermissionDenied,
    TooLarge,
    TransientError,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
UP_HINT = "start one with `fleet up`, or point --nats / FLEET_NATS_URL at a running server"

Handler = Callable[[Msg], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
#: a request handler for Bus.serve: the reply payload (None: no reply), or a FleetError raised
RequestHandler = Callable[[Msg], Awaitable[bytes | None]]


AUTH_HINT = ("run the command from the directory where `fleet up` ran (it finds .fleet/trust/admin.creds), or pass "
             "--creds / FLEET_NATS_CREDS; `fleet creds create` issues more identities")


class NoResponders(TransientError):
    """NATS answered but no service listens on the subject (e.g. no `fleet server` runs)."""


class RequestTimeout(TransientError):
    """A request got no reply in time."""


class Refused(nats.errors.Error):
    """The NATS server refused this identity the publish an operation waited on (raised inside `Bus.refusable`,
    as soon as the server says so; the caller turns it into PermissionDenied, as after a timeout)."""


class _Watch:
    """A task waiting on an operation that publishes to `subject` (or below it); `refusal`, once the server refused
    that publish. Entered and left around the awaited operation, by `Bus.refusable`."""

    __slots__ = ("bus", "subject", "task", "refusal")

    def __init__(self, bus: Bus, subject: str) -> None:
        self.bus, self.subject = bus, subject.lower()  # nats-py lowercases the subject of a refusal
        self.task: asyncio.Task | None = None
        self.refusal: str | None = None

    def __enter__(self) -> _Watch:
        self.task = asyncio.current_task()
        self.bus._watches.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.bus._watches.remove(self)
        # cancelled by the refusal only (uncancel: no one else cancelled it too): the operation was refused
        if (self.refusal is not None and kind is asyncio.CancelledError and self.task is not None
                and self.task.uncancel() == 0):
            raise Refused(self.refusal) from None


def _servers(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


class Bus:
    """A connected NATS client plus fleet's conveniences. Create it with `connect()`; close it with `close()`."""

    def __init__(self, nc: NATS, url: str, reconnect_hooks: list[Hook] | None = None) -> None:
        self.nc = nc
        self.url = url
        self._js: Any = None
        self._reconnect_hooks = reconnect_hooks if reconnect_hooks is not None else []
        self._tasks: set[asyncio.Task] = set()
        #: what was dropped or refused, by reason (`too_large`, `malformed`, `internal`, …); read by metrics
        self.metrics: Counter[str] = Counter()
        #: publishes and subscribes the NATS server refused (time, message), newest last
        self.denials: deque[tuple[float, str]] = deque(maxlen=64)
        #: the reply-inbox prefix of this identity (None: NATS's default)
        self.inbox: str | None = None
        #: the reply subjects `serve` answers unless told otherwise (fleet.bus.replies)
        self.reply_rule: replies.ReplyRule = replies.any_inbox
        self._refusals_logged = 0.0
        self._watches: list[_Watch] = []  # operations to end as soon as the server refuses their publish

    def refusable(self, subject: str) -> _Watch:
        """`with bus.refusable(subject): await …`: if the NATS server refuses this identity a publish to `subject`
        (or to a subject below it) meanwhile, the awaited operation ends at once with `Refused` (a nats error),
        instead of waiting out its timeout: nats-py tells only error_cb, the operation itself would just time out."""
        return _Watch(self, subject)

    def _on_denial(self, text: str) -> None:
        """Called by error_cb for each refusal: end the operations waiting on a publish to that subject."""
        if not self._watches:
            return
        low = text.lower()
        parts = low.split('"')
        if " for publish to " not in low or len(parts) < 3:
            return
        refused = parts[1]
        for watch in list(self._watches):
            if watch.refusal is None and watch.task is not None and (
                    refused == watch.subject or refused.startswith(watch.subject + ".")):
                watch.refusal = text.removeprefix("nats: ")
                watch.task.cancel()

    def denied(self, subject: str, since: float) -> str | None:
        """The NATS server's refusal of `subject` (or of any subject, if it refused something) since `since`."""
        wanted = subject.lower()
        recent = [text for at, text in self.denials if at >= since]
        for text in recent:
            if f'"{wanted}"' in text:
                return text.removeprefix("nats: ")
        return recent[-1].removeprefix("nats: ") if recent else None

    def on_reconnect(self, hook: Hook) -> None:
        """Call `hook()` after every reconnection (e.g. to resync a KV informer)."""
        self._reconnect_hooks.append(hook)

    # -- core ------------------------------------------------------------------------------------------
    async def publish(self, subject: str, payload: bytes) -> None:
        try:
            await self.nc.publish(subject, payload)
        except nats.errors.Error as exc:
            raise TransientError(f"publish on {subject} failed: {exc}") from exc

    async def subscribe(self, subject: str, handler: Handler, *, queue: str = "", pending_msgs: int = 1_000_000,
                        pending_bytes: int = 256 * 1024 * 1024) -> Any:
        """Subscribe `handler(msg)`; msg has `.subject`, `.data`, `.reply` and `await msg.respond(bytes)`.

        At most `pending_msgs` messages / `pending_bytes` bytes wait for the handler; past that NATS drops them
        (a slow consumer), so a flood costs bounded memory. The defaults fit a storm of 100k heartbeats."""
        return await self.nc.subscribe(subject, queue=queue, cb=handler, pending_msgs_limit=pending_msgs,
                                       pending_bytes_limit=pending_bytes)

    async def serve(self, subject: str, handler: RequestHandler, *, queue: str = "", concurrency: int = 64,
                    max_bytes: int = 64 * 1024, reply_rule: replies.ReplyRule | None = None,
                    admit: Callable[[Msg], bool] | None = None, answer_refusals: bool = True) -> Any:
        """Answer requests on `subject` with `handler`, bounded in size and concurrency (see the module doc).

        `reply_rule` (default: this bus's `reply_rule`) says which reply subjects are answered; any other request
        is dropped before its handler runs. `admit(msg)`, if given, may drop a request before it takes a handler
        (a per-sender rate limit): it must be cheap, it runs in the NATS read path. `answer_refusals=False`: only
        what the handler returns is ever sent (no `too_large`, no error reply), for an endpoint that must first
        check who asks before it answers anything (enrollment)."""
        sem = asyncio.Semaphore(concurrency)
        metrics = self.metrics
        rule = reply_rule or self.reply_rule

        async def respond(msg: Msg, payload: bytes | None, *, refusal: bool = False) -> None:
            if refusal and not answer_refusals:
                return
            if msg.reply and payload is not None:
                try:
                    await msg.respond(payload)
                except Exception:  # the requester is gone, or NATS is: nothing to tell anyone
                    metrics["reply_failed"] += 1

        async def run(msg: Msg) -> None:
            try:
                refusal = False
                try:
                    payload = await handler(msg)
                except FleetError as exc:
                    metrics[exc.code] += 1
                    payload, refusal = ApiReply(ok=False, **exc.to_wire()).encode(), True
                except Exception as exc:  # a bug must not kill the subscription, nor leak internals
                    log.exception("handler of %s failed", subject)
                    metrics["internal"] += 1
                    err = InternalError(f"internal error in the fleet server ({type(exc).__name__})",
                                        hint="the fleet server log has the traceback")
                    payload, refusal = ApiReply(ok=False, **err.to_wire()).encode(), True
                await respond(msg, payload, refusal=refusal)
            finally:
                sem.release()

        async def on_msg(msg: Msg) -> None:
            if msg.reply and not rule(msg.subject, msg.reply):
                metrics["reply_refused"] += 1
                self._refused_reply(msg)
                return
            if admit is not None and not admit(msg):
                return
            if len(msg.data) > max_bytes:
                metrics["too_large"] += 1
                err = TooLarge(f"request of {len(msg.data)} bytes refused on {msg.subject} (at most {max_bytes})")
                await respond(msg, ApiReply(ok=False, **err.to_wire()).encode(), refusal=True)
                return
            await sem.acquire()  # at `concurrency` handlers, this subscription waits: backpressure, not tasks
            task = asyncio.get_running_loop().create_task(run(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        # Requests waiting for a free handler: bounded in count and bytes (the rest time out at the requester).
        return await self.subscribe(subject, on_msg, queue=queue, pending_msgs=10_000,
                                    pending_bytes=64 * 1024 * 1024)

    def _refused_reply(self, msg: Msg) -> None:
        """Log a refused reply subject as a security event, at most once every 10 s (the count is in metrics)."""
        now = time.monotonic()
        if now - self._refusals_logged >= 10.0:
            self._refusals_logged = now
            log.warning("security: request on %s not answered: its reply subject %r is not the requester's own "
                        "inbox (%d refused so far)", msg.subject[:120], msg.reply[:120], self.metrics["reply_refused"])

    async def request(self, subject: str, payload: bytes, *, timeout: float = 3.0, what: str = "") -> bytes:
        """Request/reply; NoResponders if nobody listens, RequestTimeout if nobody answers in time, PermissionDenied
        if the NATS server refused this identity the subject (nats-py only reports that to error_cb: the request
        itself would just time out)."""
        started = time.monotonic()
        try:
            with self.refusable(subject):
                msg = await self.nc.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(f"no {what or 'service'} answers on {subject} at {self.url}") from exc
        except (TimeoutError, nats.errors.TimeoutError, Refused) as exc:
            refusal = self.denied(subject, started)
            if refusal is not None:
                raise PermissionDenied(f"NATS refused this request: {refusal}",
                                       hint="this identity may not do that; use credentials of a role that may "
                                            "(`fleet creds create --role admin` on the fleet's host)") from exc
            raise RequestTimeout(f"no reply from {what or subject} within {timeout:g}s at {self.url}") from exc
        except nats.errors.Error as exc:
            raise TransientError(f"request on {subject} failed: {exc}") from exc
        return msg.data

    async def flush(self, timeout: float = 5.0) -> None:
        try:
            await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]  # nats-py says int; it takes seconds
        except (TimeoutError, nats.errors.Error) as exc:
            raise TransientError(f"flush to {self.url} failed: {exc}") from exc

    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    @property
    def auth_required(self) -> bool:
        """Does the NATS server authenticate every connection (operator mode, as `fleet up` runs it)?"""
        info = getattr(self.nc, "_server_info", None) or {}
        return bool(info.get("auth_required"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), 5.0)
            except Exception:  # closing is best effort
                log.debug("close failed", exc_info=True)

    # -- JetStream -------------------------------------------------------------------------------------
    @property
    def js(self) -> Any:
        if self._js is None:
            self._js = self.nc.jetstream(timeout=5.0)
        return self._js

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _inbox_of(creds: str | None, creds_text: str | None = None) -> str | None:
    """The reply-inbox prefix a creds file's identity may subscribe to (its JWT's `_INBOX.x.>` permission)."""
    if not creds and not creds_text:
        return None
    from fleet.bus.trust import (  # nkeys (and nacl) only for those who use creds
        TrustError,
        parse_creds,
        read_creds,
    )

    try:
        # a clear error now, instead of an obscure one inside the connect
        parsed = parse_creds(creds_text) if creds_text else read_creds(creds or "")
    except TrustError as exc:
        raise ConnectionFailed(f"cannot use --creds {creds or '(in memory)'}: {exc.message}",
                               hint="pass the creds file `fleet up` or `fleet creds create` wrote") from None
    allowed = ((parsed.claims.get("nats") or {}).get("sub") or {}).get("allow") or []
    inboxes = [p[:-2] for p in allowed if isinstance(p, str) and p.startswith("_INBOX.") and p.endswith(".>")]
    if not allowed and parsed.public:  # may subscribe anywhere (the server): ask on its own key's inbox as well,
        return f"_INBOX.{parsed.public}"  # so that services that answer only identities' inboxes answer it
    return inboxes[0] if inboxes else None


_AUTH_WORDS = ("authorization violation", "authentication", "user authentication revoked", "permissions violation")


async def connect(
    url: str = DEFAULT_URL,
    *,
    creds: str | None = None,
    creds_text: str | None = None,
    inbox_prefix: str | None = None,
    tls: TlsSettings | None = None,
    connect_timeout: float = 3.0,
    name: str = "fleet",
    persistent: bool = False,
    on_reconnect: Hook | None = None,
    on_disconnect: Hook | None = None,
    on_closed: Hook | None = None,
) -> Bus:
    """Connect within about `connect_timeout` seconds or raise ConnectionFailed naming the URL (AuthRefused when
    the server refuses the credentials). `creds_text`: the text of a creds file, for an identity made in memory.
    `inbox_prefix`: ask with this reply-inbox prefix instead (it must be under the one the identity may read).

    persistent=True (agents, `fleet server`): once connected, reconnect forever after any outage. With a creds
    file, replies come to the inbox prefix its identity may subscribe to (fleet.bus.identities).
    """
    servers = _servers(url) or [DEFAULT_URL]
    attempt_timeout = max(0.2, min(connect_timeout, 2.0))
    wait = 0.2
    attempts = max(1, int(connect_timeout / (attempt_timeout + wait)))
    denials: deque[tuple[float, str]] = deque(maxlen=64)
    first_errors: list[str] = []
    made: list[Bus] = []  # the Bus, once made (error_cb tells it of refusals)

    async def error_cb(exc: Exception) -> None:
        text = str(exc)
        if "permissions violation" in text.lower():
            # nats-py reports a refused publish or subscribe here, not to the caller (it lowercases the subject)
            denials.append((time.monotonic(), text))
            log.debug("NATS refused: %s", text.removeprefix("nats: "))  # surfaced as PermissionDenied where it matters
            if made:
                made[0]._on_denial(text)
        else:
            if len(first_errors) < 4:
                first_errors.append(text)
            log.debug("nats error: %s", exc)

    hooks: list[Hook] = [on_reconnect] if on_reconnect is not None else []

    async def reconnected_cb() -> None:
        log.info("reconnected to NATS at %s", url)
        for hook in list(hooks):
            try:
                await hook()
            except Exception:  # one listener must not stop the others
                log.exception("reconnect hook failed")

    async def disconnected_cb() -> None:
        log.info("disconnected from NATS at %s", url)
        if on_disconnect is not None:
            await on_disconnect()

    async def closed_cb() -> None:
        if on_closed is not None:
            await on_closed()

    kwargs: dict[str, Any] = dict(
        servers=servers,
        name=name,
        connect_timeout=attempt_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=attempts,
        reconnect_time_wait=wait,
        error_cb=error_cb,
        reconnected_cb=reconnected_cb,
        disconnected_cb=disconnected_cb,
        closed_cb=closed_cb,
        ping_interval=5 if persistent else 120,
        max_outstanding_pings=2,
    )
    inbox = inbox_prefix or _inbox_of(creds, creds_text)
    if creds_text:
        kwargs["user_credentials"] = RawCredentials(creds_text)
    elif creds:
        kwargs["user_credentials"] = creds
    if inbox:
        kwargs["inbox_prefix"] = inbox
    if tls:
        kwargs["tls"] = tls.context()
    elif any(u.startswith("tls://") for u in servers):
        kwargs["tls"] = TlsSettings().context()  # tls:// without files: verify the server with the system CAs
    try:
        nc = await asyncio.wait_for(nats.connect(**kwargs), connect_timeout + attempt_timeout + 1.0)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        said = " ".join([str(exc), *first_errors]).lower()
        if any(word in said for word in _AUTH_WORDS):
            raise AuthRefused(f"NATS at {url} refused the credentials"
                              + (f" in {creds}" if creds else " (this server needs credentials)")
                              + f": {_first_line(said)}", hint=AUTH_HINT) from exc
        raise ConnectionFailed(f"cannot reach NATS at {url}", hint=UP_HINT) from exc
    except Exception as exc:  # nats-py raises assorted errors for bad URLs and credentials
        raise ConnectionFailed(f"cannot connect to NATS at {url}: {exc}", hint=UP_HINT) from exc
    if persistent:
        # From now on, never give up: the agent or server outlives NATS restarts.
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 0.5
    bus = Bus(nc, url, hooks)
    bus.denials = denials
    made.append(bus)
    bus.inbox = inbox
    return bus


def _first_line(text: str) -> str:
    for word in _AUTH_WORDS:
        if word in text:
            return word
    return text.splitlines()[0][:120]
