"""Bench-only: EtlRunCoordinator with a fractional dequeue interval (BENCH_DEQUEUE_INTERVAL_SECONDS).

Dagster 1.13 types `dequeue_interval_seconds` as IntSource (whole seconds); throughput.py names this
class for a configuration such as `2x2i0.25`. The daemon reads the interval once, and its
IntervalDaemon waits in 0.5 s steps: any interval in (0, 0.5] ticks every max(0.5 s, iteration).
"""

import os

from etl_pipelines.framework.coordinator import EtlRunCoordinator


class BenchRunCoordinator(EtlRunCoordinator):
    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        value = os.environ.get("BENCH_DEQUEUE_INTERVAL_SECONDS")
        return float(value) if value else super().dequeue_interval_seconds
