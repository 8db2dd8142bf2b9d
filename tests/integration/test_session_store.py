"""The session store (fleet.dispatch.store) and its pipelined writer (fleet.bus.kvpipe) against a real nats-server:
create once (a second create of the key is a Conflict), compare-and-set by revision (a stale revision is a Conflict
and the store reports it), a final value's TTL, many writes in flight at once each returning the revision
JetStream gave it, writes of one session folded, and no write at all without the lease."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from fleet.bus.connection import connect
from fleet.bus.kv import Store, allow_message_ttls, open_store
from fleet.bus.kvpipe import PipelinedWriter
from fleet.bus.messages import SessionRecord, new_session_id
from fleet.dispatch.store import SessionState, SessionStore
from fleet.errors import Conflict, TransientError
from tests.conftest import wait_for_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def record(sid: str) -> SessionRecord:
    now = time.time()
    return SessionRecord.model_validate({"id": sid, "tenant": "fin", "project": "app", "command": ["true"],
                                         "submitted_at": now, "history": [{"phase": "queued", "at": now}]})


def test_the_pipelined_writer_creates_once_and_compares_and_sets(nats_server) -> None:
    async def run() -> None:
        async with await connect(nats_server.url) as bus:
            store = await open_store(bus, "pipe-test", history=1)
            await allow_message_ttls(store)
            w = PipelinedWriter(store, window=8)
            rev = await w.create("k1", b"a")
            with pytest.raises(Conflict):
                await w.create("k1", b"b")
            with pytest.raises(Conflict):
                await w.update("k1", b"c", last=rev + 1000)
            rev2 = await w.update("k1", b"d", last=rev)
            assert rev2 > rev and (await store.get("k1")).value == b"d"
            # many in flight through a window of 8: each gets its own revision, all stored
            keys = [f"m{i}" for i in range(300)]
            revs = await asyncio.gather(*(w.create(k, k.encode()) for k in keys))
            assert len(set(revs)) == 300
            for k, r in zip(keys, revs, strict=True):
                assert (await store.get(k)).revision == r
            # a value with a TTL goes away; the key can be created again then
            await w.update("k1", b"e", last=rev2, ttl=1)
            await wait_for_async(lambda: store.get("k1"), lambda e: e is None, 10, what="k1 expired")
            assert await w.create("k1", b"again") > rev2
    asyncio.run(run())


def test_create_many_answers_each_in_order_and_an_unanswered_write_fails_and_frees_its_place(nats_server) -> None:
    async def run() -> None:
        async with await connect(nats_server.url) as bus:
            store = await open_store(bus, "many-test", history=1)
            w = PipelinedWriter(store, window=8)
            taken = await w.create("taken", b"x")
            keys = [f"n{i}" for i in range(40)]
            # more than the window and more than one chunk at a time; one key exists already
            out = await w.create_many([(k, k.encode()) for k in keys[:20]] + [("taken", b"y")] +
                                      [(k, k.encode()) for k in keys[20:]], at_once=6)
            assert isinstance(out[20], Conflict)
            revs = out[:20] + out[21:]
            assert all(isinstance(r, int) for r in revs) and len(set(revs)) == 40
            for k, r in zip(keys, revs, strict=True):
                assert (await store.get(k)).revision == r  # each its own revision, in the order given
            assert (await store.get("taken")).revision == taken
            # a stream that never answers (something listens, so no "no responders"): each write fails once its
            # timeout passed, and gives its place back: a window of 2 does not stay full
            hole = await bus.nc.subscribe("$KV.silent.>", cb=_ignore)
            silent = PipelinedWriter(Store(store._kv, "silent", store.js, bus), window=2, timeout=0.3)
            results = await asyncio.gather(*(silent.create(f"s{i}", b"v") for i in range(5)), return_exceptions=True)
            assert all(isinstance(r, TransientError) and "no acknowledgement" in r.message for r in results)
            assert silent._window.free == 2 and not silent._futures
            await hole.unsubscribe()
    asyncio.run(run())


async def _ignore(msg: object) -> None:
    return None


def test_the_store_fences_its_writes_and_folds_them(nats_server) -> None:
    async def run() -> None:
        async with await connect(nats_server.url) as bus:
            kv = await open_store(bus, "store-test", history=1)
            lease = {"held": True}
            conflicts: list[str] = []

            def check() -> None:
                if not lease["held"]:
                    raise TransientError("no lease")

            store = SessionStore(kv, check_lease=check, on_conflict=lambda st: conflicts.append(st.record.id),
                                 metrics=Counter())
            sid = new_session_id()
            st = SessionState(record(sid), await store.create(record(sid)))
            store.add(st)
            before = await kv.revision()

            async def change(i: int) -> None:
                st.record.reason = f"r{i}"
                await store.persist(st)

            await asyncio.gather(*(change(i) for i in range(20)))
            assert await kv.revision() - before <= 2  # folded: the first write, then one for the rest
            stored = SessionRecord.model_validate_json((await kv.get(sid)).value)
            assert stored.reason == "r19" and (await kv.get(sid)).revision == st.revision
            # someone else writes it: our next write loses the race, and the store says so
            await kv.update(sid, stored.encode(), last=st.revision)
            st.record.reason = "ours"
            with pytest.raises(Conflict):
                await store.persist(st)
            assert conflicts == [sid]
            # without the lease: nothing is written at all
            lease["held"] = False
            at = await kv.revision()
            with pytest.raises(TransientError):
                await store.create(record(new_session_id()))
            assert await kv.revision() == at
            lease["held"] = True
            states = await store.load()
            assert states[sid].revision == (await kv.get(sid)).revision  # the bucket's newer value wins
    asyncio.run(run())
