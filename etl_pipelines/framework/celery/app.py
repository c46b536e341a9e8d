"""The Celery app over Redis: strict queue order, no prefetch, acknowledged after the run."""

from collections.abc import Sequence
from typing import Any

from celery import Celery

from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK, execute_run
from etl_pipelines.settings import Settings


def make_celery(settings: Settings) -> Celery:
    """The Celery app for ETL_REDIS_URL: strict queue order, acknowledged after the run."""
    url = settings.require_redis()
    app = Celery("etl_pipelines", broker=url, backend=url, set_as_current=False)
    transport: dict[str, Any] = {
        # Pop the worker's queues in the order given (high first), never round-robin.
        "queue_order_strategy": "priority",
        # A message unacknowledged this long is redelivered: longer than any run may last.
        "visibility_timeout": 6 * 3600,
    }
    if settings.redis_key_prefix:
        transport["global_keyprefix"] = settings.redis_key_prefix
    app.conf.update(
        broker_transport_options=transport,
        result_backend_transport_options=dict(transport),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Dagster logs to stderr itself; Celery re-logging it as WARNING only doubles the noise.
        worker_redirect_stdouts=False,
        result_expires=7 * 24 * 3600,
        task_default_queue=settings.queues[-1],
    )
    app.task(name=EXECUTE_RUN_TASK, bind=True)(execute_run)
    return app


def worker_argv(queues: Sequence[str], concurrency: int, name: str | None) -> list[str]:
    """Celery worker arguments: the queues in priority order, no prefetch (a busy worker holds nothing)."""
    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "--disable-prefetch",
        "--optimization",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]
    if name:
        argv += ["--hostname", name]
    return argv
