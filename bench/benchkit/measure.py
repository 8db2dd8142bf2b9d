"""Measuring helpers shared by the benches: closed-loop load (async and threaded), percentiles, and the CPU time
that each process of a bench spent (from /proc), so that a figure comes with where its CPU went.

Used by bench/dispatch.py. A closed loop runs `total` operations with exactly `inflight` of them outstanding at
any time (each worker starts the next operation when its previous one returned): 1 in flight measures the round
trip, 128 in flight the throughput under pipelining. Latencies are per operation, from its start to its return.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class LoopResult:
    """What one closed loop measured: operations, wall time, per-operation latencies (seconds), failures."""

    ops: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""
    done_at: list[float] = field(default_factory=list)  # when each operation returned, seconds from the start

    def rate_by_part(self, parts: int = 10) -> list[float]:
        """Operations per second in each of `parts` equal slices of the run's wall time (a rate that falls from
        slice to slice says the system slows down as it runs: state that grows, a collector, a queue)."""
        if not self.done_at or self.elapsed <= 0:
            return []
        width = self.elapsed / parts
        counts = [0] * parts
        for t in self.done_at:
            counts[min(parts - 1, int(t / width))] += 1
        return [c / width for c in counts]

    @property
    def per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def pct(self, q: float) -> float:
        """The q-th percentile (0-100) of the latencies, in seconds."""
        return percentile(self.latencies, q)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))  # ceil(q/100 * n), clamped
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


async def closed_loop(op: Callable[[int], Awaitable[object]], total: int, inflight: int) -> LoopResult:
    """Run op(0) … op(total - 1) with `inflight` outstanding at a time (asyncio). An op that raises counts as a
    failure (its latency is not recorded) and the loop goes on."""
    counter = itertools.count()
    latencies: list[float] = []
    done_at: list[float] = []
    failures: list[str] = []
    clock = time.perf_counter

    async def worker() -> None:
        while (i := next(counter)) < total:
            started = clock()
            try:
                await op(i)
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            now = clock()
            latencies.append(now - started)
            done_at.append(now - start)

    start = clock()
    await asyncio.gather(*(worker() for _ in range(min(inflight, total))))
    elapsed = clock() - start
    return LoopResult(len(latencies), elapsed, latencies, len(failures), failures[0] if failures else "", done_at)


def closed_loop_threads(op: Callable[[int], object], total: int, inflight: int) -> LoopResult:
    """The same with `inflight` threads, for blocking clients (Celery's)."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    done_at: list[float] = []
    failures: list[str] = []
    clock = time.perf_counter

    def worker() -> None:
        while True:
            with lock:
                i = next(counter)
            if i >= total:
                return
            started = clock()
            try:
                op(i)
            except Exception as exc:  # counted and reported, never hidden
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            now = clock()
            latencies.append(now - started)
            done_at.append(now - start)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(inflight, total))]
    start = clock()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = clock() - start
    return LoopResult(len(latencies), elapsed, latencies, len(failures), failures[0] if failures else "", done_at)


def cpu_times(pid: int | None = None, *, children: bool = True) -> tuple[float, float]:
    """(user, system) CPU seconds of process `pid` (None: this process), with its reaped children's when
    `children` (a Celery prefork worker's pool processes, an agent's `true` commands). (0, 0) if it is gone.
    System time is the kernel working for the process: socket writes and reads, epoll, fork and exec."""
    if pid is None or pid == os.getpid():
        own = resource.getrusage(resource.RUSAGE_SELF)
        user, system = own.ru_utime, own.ru_stime
        if children:
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            user, system = user + kids.ru_utime, system + kids.ru_stime
        return user, system
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # fields[0] is the state (field 3 of stat): utime, stime, cutime, cstime are fields 14-17
    user, system = int(fields[11]), int(fields[12])
    if children:
        user, system = user + int(fields[13]), system + int(fields[14])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def cpu_seconds(pid: int | None = None, *, children: bool = True) -> float:
    """User + system CPU seconds of process `pid` (see cpu_times)."""
    return sum(cpu_times(pid, children=children))


def descendant_pids(pid: int) -> list[int]:
    """The live descendants of `pid`, children first."""
    out, todo = [], [pid]
    while todo:
        kids = child_pids(todo.pop())
        out += kids
        todo += kids
    return out


def child_pids(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                out += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    return out


class CpuMeter:
    """CPU seconds spent by named processes (and their live and reaped children) between start() and stop():
    `spent` (user + system) and `spent_system` (the kernel's part) by name."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._before: dict[str, tuple[float, float]] = {}
        self.spent: dict[str, float] = {}
        self.spent_system: dict[str, float] = {}

    def _now(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, pids in self.pids.items():
            user = system = 0.0
            for pid in pids:
                own = pid == os.getpid()
                times = [cpu_times(pid, children=not own)]  # the bench's own: not its other children
                if not own:  # every live descendant: a sandbox slot's init is an agent's grandchild
                    times += [cpu_times(child) for child in descendant_pids(pid)]
                user += sum(t[0] for t in times)
                system += sum(t[1] for t in times)
            out[name] = (user, system)
        return out

    def start(self) -> CpuMeter:
        self._before = self._now()
        return self

    def stop(self) -> dict[str, float]:
        after = self._now()
        zero = (0.0, 0.0)
        self.spent = {n: max(0.0, sum(after[n]) - sum(self._before.get(n, zero))) for n in after}
        self.spent_system = {n: max(0.0, after[n][1] - self._before.get(n, zero)[1]) for n in after}
        return self.spent
