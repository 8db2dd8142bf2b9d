"""`fleet.Client`: submit sessions, follow them, cancel them, list them, from a program (async and sync).

    import fleet
    with fleet.SyncClient.from_env() as client:          # FLEET_NATS_URL, FLEET_NATS_CREDS
        session = client.submit("my-fintech-app", ["python", "job.py"], labels=["model=claude-3-5-sonnet"])
        done = client.wait(session.id)                    # a SessionView: phase, exit_code, output_tail, history …

    async with fleet.Client.from_env() as client:
        session = await client.submit("my-fintech-app", ["true"], wait=30)   # returns when it ended (or 30 s)
        async for text in client.logs(session.id, follow=True): print(text, end="")

A submitter's identity (`fleet creds create --role submitter --tenant T`) is scoped to one tenant: the client reads
the tenant from its credentials and every request goes to that tenant's session API, which the NATS server lets it
use and nothing else; other identities (admin, viewer) use the `_all` token. `submit` returns once the session is
durably stored (JetStream acknowledged). Transient failures (no dispatcher for a moment, a fail-over) are retried.
Used by the CLI (fleet.cli.session_cmds), bench/dispatch.py, examples and tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from fleet.bus import subjects
from fleet.bus.api import call
from fleet.bus.connection import Bus, connect
from fleet.bus.messages import (
    LIST_MAX,
    MAX_SUBMIT_BATCH,
    SUBMIT_MANY_BYTES,
    BatchItem,
    LogsRequest,
    SessionListRequest,
    SessionPage,
    SessionQuery,
    SessionView,
    SubmitManyRequest,
    SubmitRequest,
    new_session_id,
)
from fleet.bus.settings import TlsSettings
from fleet.errors import FleetError, InvalidRequest, ProtocolError, ServerUnavailable
from fleet.retry import Backoff, call_retrying
from fleet.sessions.coalesce import SubmitCoalescer

__all__ = ["Client", "SyncClient", "SessionPage", "SessionView"]

ALL_TENANTS = "_all"
DEFAULT_URL = "nats://127.0.0.1:4222"
POLL_S = 30.0  # one long-poll of wait / logs
SUBMIT_TIMEOUT_S = 5.0  # a stored session is answered in milliseconds: no answer by then, and it is sent again
FAILOVER_S = 15.0  # how long a request is sent again while no dispatcher answers (a fail-over takes ~3 s)
FAILOVER_BACKOFF = Backoff(0.1, 0.4, floor=0.5)  # between those requests: short, a new leader answers at once


def _failover(exc: BaseException) -> bool:
    """Worth sending again: nobody answered (a fail-over), or the server said "again"; not a refusal."""
    return isinstance(exc, FleetError) and (isinstance(exc, ServerUnavailable) or exc.retryable)
T = TypeVar("T")


def tenant_of_creds(creds: str | None) -> str | None:
    """The tenant a submitter identity is scoped to (its JWT's `tenant:` tag), else None."""
    if not creds:
        return None
    from fleet.bus.trust import read_creds  # nkeys only for those who use creds

    tags = (read_creds(creds).claims.get("nats") or {}).get("tags") or []
    return next((t.split(":", 1)[1] for t in tags if isinstance(t, str) and t.startswith("tenant:")), None)


def _view(data: Any) -> SessionView:
    try:
        return SessionView.model_validate(data)
    except ValueError as exc:
        raise ProtocolError(f"malformed session from the fleet server: {exc}") from exc


async def list_sessions(bus: Bus, tenant: str = ALL_TENANTS, *, project: str | None = None, phase: str | None = None,
                        limit: int = 1000, every: bool = False) -> SessionPage:
    """Sessions of `tenant`, oldest first: the newest `limit`, or with `every` all that match, over an open
    connection, in as many requests as it takes (a reply holds at most 512 KiB: each page's `next` is followed).
    The page returned says how many match (`total`) and whether these are all of them (`truncated`). What
    `Client.list_page` and the reconciler's plan (every queued session, fleet.reconciler.operation) use."""
    got: list[SessionView] = []
    after: str | None = "" if every else None
    total = 0
    while True:
        want = LIST_MAX if every else limit - len(got)
        data = await call(bus, subjects.api_sessions(tenant, "list"), SessionListRequest(
            project=project, phase=phase, limit=want, after=after))  # type: ignore[arg-type]
        try:
            page = SessionPage.model_validate(data)
        except ValueError as exc:
            raise ProtocolError(f"malformed session list from the fleet server: {exc}") from exc
        got += page.sessions
        total = page.total
        if page.next is None or not page.sessions or (not every and len(got) >= limit):
            break
        after = page.next
    return SessionPage(sessions=got, total=max(total, len(got)), truncated=len(got) < total,
                       next=page.next if not every else None)


class Client:
    """The async client. `async with Client(url, creds=…) as c:` or `Client.from_env()`."""

    def __init__(self, url: str = DEFAULT_URL, *, creds: str | None = None, tls: TlsSettings | None = None,
                 tenant: str | None = None, connect_timeout: float = 3.0) -> None:
        self.url, self.creds, self.tls, self.connect_timeout = url, creds, tls, connect_timeout
        self.tenant = tenant or tenant_of_creds(creds) or ALL_TENANTS
        self.bus: Bus | None = None
        #: concurrent submits of this client, sent together (fleet.sessions.coalesce)
        self.submits = SubmitCoalescer(self._bus, self.tenant, self._submit_one, _view, SUBMIT_TIMEOUT_S)

    @classmethod
    def from_env(cls, **kw: Any) -> Client:
        return cls(os.environ.get("FLEET_NATS_URL", DEFAULT_URL), creds=os.environ.get("FLEET_NATS_CREDS"), **kw)

    async def connect(self) -> Client:
        """Connect (again, when the connection closed for good: NATS was away longer than its reconnects last)."""
        if self.bus is not None and self.bus.nc.is_closed:
            self.bus = None
        if self.bus is None:
            self.bus = await connect(self.url, creds=self.creds, tls=self.tls, connect_timeout=self.connect_timeout,
                                     name="fleet-client")
        return self

    async def _bus(self) -> Bus:
        await self.connect()
        assert self.bus is not None
        return self.bus

    async def close(self) -> None:
        await self.submits.close()
        if self.bus is not None:
            await self.bus.close()
            self.bus = None

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, verb: str, message: Any, *, timeout: float = 10.0) -> Any:
        """One request to the session API. Every request is idempotent (a submit carries the session ID the client
        chose), so one that got no answer (no dispatcher for a moment, or one that died holding the request) is
        sent again until FAILOVER_S passed; errors the server answered with are not."""
        subject = subjects.api_sessions(self.tenant, verb)

        async def once() -> Any:  # (its own connection each time: a closed one is replaced)
            return await call(await self._bus(), subject, message, timeout=timeout, attempts=1)

        # no answer (a fail-over: the next leader answers within seconds), or "again"
        return await call_retrying(once, retry_on=_failover, within=FAILOVER_S, wait=FAILOVER_BACKOFF)

    async def submit(self, project: str, command: Sequence[str], *, labels: Sequence[str] = (),
                     model: str | None = None, priority: int = 0, timeout: float | None = None,
                     max_attempts: int = 3, env: dict[str, str] | None = None, wait: float = 0.0,
                     session_id: str | None = None) -> SessionView:
        """Submit `command` for `project`; returns once it is durably stored (queued or already assigned), or, with
        `wait` seconds, once it ended or `wait` passed. The client picks the session's ID (or takes `session_id`),
        so a submit sent again after a lost reply finds the session stored the first time instead of storing a
        second one. Submits made at the same moment (concurrent tasks, threads of a SyncClient) go to the server
        together, each answered on its own (fleet.sessions.coalesce)."""
        try:
            req = SubmitRequest(id=session_id or new_session_id(), project=project, command=list(command),
                                labels=list(labels), model=model, priority=priority, timeout_s=timeout,
                                max_attempts=max_attempts, env=dict(env or {}), wait_s=wait)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "request"
            raise InvalidRequest(f"cannot submit: {where}: {first.get('msg')}") from None
        return await self.submits.submit(req)

    async def _submit_one(self, req: SubmitRequest) -> SessionView:
        """One session, one `submit` request (with the client's retries and fail-over)."""
        return _view(await self._call("submit", req, timeout=SUBMIT_TIMEOUT_S + req.wait_s))

    async def submit_many(self, project: str, commands: Sequence[Sequence[str]], *, labels: Sequence[str] = (),
                          model: str | None = None, priority: int = 0, timeout: float | None = None,
                          max_attempts: int = 3, env: dict[str, str] | None = None) -> list[SessionView]:
        """Submit one session per command of `commands` for `project`, all with the same options, in one request;
        returns (in order) once every one is durably stored (queued or already assigned). At most
        MAX_SUBMIT_BATCH sessions and SUBMIT_MANY_BYTES of request: a larger batch is refused here (InvalidRequest)
        before anything is sent. The IDs are the client's, so a batch sent again after a lost reply finds the
        sessions stored the first time."""
        if not commands:
            return []
        if len(commands) > MAX_SUBMIT_BATCH:
            raise InvalidRequest(f"cannot submit {len(commands)} sessions in one request: at most {MAX_SUBMIT_BATCH}",
                                 hint=f"send them in batches of up to {MAX_SUBMIT_BATCH}")
        try:
            req = SubmitManyRequest(project=project, sessions=[BatchItem(id=new_session_id(), command=list(c))
                                                               for c in commands],
                                    labels=list(labels), model=model, priority=priority, timeout_s=timeout,
                                    max_attempts=max_attempts, env=dict(env or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "request"
            raise InvalidRequest(f"cannot submit: {where}: {first.get('msg')}") from None
        size = len(req.encode())
        if size > SUBMIT_MANY_BYTES:
            raise InvalidRequest(f"cannot submit: the batch is {size} bytes, at most {SUBMIT_MANY_BYTES} in one request",
                                 hint="send fewer sessions (or shorter commands) per request")
        data = await self._call("submit_many", req, timeout=SUBMIT_TIMEOUT_S + len(commands) / 200)
        briefs = data.get("sessions") if isinstance(data, dict) else None
        if not isinstance(briefs, list) or len(briefs) != len(req.sessions):
            raise ProtocolError("malformed submit_many reply from the fleet server")
        shared = {"project": project, "labels": sorted(set(labels)), "model": model, "priority": priority,
                  "timeout_s": timeout, "max_attempts": max_attempts, "env": sorted(env or {})}
        out = []
        for item, brief in zip(req.sessions, briefs, strict=True):
            if not isinstance(brief, dict) or brief.get("id") != item.id:
                raise ProtocolError("malformed submit_many reply from the fleet server")
            out.append(_view({**shared, "command": item.command, **{k: v for k, v in brief.items() if v is not None}}))
        return out

    async def get(self, session_id: str) -> SessionView:
        return _view(await self._call("get", SessionQuery(id=session_id)))

    async def cancel(self, session_id: str) -> SessionView:
        return _view(await self._call("cancel", SessionQuery(id=session_id)))

    async def list(self, *, project: str | None = None, phase: str | None = None, limit: int = 1000,
                   every: bool = False) -> list[SessionView]:
        """The newest `limit` sessions (or with `every`, all of them), oldest first; `list_page` also says how many
        match and whether these are all."""
        return (await self.list_page(project=project, phase=phase, limit=limit, every=every)).sessions

    async def list_page(self, *, project: str | None = None, phase: str | None = None, limit: int = 1000,
                        every: bool = False) -> SessionPage:
        await self.connect()
        assert self.bus is not None
        return await list_sessions(self.bus, self.tenant, project=project, phase=phase, limit=limit, every=every)

    async def wait(self, session_id: str, timeout: float | None = None) -> SessionView:
        """The session once it is final (succeeded, failed, cancelled, timed_out), or as it is after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            asked = time.monotonic()
            view = _view(await self._call("wait", SessionQuery(id=session_id, wait_s=left), timeout=left + 10.0))
            if view.final or (deadline is not None and time.monotonic() >= deadline):
                return view
            if time.monotonic() - asked < min(left, 0.5):  # answered at once (the server holds enough waits): pause
                await asyncio.sleep(0.5)

    async def logs(self, session_id: str, *, follow: bool = False, offset: int = 0) -> AsyncIterator[str]:
        """The session's output (what the server still holds of it), and with `follow`, the rest as it comes."""
        while True:
            asked = time.monotonic()
            data = await self._call("logs", LogsRequest(id=session_id, offset=offset, wait_s=POLL_S if follow else 0),
                                    timeout=POLL_S + 10.0)
            text = data.get("text") or ""
            if data.get("offset", offset) > offset:
                yield f"\n[… {data['offset'] - offset} bytes of earlier output are gone …]\n"
            if text:
                yield text
            offset = int(data.get("offset", offset)) + len(text.encode())
            if data.get("end") or not follow:
                return
            if not text and time.monotonic() - asked < 0.5:  # answered at once with nothing new: pause
                await asyncio.sleep(0.5)


class SyncClient:
    """The same, for code without an event loop: each call runs on a loop of the client's own thread."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._client = Client(*args, **kw)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet-client", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, **kw: Any) -> SyncClient:
        return cls(os.environ.get("FLEET_NATS_URL", DEFAULT_URL), creds=os.environ.get("FLEET_NATS_CREDS"), **kw)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        self._run(self._client.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def submit(self, project: str, command: Sequence[str], **kw: Any) -> SessionView:
        return self._run(self._client.submit(project, command, **kw))

    def submit_many(self, project: str, commands: Sequence[Sequence[str]], **kw: Any) -> list[SessionView]:
        return self._run(self._client.submit_many(project, commands, **kw))

    def get(self, session_id: str) -> SessionView:
        return self._run(self._client.get(session_id))

    def cancel(self, session_id: str) -> SessionView:
        return self._run(self._client.cancel(session_id))

    def list(self, **kw: Any) -> list[SessionView]:
        return self._run(self._client.list(**kw))

    def list_page(self, **kw: Any) -> SessionPage:
        return self._run(self._client.list_page(**kw))

    def wait(self, session_id: str, timeout: float | None = None) -> SessionView:
        return self._run(self._client.wait(session_id, timeout))

    def logs(self, session_id: str, *, follow: bool = False) -> Iterator[str]:
        agen = self._client.logs(session_id, follow=follow)

        async def step() -> str | None:
            try:
                return await agen.__anext__()
            except StopAsyncIteration:
                return None

        while (text := self._run(step())) is not None:
            yield text

