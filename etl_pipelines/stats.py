"""Queue metrics from the job table: what Dagster OSS does not show per queue.

Three indexed queries, whatever the table's size: unfinished jobs grouped by queue and status,
jobs finished in the window, and jobs first started in the window (for time-to-start).
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class QueueStats:
    """One queue's numbers; time_to_start is created → first start, in seconds, per quantile."""

    queue: str
    waiting: int = 0
    oldest_waiting_seconds: float | None = None
    running: int = 0
    retries_pending: int = 0
    completed_last_window: int = 0
    failed_last_window: int = 0
    started_last_window: int = 0
    time_to_start: dict[str, float | None] = field(default_factory=lambda: {str(q): None for q in QUANTILES})


@dataclass
class Stats:
    generated_at: datetime
    window_seconds: float
    queues: list[QueueStats]

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "window_seconds": self.window_seconds,
            "queues": {q.queue: {k: v for k, v in asdict(q).items() if k != "queue"} for q in self.queues},
        }


def quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (a value that occurred), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def queue_stats(
    store: JobStore,
    queues: Sequence[str],
    now: datetime | None = None,
    window: timedelta = timedelta(hours=1),
) -> Stats:
    """Per queue (the configured ones first, then any other found): waiting, oldest waiting age,
    running, retries pending, completed/failed/started within `window`, time-to-start quantiles."""
    now = now or utcnow()
    since = now - window
    by_queue: dict[str, QueueStats] = {name: QueueStats(name) for name in queues}

    def stats_for(name: str) -> QueueStats:
        return by_queue.setdefault(name, QueueStats(name))

    unfinished = (
        sa.select(JobRecord.queue, JobRecord.status, sa.func.count(), sa.func.min(JobRecord.queued_at))
        .where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.STARTED, JobStatus.WAITING_RETRY]))
        .group_by(JobRecord.queue, JobRecord.status)
    )
    finished = (
        sa.select(JobRecord.queue, JobRecord.status, sa.func.count())
        .where(JobRecord.status.in_([JobStatus.COMPLETED, JobStatus.FAILED]))
        .where(JobRecord.finished_at >= since)
        .group_by(JobRecord.queue, JobRecord.status)
    )
    started = sa.select(JobRecord.queue, JobRecord.created_at, JobRecord.started_at).where(
        JobRecord.started_at >= since
    )
    waits: dict[str, list[float]] = {}
    with store.engine.connect() as connection:
        for queue, status, count, oldest in connection.execute(unfinished):
            stats = stats_for(queue)
            if status == JobStatus.QUEUED:
                stats.waiting = count
                if oldest is not None:
                    oldest = JobRecord.queued_at.type.process_result_value(oldest, store.engine.dialect)
                    stats.oldest_waiting_seconds = round((now - oldest).total_seconds(), 3)
            elif status == JobStatus.STARTED:
                stats.running = count
            else:
                stats.retries_pending = count
        for queue, status, count in connection.execute(finished):
            if status == JobStatus.COMPLETED:
                stats_for(queue).completed_last_window = count
            else:
                stats_for(queue).failed_last_window = count
        for queue, created_at, started_at in connection.execute(started):
            if started_at is None:
                continue
            waits.setdefault(queue, []).append((started_at - created_at).total_seconds())
    for queue, values in waits.items():
        stats = stats_for(queue)
        stats.started_last_window = len(values)
        stats.time_to_start = {str(q): _round(quantile(values, q)) for q in QUANTILES}
    return Stats(generated_at=now, window_seconds=window.total_seconds(), queues=list(by_queue.values()))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
