"""The queue numbers (stats.py) and their Prometheus families (metrics.py) on an in-memory job table:
the fast tier. The same numbers served by the real `etl-jobs metrics` are in test_dashboard."""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from etl_pipelines.metrics import QueueCollector
from etl_pipelines.stats import OVERDUE_GRACE, queue_stats
from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

QUEUES = ["high", "medium", "low", "default"]
# Every name and label users' dashboards may already query: never renamed, never relabelled.
STABLE = {
    "etl_jobs_waiting": {"queue"},
    "etl_jobs_oldest_waiting_seconds": {"queue"},
    "etl_jobs_running": {"queue"},
    "etl_jobs_retries_pending": {"queue"},
    "etl_jobs_completed_recent": {"queue"},
    "etl_jobs_failed_recent": {"queue"},
    "etl_jobs_time_to_start_seconds": {"queue", "quantile"},
}
NEW = {"etl_jobs_retries_overdue": {"queue"}, "etl_jobs_oldest_overdue_retry_seconds": {"queue"}}


def job(
    job_id: str, queue: str, status: JobStatus, now: datetime, age: float = 60, **fields: Any
) -> JobRecord:
    """A row as the lifecycle leaves it: created `age` seconds before `now`."""
    created = now - timedelta(seconds=age)
    return JobRecord(
        id=job_id,
        job_type="fibonacci",
        job_class="x",
        queue=queue,
        status=status,
        payload={},
        retry_count=0,
        max_retries=3,
        run_id=job_id,
        run_ids=[job_id],
        created_at=created,
        queued_at=created,
        updated_at=now,
        **fields,
    )


def add(store: JobStore, rows: Iterable[JobRecord]) -> None:
    with Session(store.engine) as session, session.begin():
        session.add_all(rows)


def retry(job_id: str, queue: str, now: datetime, due_in: float) -> JobRecord:
    """A job waiting for its retry, due `due_in` seconds after `now` (negative: due already)."""
    return job(
        job_id,
        queue,
        JobStatus.WAITING_RETRY,
        now,
        age=600,
        started_at=now - timedelta(seconds=590),
        error="E",
        next_retry_at=now + timedelta(seconds=due_in),
    )


def test_overdue_retries_are_counted_past_the_grace_and_aged_from_the_earliest_due() -> None:
    store = JobStore.in_memory()
    now = utcnow()
    grace = OVERDUE_GRACE.total_seconds()
    add(
        store,
        [
            retry("h1", "high", now, due_in=-300),  # missed for 5 minutes
            retry("h2", "high", now, due_in=-(grace + 1)),  # just past the grace
            retry("h3", "high", now, due_in=-(grace - 1)),  # late, within the grace: not counted
            retry("h4", "high", now, due_in=120),  # not due yet
            retry("m1", "medium", now, due_in=-5),  # due a moment ago: a sensor tick away
            retry("l1", "low", now, due_in=30),  # pending, nothing due
            job("l2", "low", JobStatus.QUEUED, now, age=30),
        ],
    )
    by_queue = {q.queue: q for q in queue_stats(store, QUEUES, now=now).queues}
    assert [q for q in by_queue] == QUEUES
    high, medium, low, default = (by_queue[q] for q in QUEUES)
    assert (high.retries_pending, high.retries_overdue, high.oldest_overdue_retry_seconds) == (4, 2, 300)
    assert (medium.retries_pending, medium.retries_overdue, medium.oldest_overdue_retry_seconds) == (1, 0, 5)
    assert (low.retries_pending, low.retries_overdue, low.oldest_overdue_retry_seconds) == (1, 0, None)
    assert (default.retries_pending, default.retries_overdue, default.oldest_overdue_retry_seconds) == (
        0,
        0,
        None,
    )
    assert low.waiting == 1 and low.oldest_waiting_seconds == 30  # the existing numbers, unchanged
    # A tighter grace (the parameter) counts the late one inside the default grace too.
    tight = queue_stats(store, QUEUES, now=now, overdue_grace=timedelta(seconds=1)).queues[0]
    assert tight.retries_overdue == 3
    # `etl-jobs stats --json` carries them beside the rest.
    data = queue_stats(store, QUEUES, now=now).to_dict()["queues"]["high"]
    assert data["retries_overdue"] == 2 and data["oldest_overdue_retry_seconds"] == 300


def test_only_waiting_retries_count_as_overdue() -> None:
    """A retry that was queued, or a job that ended, keeps its old next_retry_at: not overdue."""
    store = JobStore.in_memory()
    now = utcnow()
    past = now - timedelta(hours=1)
    add(
        store,
        [
            job("q", "high", JobStatus.QUEUED, now, next_retry_at=past),
            job("s", "high", JobStatus.STARTED, now, started_at=now, next_retry_at=past),
            job("f", "high", JobStatus.FAILED, now, started_at=now, finished_at=now, next_retry_at=past),
            job("c", "high", JobStatus.COMPLETED, now, started_at=now, finished_at=now, next_retry_at=past),
        ],
    )
    high = queue_stats(store, QUEUES, now=now).queues[0]
    assert (high.retries_pending, high.retries_overdue, high.oldest_overdue_retry_seconds) == (0, 0, None)
    assert (high.waiting, high.running, high.failed_last_window, high.completed_last_window) == (1, 1, 1, 1)


def scrape(store: JobStore) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(QueueCollector(store, QUEUES))
    text = generate_latest(registry).decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_collector_keeps_every_name_and_label_and_adds_the_overdue_gauges() -> None:
    store = JobStore.in_memory()
    now = utcnow()
    add(
        store,
        [
            retry("h1", "high", now, due_in=-300),
            job("h2", "high", JobStatus.QUEUED, now, age=90),
            job("h3", "high", JobStatus.COMPLETED, now, started_at=now, finished_at=now),
        ],
    )
    families = scrape(store)
    for name, labels in {**STABLE, **NEW}.items():
        assert families[name], name
        assert all(set(sample_labels) == labels for sample_labels, _ in families[name]), name
    assert set(families) == set(STABLE) | set(NEW)
    values = {name: {s["queue"]: v for s, v in samples} for name, samples in families.items()}
    assert values["etl_jobs_retries_overdue"] == {"high": 1, "medium": 0, "low": 0, "default": 0}
    # Present only where a retry is due, like the oldest waiting age only where a job waits.
    assert values["etl_jobs_oldest_overdue_retry_seconds"].keys() == {"high"}
    assert values["etl_jobs_oldest_overdue_retry_seconds"]["high"] >= 300
    assert values["etl_jobs_oldest_waiting_seconds"].keys() == {"high"}
