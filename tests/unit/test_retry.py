"""fleet.retry: the backoff's bounds, and what the retry controllers retry, how often, and what they raise."""

from __future__ import annotations

import asyncio
import random

import pytest

from fleet.errors import Conflict, InvalidRequest, TransientError
from fleet.retry import Backoff, call_retrying, retrying, retrying_sync


def test_backoff_doubles_up_to_its_cap_and_jitters_within_floor_and_ceiling() -> None:
    b = Backoff(0.1, 1.0, floor=0.5, rng=random.Random(7))
    assert [b.ceiling(n) for n in (1, 2, 3, 4, 5, 50, 10_000)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    delays = [b.delay(n) for n in range(1, 200) for _ in range(5)]
    assert all(0.5 * b.ceiling(n) <= d <= b.ceiling(n) for n, d in zip(
        [n for n in range(1, 200) for _ in range(5)], delays, strict=True))
    assert len(set(delays)) > 100  # jittered, not one fixed value
    with pytest.raises(ValueError):
        Backoff(0.5, 0.1)
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0, floor=1.5)


def test_async_retrying_retries_what_it_accepts_and_raises_the_last_error_itself() -> None:
    calls: list[int] = []
    waits: list[tuple[int, str]] = []

    async def scenario() -> str:
        async for attempt in retrying(retry_on=Conflict, attempts=4, wait=Backoff(0.001, 0.001),
                                      on_retry=lambda n, exc, d: waits.append((n, str(exc)))):
            with attempt:
                calls.append(1)
                if len(calls) < 3:
                    raise Conflict(f"lost {len(calls)}")
                return "won"
        raise AssertionError("not reached")

    assert asyncio.run(scenario()) == "won"
    assert len(calls) == 3 and waits == [(1, "lost 1"), (2, "lost 2")]

    async def always() -> None:
        raise Conflict("lost again")

    with pytest.raises(Conflict, match="lost again"):  # the caller's own error, not tenacity's RetryError
        asyncio.run(retrying(retry_on=Conflict, attempts=3, wait=Backoff(0.001, 0.001))(always))


def test_errors_it_does_not_accept_and_cancellations_leave_at_once() -> None:
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise InvalidRequest("bad")

    with pytest.raises(InvalidRequest):
        asyncio.run(retrying(retry_on=lambda e: getattr(e, "retryable", False), attempts=5,
                             wait=Backoff(0.001, 0.001))(refused))
    assert calls == 1

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    calls = 0

    async def scenario() -> None:
        with pytest.raises(asyncio.CancelledError):
            await retrying(retry_on=BaseException, attempts=5, wait=Backoff(0.001, 0.001))(cancelled)

    asyncio.run(scenario())
    assert calls == 1


def test_sync_retrying_uses_the_given_sleep_and_stops_after_its_attempts() -> None:
    slept: list[float] = []
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("503")

    with pytest.raises(TransientError, match="503"):
        retrying_sync(retry_on=TransientError, attempts=4, wait=Backoff(1.0, 2.0, floor=1.0), sleep=slept.append)(flaky)
    assert calls == 4 and slept == [1.0, 2.0, 2.0]


def test_the_ci_api_backs_off_honours_retry_after_and_refuses_a_404_at_once() -> None:
    import httpx

    from fleet.cli.ci_providers import Api
    from fleet.errors import FleetError

    def api(status: int, headers: dict[str, str], slept: list[float]) -> Api:
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(status, headers=headers, json={"message": "nope"})
        return Api("GitHub", "https://api.example.test", {}, "tok", sleep=slept.append,
                   transport=httpx.MockTransport(answer))

    slept: list[float] = []
    with pytest.raises(TransientError, match=r"kept failing \(5 attempts\).*HTTP 502"):
        api(502, {}, slept).request("GET", "/x", what="the comments")
    assert slept == [0.5, 1.0, 2.0, 4.0]

    slept = []
    with pytest.raises(TransientError):
        api(429, {"Retry-After": "7"}, slept).request("GET", "/x")
    assert slept == [7.0] * 4

    slept = []
    with pytest.raises(TransientError):
        api(503, {"Retry-After": "3600"}, slept).request("GET", "/x")
    assert slept == [60.0] * 4  # capped

    slept = []
    with pytest.raises(FleetError) as refused:
        api(404, {}, slept).request("GET", "/x", what="the comments")
    assert not isinstance(refused.value, TransientError) and slept == []


def test_call_retrying_makes_the_same_attempts_and_waits_as_the_controller() -> None:
    """The bare first attempt must not change what a caller sees: attempts counted from 1, the backoff's
    exponent continuing where the first failure left it, the last error raised itself."""
    seen: list[tuple[int, str, float]] = []
    calls: list[int] = []

    async def flaky(until: int) -> str:
        calls.append(1)
        if len(calls) < until:
            raise Conflict(f"lost {len(calls)}")
        return "won"

    wait = Backoff(0.001, 0.004)  # ceilings 0.001, 0.002, 0.004, 0.004
    got = asyncio.run(call_retrying(flaky, 4, retry_on=Conflict, attempts=5, wait=wait,
                                    on_retry=lambda n, exc, d: seen.append((n, str(exc), d))))
    assert got == "won" and len(calls) == 4
    assert [(n, m) for n, m, _ in seen] == [(1, "lost 1"), (2, "lost 2"), (3, "lost 3")]
    assert [d <= c for (_, _, d), c in zip(seen, (0.001, 0.002, 0.004), strict=True)] == [True] * 3
    assert wait.after(2).ceiling(1) == wait.ceiling(3)

    calls.clear()
    with pytest.raises(Conflict, match="lost 3"):  # attempts bound the whole call, the first one included
        asyncio.run(call_retrying(flaky, 99, retry_on=Conflict, attempts=3, wait=Backoff(0.001, 0.001)))
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(Conflict, match="lost 1"):  # one attempt: no retry at all
        asyncio.run(call_retrying(flaky, 99, retry_on=Conflict, attempts=1, wait=Backoff(0.001, 0.001)))
    assert len(calls) == 1

    async def refused() -> None:
        calls.append(1)
        raise InvalidRequest("bad")

    calls.clear()
    with pytest.raises(InvalidRequest):  # not accepted: leaves at once
        asyncio.run(call_retrying(refused, retry_on=Conflict, attempts=5, wait=Backoff(0.001, 0.001)))
    assert len(calls) == 1
