"""loop_monitor: stalls are the loop's CPU time on late wake-ups, never a busy machine."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from gomemlimit_operator.runtime.loop_monitor import TICK, LoopMonitor


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_late_wake_up_counts_the_cpu_spent_not_the_wall_time() -> None:
    registry = CollectorRegistry()
    monitor = LoopMonitor(registry)
    monitor.observe(wall=TICK + 0.001, cpu=0.001)  # on time: not a stall
    monitor.observe(wall=0.5, cpu=0.002)  # descheduled: a 2 ms stall, not 500 ms
    monitor.observe(wall=0.2, cpu=0.15)  # our own code ran for 150 ms
    assert sample(registry, "gomemlimit_event_loop_stall_seconds_count") == 2
    assert sample(registry, "gomemlimit_event_loop_stall_seconds_bucket", le="0.005") == 1
    assert sample(registry, "gomemlimit_event_loop_stall_seconds_bucket", le="0.1") == 1
    assert sample(registry, "gomemlimit_event_loop_longest_stall_seconds") == 0.15


def test_blocking_the_loop_is_measured() -> None:
    registry = CollectorRegistry()
    monitor = LoopMonitor(registry)

    async def main() -> None:
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.05)
        end = time.thread_time() + 0.12
        while time.thread_time() < end:  # 120 ms of CPU on the loop
            pass
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    longest = sample(registry, "gomemlimit_event_loop_longest_stall_seconds")
    assert 0.1 <= longest < 0.2
