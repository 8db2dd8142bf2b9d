"""Per-host rate limits: what one host may make `fleet server` do, whatever it sends.

NATS lets a host publish on its own subjects as fast as it likes, and core NATS has no per-user rate limit. A host
that floods its heartbeat or register subject must not take the server's time from other hosts, so what goes
beyond a host's budget is dropped at the first look (a dictionary lookup and two float operations, before parsing,
before a handler or a task): the flood costs the server little more than reading it. Used by the host registry
(heartbeats) and the registration handler (fleet.service.api). Synchronous and single-threaded; tested in
tests/unit/test_ratelimit.py.
"""

from __future__ import annotations

import time


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; `take()` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PerHost:
    """One TokenBucket per key (a machine ID), made on first use. At most `max_keys` are kept: past that, the
    buckets that are full again (their hosts have been quiet) are forgotten, so memory stays bounded."""

    def __init__(self, rate: float, burst: float, max_keys: int = 200_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: dict[str, TokenBucket] = {}
        self.dropped = 0

    def take(self, key: str, now: float | None = None) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                self._prune(time.monotonic() if now is None else now)
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        if bucket.take(now):
            return True
        self.dropped += 1
        return False

    def _prune(self, now: float) -> None:
        full = [k for k, b in self.buckets.items() if b.tokens + max(0.0, now - b.at) * b.rate >= b.burst]
        for k in full:
            del self.buckets[k]
        if len(self.buckets) >= self.max_keys:  # everyone is busy: start over rather than grow without bound
            self.buckets.clear()
