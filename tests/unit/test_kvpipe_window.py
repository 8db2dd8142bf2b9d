"""fleet.bus.kvpipe.Window: the bound on writes in flight (an O(1) semaphore)."""

from __future__ import annotations

import asyncio

from fleet.bus.kvpipe import Window


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
