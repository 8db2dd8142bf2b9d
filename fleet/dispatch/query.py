"""The query side of dispatch: finding and listing sessions, waiting for them to end, their output buffers and
long-polled logs. Reads the session store (fleet.dispatch.store); writes nothing to KV.

Used by the session API (fleet.dispatch.api: get, list, wait, logs) and by the dispatcher (fleet.dispatch.dispatcher),
which hands it the hosts' output chunks (`on_output`) and wakes a session's waiters when it ends or the leader
steps down (`wake`). A tenant sees only its own sessions (`_all`: every tenant's, for admin and viewer identities).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from fleet.bus.messages import MAX_OUTPUT_TAIL, OutputChunk, SessionRecord
from fleet.dispatch.store import SessionState, SessionStore
from fleet.errors import InvalidRequest, NotFound

ALL_TENANTS = "_all"  # the tenant token of the session API for identities that see every tenant (admin, viewer)


def public(record: SessionRecord) -> dict[str, Any]:
    """A session as the API shows it: the environment's names, never its values."""
    data = record.model_dump(mode="json")
    data["env"] = sorted(record.env)
    return data


async def _until(fut: asyncio.Future[None], timeout: float) -> None:
    """Until `fut` is answered (wake) or `timeout` passed: one timer on the future itself, not asyncio.wait_for's
    second future and callbacks (every submit that waits for its session goes through here)."""
    handle = asyncio.get_running_loop().call_later(timeout, _expire, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def order(st: SessionState) -> tuple[float, str]:
    """Lists are ordered by when the leader stored a session, then its ID: an ID's time prefix is the client's
    choice (one from the future would otherwise stay "the newest" in every list)."""
    return (st.record.submitted_at, st.record.id)


def cursor(st: SessionState) -> str:
    """The cursor of a list that continues after `st` (a SessionPage's `next`)."""
    return f"{st.record.submitted_at!r}_{st.record.id}"


def parse_cursor(text: str) -> tuple[float, str]:
    ts, _, sid = text.partition("_")
    try:
        at = float(ts)
    except ValueError:
        at = math.nan
    if not math.isfinite(at) or len(sid) != 20 or any(c not in "0123456789abcdef" for c in sid):
        raise InvalidRequest(f"malformed list cursor {text[:64]!r}", hint="pass the `next` of the previous page")
    return at, sid


def wake(st: SessionState) -> None:
    """Answer everyone who waits for this session (to end, or for more output)."""
    for fut in st.waiters + st.log_waiters:
        if not fut.done():
            fut.set_result(None)
    st.waiters, st.log_waiters = [], []


class SessionQueries:
    def __init__(self, store: SessionStore, leading: Callable[[], bool], metrics: Counter[str]) -> None:
        self.store = store
        self.leading = leading
        self.metrics = metrics

    def find(self, tenant: str, ident: str) -> SessionState | None:
        """A session of `tenant` by ID or unique prefix, in memory (None if unknown here)."""
        ident = ident.strip().lower()
        if not ident or len(ident) > 20 or any(c not in "0123456789abcdef" for c in ident):
            raise InvalidRequest(f"malformed session ID {ident[:24]!r}", hint="`fleet sessions list` shows them")
        exact = self.store.known(ident)
        if exact is not None and (tenant == ALL_TENANTS or exact.record.tenant == tenant):
            return exact
        matches = [st for pool in (self.store.sessions, self.store.finished) for sid, st in pool.items()
                   if sid.startswith(ident) and (tenant == ALL_TENANTS or st.record.tenant == tenant)]
        if len(matches) > 1:
            raise InvalidRequest(f"session ID prefix {ident} matches {len(matches)} sessions",
                                 hint="pass a longer prefix")
        return matches[0] if matches else None

    async def get(self, tenant: str, ident: str) -> SessionState:
        st = self.find(tenant, ident)
        if st is not None:
            return st
        if len(ident) == 20:  # an old session no longer in memory: the bucket has every session
            stored = await self.store.read(ident)
            if stored is not None and tenant in (ALL_TENANTS, stored.record.tenant):
                return stored
        raise NotFound(f"no session {ident}", hint="`fleet sessions list` shows them")

    def listing(self, tenant: str, project: str | None, phase: str | None) -> list[SessionState]:
        """Every session of `tenant` in memory that matches, oldest first (see `order`)."""
        out = [st for pool in (self.store.sessions, self.store.finished) for st in pool.values()
               if (tenant == ALL_TENANTS or st.record.tenant == tenant)
               and (project is None or st.record.project == project) and (phase is None or st.record.phase == phase)]
        out.sort(key=order)
        return out

    def page(self, tenant: str, project: str | None, phase: str | None, limit: int,
             after: str | None) -> tuple[list[SessionState], int, int]:
        """(the sessions of one list request, from its start on, at most `limit`; how many match; the index of the
        first): without `after` the newest `limit`, with it those after that cursor (`cursor`)."""
        sessions = self.listing(tenant, project, phase)
        if after is None:
            start = max(0, len(sessions) - limit)
        elif after == "":
            start = 0
        else:
            start = bisect.bisect_right([order(st) for st in sessions], parse_cursor(after))
        return sessions[start:start + limit], len(sessions), start

    async def wait(self, st: SessionState, timeout: float) -> None:
        """Until the session is final or `timeout` passes."""
        if st.record.final or timeout <= 0 or not self.leading():
            return
        fut = asyncio.get_running_loop().create_future()
        st.waiters.append(fut)
        await _until(fut, timeout)

    async def wait_each(self, states: list[SessionState], timeout: float, ended: Callable[[int], None]) -> list[int]:
        """Until every one of `states` is final or `timeout` passes, with one future per session and one timer for
        all (no task each: the waits of a submit batch). `ended(k)` is called as `states[k]` ends (or is woken by a
        lost lead); returns the indices of those that did not end in time, for which it is never called."""
        if timeout <= 0 or not self.leading():
            return list(range(len(states)))
        loop = asyncio.get_running_loop()
        pending = set(range(len(states)))
        every: asyncio.Future[None] = loop.create_future()

        def woken(k: int, _: asyncio.Future[None]) -> None:
            if k in pending:
                pending.discard(k)
                ended(k)
                if not pending and not every.done():
                    every.set_result(None)

        for k, st in enumerate(states):
            if st.record.final:
                woken(k, every)
            else:
                fut: asyncio.Future[None] = loop.create_future()
                fut.add_done_callback(functools.partial(woken, k))
                st.waiters.append(fut)
        try:
            if pending:
                await _until(every, timeout)
        finally:
            late = sorted(pending)
            pending.clear()  # a session that ends from now on is not answered here
        return late

    async def logs(self, st: SessionState, offset: int, wait_s: float) -> tuple[int, str, bool]:
        """(offset of the text returned, the text from `offset` on as far as it is known, whether it is the end)."""
        if st.record.final and not st.output:
            text = st.record.output_tail
            return 0, text[offset:] if offset < len(text.encode()) else "", True
        if offset >= st.output_end and not st.record.final and wait_s > 0 and self.leading():
            fut = asyncio.get_running_loop().create_future()
            st.log_waiters.append(fut)
            await _until(fut, wait_s)
        start = max(offset, st.output_start)
        data = bytes(st.output[start - st.output_start:])
        return start, data.decode("utf-8", "replace"), st.record.final

    def on_output(self, machine_id: str, chunk: OutputChunk) -> None:
        """A chunk of a session's output from the host it is assigned to, under its current fencing token (any
        other is dropped): appended to the session's buffer (bounded), gaps marked, repeats cut."""
        st = self.store.sessions.get(chunk.session)
        if st is None or st.record.host != machine_id or st.fence != chunk.fence:
            self.metrics["stale_output"] += 1
            return
        data = chunk.data.encode()
        if chunk.offset > st.output_end:  # a gap (a chunk was lost): say so in the output
            st.output += f"\n[… {chunk.offset - st.output_end} bytes lost …]\n".encode()
        elif chunk.offset < st.output_end:  # a chunk sent again: keep only what is new
            data = data[st.output_end - chunk.offset:]
        st.output += data
        if len(st.output) > MAX_OUTPUT_TAIL * 4:
            drop = len(st.output) - MAX_OUTPUT_TAIL * 2
            del st.output[:drop]
            st.output_start += drop
        for fut in st.log_waiters:
            if not fut.done():
                fut.set_result(None)
        st.log_waiters = []
