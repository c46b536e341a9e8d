"""The Celery app over Redis: strict queue order, no prefetch, acknowledged after the run."""

from collections.abc import Sequence
from typing import Any

from celery import Celery

from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK, execute_run

# A message a worker took but has not acknowledged is redelivered after this long: longer than
# any run may last. Any client that consumes from Redis (a worker, a control reply such as
# `ping`) may redeliver with its own value, so it is one constant for every app, not a setting.
VISIBILITY_TIMEOUT_SECONDS = 6 * 3600


def make_celery(redis_url: str, *, key_prefix: str = "", default_queue: str) -> Celery:
    """The Celery app on `redis_url` (broker and result backend): strict queue order, acked after the run.

    Every Redis key it writes starts with `key_prefix` (several deployments on one Redis): the
    launcher and the workers of one deployment must agree on it and on `redis_url`.
    """
    app = Celery("etl_pipelines", broker=redis_url, backend=redis_url, set_as_current=False)
    transport: dict[str, Any] = {
        # Pop the worker's queues in the order given (high first), never round-robin.
        "queue_order_strategy": "priority",
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    }
    if key_prefix:
        transport["global_keyprefix"] = key_prefix
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
        task_default_queue=default_queue,
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
