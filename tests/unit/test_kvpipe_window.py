"""fleet.bus.kvpipe: Window, the bound on writes in flight (an O(1) semaphore), and parse_ack, the reading of a
JetStream publish ack without a JSON parse."""

from __future__ import annotations

import asyncio

import pytest

from fleet.bus.kvpipe import Window, parse_ack


def test_the_window_lets_in_at_most_its_size_first_come_first_served_and_loses_no_place_to_a_cancel() -> None:
    async def go() -> None:
        w = Window(2)
        inside: list[int] = []
        order: list[int] = []
        gates = {i: asyncio.Event() for i in range(6)}

        async def holder(i: int) -> None:
            await w.acquire()
            try:
                order.append(i)
                inside.append(i)
                assert len(inside) <= 2
                await gates[i].wait()
            finally:
                inside.remove(i)
                w.release()

        tasks = [asyncio.create_task(holder(i)) for i in range(6)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert order == [0, 1]
        tasks[2].cancel()  # waiting: cancelled before it got in
        gates[0].set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == [0, 1, 3]  # 2 was skipped, its place went to 3
        tasks[4].cancel()
        gates[1].set()  # 1 leaves: 4 was cancelled while it waited, so the place goes to 5
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == [0, 1, 3, 5]
        gates[3].set()
        gates[5].set()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert w.free == 2 and inside == []  # every place came back
    asyncio.run(go())


@pytest.mark.parametrize(("ack", "read"), [
    (b'{"stream":"KV_fleet-v1-sessions","seq":123}', {"seq": 123}),
    (b'{"stream":"KV_s","seq":5,"duplicate":true}', {"seq": 5}),
    (b'{"stream":"KV_s","domain":"hub","seq":77}', {"seq": 77}),
    # an error ack, and anything malformed, is never read as a revision
    (b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"},"stream":"KV_s","seq":0}',
     {"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 4"}, "stream": "KV_s", "seq": 0}),
    (b'{"stream":"KV_s","error":{"code":503},"seq":9}', {"stream": "KV_s", "error": {"code": 503}, "seq": 9}),
    (b'{"stream":"KV_s","seq":}', {"error": {"code": 0, "description": "malformed ack"}}),
    (b'{"stream":"KV_s","seq":12', {"error": {"code": 0, "description": "malformed ack"}}),
    (b'{"stream":"KV_s","seq":12x}', {"error": {"code": 0, "description": "malformed ack"}}),
    (b"[1]", {"error": {"code": 0, "description": "malformed ack"}}),
    (b"", {"error": {"code": 0, "description": "malformed ack"}}),
])
def test_an_ack_is_read_as_json_would_read_it(ack: bytes, read: dict) -> None:
    assert parse_ack(ack) == read
