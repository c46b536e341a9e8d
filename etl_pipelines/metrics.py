"""`etl-jobs metrics`: the queue metrics as a Prometheus endpoint, computed on each scrape."""

import signal
import threading
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from etl_pipelines.stats import OVERDUE_GRACE, QUANTILES, queue_stats
from etl_pipelines.store import JobStore


class QueueCollector:
    """Reads the job table when Prometheus scrapes (three indexed queries), never in between.

    Every metric is a gauge computed from the table, so every replica serves the same numbers and a
    restart resets nothing; failures are the window's count (stats.py says why, not a counter).
    """

    def __init__(self, store: JobStore, queues: Sequence[str]):
        self.store = store
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        stats = queue_stats(self.store, self.queues)
        window = f"last {stats.window_seconds / 3600:g} h"
        grace = OVERDUE_GRACE.total_seconds()
        gauges = {
            "waiting": GaugeMetricFamily(
                "etl_jobs_waiting", "Jobs queued, not started yet.", labels=["queue"]
            ),
            "oldest_waiting_seconds": GaugeMetricFamily(
                "etl_jobs_oldest_waiting_seconds", "Age of the longest-waiting queued job.", labels=["queue"]
            ),
            "running": GaugeMetricFamily("etl_jobs_running", "Jobs started, not finished.", labels=["queue"]),
            "retries_pending": GaugeMetricFamily(
                "etl_jobs_retries_pending", "Jobs waiting for an automatic retry.", labels=["queue"]
            ),
            "retries_overdue": GaugeMetricFamily(
                "etl_jobs_retries_overdue",
                f"Jobs waiting for a retry that fell due more than {grace:g} s ago: nothing queued it.",
                labels=["queue"],
            ),
            "oldest_overdue_retry_seconds": GaugeMetricFamily(
                "etl_jobs_oldest_overdue_retry_seconds",
                "How long ago the earliest pending retry fell due (absent: none due).",
                labels=["queue"],
            ),
            "completed_last_window": GaugeMetricFamily(
                "etl_jobs_completed_recent", f"Jobs completed, {window}.", labels=["queue"]
            ),
            "failed_last_window": GaugeMetricFamily(
                "etl_jobs_failed_recent", f"Jobs failed for good, {window}.", labels=["queue"]
            ),
        }
        to_start = GaugeMetricFamily(
            "etl_jobs_time_to_start_seconds",
            f"Dispatch to first start, jobs started {window} (nearest-rank quantile).",
            labels=["queue", "quantile"],
        )
        for queue in stats.queues:
            for name, gauge in gauges.items():
                value = getattr(queue, name)
                if value is not None:
                    gauge.add_metric([queue.queue], value)
            for q in QUANTILES:
                value = queue.time_to_start[str(q)]
                if value is not None:
                    to_start.add_metric([queue.queue, str(q)], value)
        yield from gauges.values()
        yield to_start


def serve(
    store: JobStore, queues: Sequence[str], host: str, port: int, echo: Callable[[str], None] = print
) -> None:
    """Serve /metrics until SIGINT or SIGTERM."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(store, queues))
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    echo(f"serving queue metrics on http://{host}:{port}/metrics")
    try:
        stop.wait()
    finally:
        server.shutdown()
        thread.join(5)
