"""fleet.service.janitor: consumers left behind on the buckets others may read are cleared away; fleet's own
readers are not touched (a real nats-server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from fleet.bus import subjects
from fleet.bus.connection import connect
from fleet.bus.kv import Informer, open_store
from fleet.service.janitor import ConsumerJanitor
from tests.conftest import wait_for_async

pytestmark = pytest.mark.integration


def test_left_behind_consumers_are_removed_and_live_readers_are_not(nats_server) -> None:
    async def scenario() -> tuple[int, int, list[str], list[str]]:
        async with await connect(nats_server.url) as bus:
            store = await open_store(bus, subjects.BUCKET_CONFIG)
            await store.put("key.a", b"1")
            seen: list[str] = []
            informer = Informer(store, lambda key, entry: seen.append(key))  # fleet's own reader: bound
            await informer.start()
            stream = f"KV_{subjects.BUCKET_CONFIG}"
            for body in ({"durable_name": "evil", "ack_policy": "none"},  # durable: outlives its creator
                         {"name": "lasting", "ack_policy": "none", "inactive_threshold": 10**18},  # pull, 31 years
                         {"ack_policy": "none", "deliver_subject": "nobody.listens"}):  # push without a subscriber
                subject = f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.evil" if "durable_name" in body else \
                    f"$JS.API.CONSUMER.CREATE.{stream}"
                reply = json.loads(await bus.request(subject, json.dumps({"stream_name": stream,
                                                                          "config": body}).encode()))
                assert "error" not in reply, reply
            janitor = ConsumerJanitor(bus)
            first = await janitor.sweep_once()  # only suspected on the first sweep
            second = await janitor.sweep_once()
            left = [i.name for i in await bus.js.consumers_info(stream)]
            await store.put("key.b", b"2")
            await wait_for_async(lambda: asyncio.sleep(0, seen), lambda keys: "key.b" in keys, 10, what="key.b read")
            await informer.stop()
            return first, second, left, seen

    first, second, left, seen = asyncio.run(scenario())
    assert (first, second) == (0, 3)
    assert len(left) == 1  # the informer's own consumer
    assert seen == ["key.a", "key.b"]  # and it still reads
