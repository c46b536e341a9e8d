"""Bench-only run coordinator: the project's EtlRunCoordinator with a fractional dequeue interval.

Dagster 1.13 types `dequeue_interval_seconds` as IntSource (whole seconds), so a configuration
such as `2x2i0.25` of bench/throughput.py cannot be written into dagster.yaml. throughput.py then
names this class as the coordinator and passes the interval in BENCH_DEQUEUE_INTERVAL_SECONDS; the
daemon reads `dequeue_interval_seconds` once, when it creates its queue daemon. Everything else is
EtlRunCoordinator's. Note that Dagster's IntervalDaemon waits in 0.5 s steps
(`shutdown_event.wait(0.5)` until the interval has passed), so any interval in (0, 0.5] gives one
dequeue iteration about every max(0.5 s, iteration time).
"""

import os

from etl_pipelines.framework.coordinator import EtlRunCoordinator

INTERVAL_ENV = "BENCH_DEQUEUE_INTERVAL_SECONDS"


class BenchRunCoordinator(EtlRunCoordinator):
    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        value = os.environ.get(INTERVAL_ENV)
        return float(value) if value else super().dequeue_interval_seconds
