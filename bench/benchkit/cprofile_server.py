"""Run `fleet server` under cProfile with a CPU clock, recording only between SIGUSR1 (start) and SIGUSR2 (stop and
write the stats), for bench/dispatch.py --cprofile FILE.

`python bench/benchkit/cprofile_server.py FILE server --nats …` runs `fleet server …` as `python -m fleet.cli.main`
would. The clock is the thread's CPU time (time.thread_time), so the figures are CPU spent, not wall time: a
process preempted in a write(2) to nats-server is not charged for the wait (a wall-clock profile, and py-spy's
samples, show such waits as the time of the call that woke nats-server). cProfile's own cost makes every call
dearer, about twice here: read the call counts per session and the proportions, not the absolute times.
Read the output with `python -m pstats FILE`.
"""

from __future__ import annotations

import contextlib
import cProfile
import runpy
import signal
import sys
import time
from typing import Any

out = sys.argv[1]
prof = cProfile.Profile(time.thread_time)


def start(*_: Any) -> None:
    prof.enable()


def stop(*_: Any) -> None:
    prof.disable()
    prof.dump_stats(out)


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = ["fleet", *sys.argv[2:]]
with contextlib.suppress(SystemExit):
    runpy.run_module("fleet.cli.main", run_name="__main__")
