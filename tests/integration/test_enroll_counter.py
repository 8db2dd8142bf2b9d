"""Key use counting by compare-and-set: N concurrent enrollments never exceed max_uses (real JetStream KV)."""

from __future__ import annotations

import asyncio

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_concurrent_increments_respect_the_limit(nats_server) -> None:
    async def scenario() -> list[int | None]:
        buses = [await connect(nats_server.url) for _ in range(4)]  # four "server replicas"
        try:
            stores = [await open_store(bus, subjects.BUCKET_ENROLL) for bus in buses]
            results = await asyncio.gather(*[stores[i % 4].increment("uses.k", limit=3) for i in range(12)])
            entry = await stores[0].get("uses.k")
            assert entry is not None and int(entry.value) == 3
            return results
        finally:
            for bus in buses:
                await bus.close()

    results = asyncio.run(scenario())
    assert sorted(r for r in results if r is not None) == [1, 2, 3]
    assert results.count(None) == 9
