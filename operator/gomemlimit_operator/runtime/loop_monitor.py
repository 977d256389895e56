"""How long the event loop is kept busy: the webhook, the watcher and /healthz share it.

A task wakes every :data:`TICK` seconds. When a wake-up comes late, the loop thread's CPU time
since the previous wake-up (``time.thread_time``) is how long the loop was busy running code
in the meantime: a stall. Counting CPU time, not wall time, keeps a machine that is merely
busy elsewhere (the process not scheduled) from looking like a slow handler.

* ``gomemlimit_event_loop_stall_seconds``: histogram of those stalls (late wake-ups only);
* ``gomemlimit_event_loop_longest_stall_seconds``: the longest one since the process started.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["TICK", "LoopMonitor", "freeze_when"]

TICK: Final = 0.01
LATE: Final = 0.005
"""A wake-up more than this late counts as a stall."""
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopMonitor:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stalls = Histogram(
            "gomemlimit_event_loop_stall_seconds",
            "CPU time the event loop spent between two late 10 ms wake-ups of a monitor task.",
            buckets=BUCKETS,
            registry=registry,
        )
        self.longest = Gauge(
            "gomemlimit_event_loop_longest_stall_seconds",
            "The longest event-loop stall since the process started.",
            registry=registry,
        )
        self._longest = 0.0

    def observe(self, wall: float, cpu: float) -> None:
        """One interval between wake-ups: ``wall`` seconds elapsed, ``cpu`` spent on the loop."""
        if wall - TICK <= LATE:
            return
        stall = min(cpu, wall)
        self.stalls.observe(stall)
        if stall > self._longest:
            self._longest = stall
            self.longest.set(stall)

    async def run(self) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        while True:
            await asyncio.sleep(TICK)
            now_wall, now_cpu = time.perf_counter(), time.thread_time()
            self.observe(now_wall - wall, now_cpu - cpu)
            wall, cpu = now_wall, now_cpu


async def freeze_when(ready: Callable[[], bool], poll: float = 1.0) -> None:
    """Once ``ready()`` (start-up done, first listings in memory), move every object alive
    then out of the garbage collector's sight (``gc.freeze``): full collections, which run
    on the event loop, then no longer walk kopf's, the API client's and the first records'
    objects again and again (at start-up, about 166,000 objects and 70 ms per collection).
    No ``gc.collect()`` first: that would be one such stall itself; what start-up garbage
    gets frozen with the rest is a one-time, bounded cost."""
    while not ready():
        await asyncio.sleep(poll)
    gc.freeze()
