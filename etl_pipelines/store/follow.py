"""Following a job to its end by polling its record: the one wait (JobHandle.wait, `dispatch --wait`)."""

import time
from collections.abc import Callable

from etl_pipelines.store.models import JobRecord
from etl_pipelines.store.store import JobStore


def follow(
    store: JobStore,
    job_id: str,
    *,
    timeout: float | None,
    poll: float = 0.2,
    on_record: Callable[[JobRecord], None] | None = None,
) -> JobRecord:
    """Poll the job's record every `poll` s until it is completed, failed or cancelled; return it.

    `on_record` sees every record read, the final one included (a live view redraws from it).
    JobNotFoundError if there is no such job; TimeoutError once `timeout` s pass (None: never).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = store.require(job_id)
        if on_record is not None:
            on_record(record)
        if record.status.is_final:
            return record
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {record.status.value} after {timeout:g} s")
        time.sleep(poll)
