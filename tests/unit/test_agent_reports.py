"""fleet.agents.reports: the work events of one moment go to the dispatcher in one request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fleet.agents.reports import Reports
from fleet.bus.messages import (
    MAX_WORK_EVENTS,
    WorkEvent,
    WorkEvents,
    WorkReplies,
    WorkReply,
    decode,
    new_session_id,
)
from fleet.errors import FleetError, TransientError

MID = "5f1d0c52-0a3b-4b8e-9f43-8a0c4d6f2b11"


class AnsweringBus:
    """Answers each WorkEvents request as a dispatcher would (stale for the sessions in `stale`), or fails it."""

    def __init__(self, stale: set[str] = frozenset(), fail: bool = False) -> None:  # type: ignore[assignment]
        self.requests: list[tuple[str, list[WorkEvent]]] = []
        self.stale, self.fail = stale, fail

    async def request(self, subject: str, payload: bytes, *, timeout: float, what: str = "") -> bytes:
        events = decode(WorkEvents, payload).items
        self.requests.append((subject, events))
        if self.fail:
            raise TransientError("no dispatcher right now")
        return WorkReplies(items=[WorkReply(ok=ev.session not in self.stale, stale=ev.session in self.stale)
                                  for ev in events]).encode()


def event(sid: str) -> WorkEvent:
    return WorkEvent(session=sid, fence=3, phase="succeeded", exit_code=0, at=time.time())


def test_the_events_of_one_turn_go_in_one_request_and_each_gets_its_own_reply() -> None:
    async def go() -> None:
        bus = AnsweringBus()
        sids = [new_session_id() for _ in range(3)]
        bus.stale = {sids[1]}
        reports = Reports(bus, MID)  # type: ignore[arg-type]
        replies = await asyncio.gather(*(reports.send(event(s)) for s in sids))
        assert [(r.ok, r.stale) for r in replies] == [(True, False), (False, True), (True, False)]
        [(subject, sent)] = bus.requests
        assert subject == f"fleet.v1.work.{MID}.events" and [e.session for e in sent] == sids
        later = await reports.send(event(new_session_id()))  # another turn: another request
        assert later.ok and len(bus.requests) == 2
    asyncio.run(go())


def test_a_burst_is_cut_at_the_bound_and_a_failed_request_fails_each_of_its_events() -> None:
    async def go() -> None:
        bus = AnsweringBus()
        reports = Reports(bus, MID)  # type: ignore[arg-type]
        n = MAX_WORK_EVENTS + 5
        replies = await asyncio.gather(*(reports.send(event(new_session_id())) for _ in range(n)))
        assert all(r.ok for r in replies) and [len(ev) for _, ev in bus.requests] == [MAX_WORK_EVENTS, 5]

        failing = Reports(AnsweringBus(fail=True), MID)  # type: ignore[arg-type]
        results: list[Any] = await asyncio.gather(*(failing.send(event(new_session_id())) for _ in range(2)),
                                                  return_exceptions=True)
        assert all(isinstance(r, FleetError) for r in results)
    asyncio.run(go())


def test_an_answer_that_does_not_match_the_request_is_an_error_not_a_guess() -> None:
    class Short(AnsweringBus):
        async def request(self, subject: str, payload: bytes, *, timeout: float, what: str = "") -> bytes:
            return WorkReplies(items=[WorkReply(ok=True)]).encode()  # one answer for two events

    async def go() -> None:
        reports = Reports(Short(), MID)  # type: ignore[arg-type]
        with pytest.raises(FleetError, match="answered 1 of 2"):
            await asyncio.gather(reports.send(event(new_session_id())), reports.send(event(new_session_id())))
    asyncio.run(go())
