"""Seeding a KV bucket for a bench: many records written fast, and proven to have landed.

Used by bench/plan.py (100k host records) and bench/heartbeats.py (10k). Writes go out with JetStream
`publish_async` in a bounded window (at most `window` acks outstanding, each with a deadline), so the bench never
times out its own writes by queueing more than the server acknowledges; what was not acknowledged is written
again with a smaller window; then the bucket is read back (fleet.bus.kv.Store.snapshot) and anything missing or
different is written again. A bench that cannot seed says so (SystemExit), never reports a figure measured on
a partial registry.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from fleet.bus.connection import connect
from fleet.bus.kv import open_store

WINDOW = 512  # publish_async acks outstanding at most
ACK_TIMEOUT = 20.0  # seconds an ack may take before its record is written again
ROUNDS = 5  # write rounds per check (what was not acknowledged is retried)
CHECKS = 3  # read-backs of the bucket (what is missing is written again)


async def publish_window(js: Any, subject_prefix: str, items: dict[str, bytes], window: int,
                         ack_timeout: float) -> set[str]:
    """Publish every item with publish_async, at most `window` unacknowledged at a time; returns the keys whose
    ack did not come within `ack_timeout` or came back as an error (to be retried)."""
    sem = asyncio.Semaphore(window)
    futures: dict[str, asyncio.Future] = {}
    unsent: list[str] = []
    keys = list(items)
    for n, key in enumerate(keys):
        try:
            await asyncio.wait_for(sem.acquire(), ack_timeout)
        except TimeoutError:  # no ack for a whole timeout: stop here, the rest goes in the next round
            unsent = keys[n:]
            break
        fut = await js.publish_async(subject_prefix + key, items[key])
        fut.add_done_callback(lambda _f: sem.release())
        futures[key] = fut
    if futures:
        await asyncio.wait(list(futures.values()), timeout=ack_timeout)
    failed = set(unsent)
    for key, fut in futures.items():
        if not fut.done():
            fut.cancel()
            failed.add(key)
        elif fut.cancelled() or fut.exception() is not None:
            failed.add(key)
    return failed


async def seed_bucket(url: str, bucket: str, records: dict[str, bytes], *, window: int = WINDOW,
                      ack_timeout: float = ACK_TIMEOUT) -> dict[str, Any]:
    """Write `records` (key -> value) into KV bucket `bucket` (created if missing) and check that the bucket then
    holds exactly them. Returns {"seed_s": seconds, "seed_retried": records written more than once}."""
    start = time.perf_counter()
    retried = 0
    missing: dict[str, bytes] = {}
    async with await connect(url, connect_timeout=5) as bus:
        store = await open_store(bus, bucket)
        prefix = f"$KV.{bucket}."
        todo = dict(records)
        for check in range(CHECKS):
            size = window
            for _ in range(ROUNDS):
                failed = await publish_window(bus.js, prefix, todo, size, ack_timeout)
                if not failed:
                    break
                retried += len(failed)
                print(f"  seeding {bucket}: {len(failed)} of {len(todo)} writes not acknowledged; retrying",
                      file=sys.stderr)
                todo = {k: records[k] for k in failed}
                size = max(16, size // 2)
                await asyncio.sleep(0.5)
            landed = {e.key: e.value for e in await store.snapshot(idle_timeout=30)}
            extra = set(landed) - set(records)
            if extra:
                raise SystemExit(f"seeding {bucket}: it holds {len(extra)} records the bench did not write")
            missing = {k: v for k, v in records.items() if landed.get(k) != v}
            if not missing:
                break
            print(f"  seeding {bucket}: {len(missing)} of {len(records)} records missing after the writes "
                  f"(check {check + 1}); writing them again", file=sys.stderr)
            retried += len(missing)
            todo = missing
        if missing:
            raise SystemExit(f"seeding {bucket}: {len(missing)} of {len(records)} records never landed")
    return {"seed_s": round(time.perf_counter() - start, 2), "seed_retried": retried}
