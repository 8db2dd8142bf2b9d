"""The `nats_server` fixture gives a working NATS with JetStream: pub/sub and a KV put/get round trip."""

from __future__ import annotations

import asyncio

import pytest

from fleet.bus.connection import connect
from fleet.bus.kv import open_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_pub_sub_and_kv(nats_server) -> None:
    async def scenario() -> None:
        bus = await connect(nats_server.url)
        try:
            got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def handler(msg) -> None:
                if not got.done():
                    got.set_result(msg.data)

            await bus.subscribe("fleet.v1.test", handler)
            await bus.flush()
            await bus.publish("fleet.v1.test", b"hello")
            assert await asyncio.wait_for(got, 5) == b"hello"

            store = await open_store(bus, "fleet-v1-test")
            rev = await store.put("a.b", b'{"x": 1}')
            entry = await store.get("a.b")
            assert entry is not None and entry.json() == {"x": 1} and entry.revision == rev
            assert await store.get("missing") is None
        finally:
            await bus.close()

    asyncio.run(scenario())
