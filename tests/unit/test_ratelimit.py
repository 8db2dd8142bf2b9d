"""fleet.hosts.ratelimit: per-host token buckets (heartbeats, registrations)."""

from __future__ import annotations

from fleet.hosts.ratelimit import PerHost, TokenBucket


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token every 0.5 s
    assert not bucket.take(0.4)  # a clock that goes back gives nothing
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_per_host_buckets_are_independent_and_bounded() -> None:
    limits = PerHost(rate=1.0, burst=2.0, max_keys=10)
    assert [limits.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limits.take("b", 0.0) and limits.dropped == 1
    for n in range(50):  # many quiet hosts: memory stays bounded
        limits.take(f"h{n}", 10.0 + n)
    assert len(limits.buckets) <= 10
