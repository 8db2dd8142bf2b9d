"""The one retry helper of fleet: capped exponential backoff with jitter, built on tenacity.

`retrying(...)` (asyncio) and `retrying_sync(...)` (blocking code: the CI providers' REST calls) give a tenacity
controller that retries what `retry_on` accepts, waits `Backoff` between attempts, stops after `attempts` or once
`within` seconds passed since the first (both None: never) and then raises the last error itself (never tenacity's RetryError): the caller's own exceptions, with their
meaning, are what leaves. A cancellation (asyncio.CancelledError, a BaseException) is never retried. Use it as

    async for attempt in retrying(retry_on=Conflict, attempts=30, wait=Backoff(0.002, 0.25)):
        with attempt:
            ...            # a return here returns from the caller

or `await retrying(...)(fn, *args)`. On a hot path (every API request of a client, every submit), use
`await call_retrying(fn, *args, retry_on=..., ...)`: the same retries, but the first attempt runs bare and a tenacity
controller is built only once it failed (building one costs ~40 µs of CPU per call here: most of a client's
request, measured with py-spy in bench/dispatch.py). `Backoff(initial, cap, floor)` waits, before retry n (1-based),
`uniform(floor, 1) * min(cap, initial * 2**(n-1))`: floor 0 is "full jitter" (contended compare-and-set writes),
floor 0.5 keeps at least half of the delay (a client backing off a busy server); with `honour_retry_after`, an
error that carries `retry_after` (seconds a server asked for) waits that long instead, capped. The supervised restarts of
fleet.service.manager use the same Backoff. Used by fleet.bus (kv, api), fleet.sessions.client, fleet.agents.agent,
fleet.cli.ci_providers and fleet.service (server, manager). Imports nothing of fleet but fleet.errors' layer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class Backoff(tenacity.wait.wait_base):
    """Capped exponential backoff with jitter (see the module doc); a tenacity wait strategy."""

    def __init__(self, initial: float, cap: float, *, floor: float = 0.0, honour_retry_after: bool = False,
                 rng: random.Random | None = None, shift: int = 0) -> None:
        if not (initial > 0 and cap >= initial and 0.0 <= floor <= 1.0):
            raise ValueError(f"bad backoff: initial {initial}, cap {cap}, floor {floor}")
        self.initial = initial
        self.cap = cap
        self.floor = floor
        #: wait what the error's `retry_after` says (a server's Retry-After, in seconds), capped, when it says it
        self.honour_retry_after = honour_retry_after
        self._rng: Any = rng or random
        #: retries already made before this controller's first (call_retrying's bare first attempt)
        self.shift = shift

    def after(self, n: int) -> Backoff:
        """This backoff for a controller that starts after `n` retries were made."""
        return Backoff(self.initial, self.cap, floor=self.floor, honour_retry_after=self.honour_retry_after,
                       rng=self._rng, shift=self.shift + n)

    def ceiling(self, n: int) -> float:
        """The longest wait before retry `n` (1-based): the exponential, capped."""
        return min(self.cap, self.initial * 2 ** min(max(n + self.shift, 1) - 1, 64))

    def delay(self, n: int) -> float:
        return self._rng.uniform(self.floor, 1.0) * self.ceiling(n)

    def wait_for(self, n: int, exc: BaseException | None) -> float:
        """The wait before retry `n` after error `exc`."""
        if self.honour_retry_after and exc is not None:
            said = getattr(exc, "retry_after", None)
            if isinstance(said, int | float) and not isinstance(said, bool):
                return min(max(0.0, float(said)), self.cap)
        return self.delay(n)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        return self.wait_for(retry_state.attempt_number, exc)


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, (type, tuple)):
        types = retry_on
        return lambda exc: isinstance(exc, types)
    return retry_on


def _options(retry_on: RetryOn, attempts: int | None, within: float | None, wait: Backoff,
             on_retry: Callable[[int, BaseException, float], None] | None,
             sleep: Callable[[float], Any] | None = None) -> dict[str, Any]:
    accept = _predicate(retry_on)
    stop: Any = tenacity.stop_never
    if attempts is not None:
        stop = tenacity.stop_after_attempt(attempts)
    if within is not None:
        stop = tenacity.stop_after_delay(within) if attempts is None else stop | tenacity.stop_after_delay(within)
    options: dict[str, Any] = {
        # only Exceptions: a CancelledError or KeyboardInterrupt always leaves at once
        "retry": tenacity.retry_if_exception(lambda exc: isinstance(exc, Exception) and accept(exc)),
        "wait": wait,
        "stop": stop,
        "reraise": True,
    }
    if on_retry is not None:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            on_retry(state.attempt_number, exc, state.next_action.sleep if state.next_action else 0.0)  # type: ignore[arg-type]
        options["before_sleep"] = before_sleep
    if sleep is not None:
        options["sleep"] = sleep
    return options


def retrying(*, retry_on: RetryOn, wait: Backoff, attempts: int | None = None, within: float | None = None,
             on_retry: Callable[[int, BaseException, float], None] | None = None,
             sleep: Callable[[float], Any] | None = None) -> tenacity.AsyncRetrying:
    """An asyncio retry controller; `on_retry(attempt, error, delay)` is called before each wait (to log)."""
    return tenacity.AsyncRetrying(**_options(retry_on, attempts, within, wait, on_retry, sleep))


def retrying_sync(*, retry_on: RetryOn, wait: Backoff, attempts: int | None = None, within: float | None = None,
                  on_retry: Callable[[int, BaseException, float], None] | None = None,
                  sleep: Callable[[float], None] | None = None) -> tenacity.Retrying:
    """The blocking twin of `retrying` (`sleep` replaceable, e.g. by tests)."""
    return tenacity.Retrying(**_options(retry_on, attempts, within, wait, on_retry, sleep))


async def call_retrying(fn: Callable[..., Awaitable[T]], *args: Any, retry_on: RetryOn, wait: Backoff,
                        attempts: int | None = None, within: float | None = None,
                        on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """`await fn(*args)`, retried as `retrying(...)` would: the first attempt runs without a controller; only
    once it failed with an error `retry_on` accepts is one built, for the attempts and the time that are left."""
    accept = _predicate(retry_on)
    started = time.monotonic()
    try:
        return await fn(*args)
    except Exception as exc:
        if attempts == 1 or not accept(exc) or (within is not None and time.monotonic() - started >= within):
            raise
        delay = wait.wait_for(1, exc)
        if on_retry is not None:
            on_retry(1, exc, delay)
    await asyncio.sleep(delay)
    left = None if within is None else max(0.0, within - (time.monotonic() - started))

    def shifted(n: int, exc: BaseException, delay: float) -> None:
        assert on_retry is not None
        on_retry(n + 1, exc, delay)

    rest = retrying(retry_on=retry_on, wait=wait.after(1), attempts=None if attempts is None else attempts - 1,
                    within=left, on_retry=shifted if on_retry is not None else None)
    return await rest(fn, *args)
