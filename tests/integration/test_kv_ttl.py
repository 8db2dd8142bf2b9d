"""Values with a TTL of their own in a KV bucket (fleet.bus.kv.Store.update(ttl=…), allow_message_ttls): how the
sessions bucket lets finished sessions expire while sessions still running or waiting stay. Against a real
nats-server, including a bucket made the way an older nats-py made them (no per-message TTLs), which
`allow_message_ttls` turns them on for."""

from __future__ import annotations

import asyncio
import time

import nats.js.api
import pytest

from fleet.bus.connection import connect
from fleet.bus.kv import allow_message_ttls, open_store
from fleet.errors import Conflict, FleetError


def test_a_value_with_a_ttl_expires_and_one_without_stays_in_an_upgraded_bucket(nats_server) -> None:
    async def run() -> tuple[str, bool, bool, bool]:
        async with await connect(nats_server.url) as bus:
            await bus.js.add_stream(nats.js.api.StreamConfig(  # as older clients created KV buckets
                name="KV_ttl-test", subjects=["$KV.ttl-test.>"], max_msgs_per_subject=1, allow_rollup_hdrs=True,
                deny_delete=True, discard=nats.js.api.DiscardPolicy.NEW, allow_direct=True,
                storage=nats.js.api.StorageType.FILE))
            store = await open_store(bus, "ttl-test", create=False)
            short = await store.create("short", b"1")
            keep = await store.create("keep", b"1")
            try:
                await store.update("short", b"2", last=short, ttl=1)
                refused = ""
            except FleetError as exc:  # nats-server: per-message TTL is disabled on this stream
                refused = str(exc)
            await allow_message_ttls(store)
            await allow_message_ttls(store)  # idempotent
            with pytest.raises(Conflict):
                await store.update("short", b"2", last=short + 100, ttl=1)
            await store.update("short", b"2", last=short, ttl=1)
            await store.update("keep", b"2", last=keep)
            there_at_first = await store.get("short") is not None
            deadline = time.monotonic() + 10
            while await store.get("short") is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return refused, there_at_first, await store.get("short") is None, await store.get("keep") is not None

    refused, there_at_first, expired, kept = asyncio.run(run())
    assert refused, "a TTL on a bucket that does not allow them was accepted: the upgrade test tests nothing"
    assert there_at_first and expired and kept
