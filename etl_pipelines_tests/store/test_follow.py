"""follow(): the one wait for a job's end (JobHandle.wait, `etl-jobs dispatch --wait`), on a fake store."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from etl_pipelines.store import JobNotFoundError, JobStatus
from etl_pipelines.store.follow import follow


@dataclass
class Script:
    """A store whose record of one job goes through `statuses`, one per read, then stays."""

    statuses: list[JobStatus]
    reads: int = 0
    seen: list[JobStatus] = field(default_factory=list)

    def require(self, job_id: str) -> SimpleNamespace:
        if job_id != "j1":
            raise JobNotFoundError(f"no job with id {job_id!r}")
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return SimpleNamespace(id=job_id, status=status)


def test_returns_the_final_record_and_shows_every_read() -> None:
    store = Script([JobStatus.QUEUED, JobStatus.STARTED, JobStatus.WAITING_RETRY, JobStatus.FAILED])
    record = follow(store, "j1", timeout=10, poll=0, on_record=lambda r: store.seen.append(r.status))
    assert record.status == JobStatus.FAILED
    assert store.seen == store.statuses and store.reads == 4  # no read after the end


@pytest.mark.parametrize("final", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_any_final_status_ends_it_without_a_timeout(final: JobStatus) -> None:
    assert follow(Script([JobStatus.STARTED, final]), "j1", timeout=None, poll=0).status == final


def test_times_out_with_the_status_it_saw() -> None:
    store = Script([JobStatus.QUEUED])
    with pytest.raises(TimeoutError, match=r"^job j1 still queued after 0\.05 s$"):
        follow(store, "j1", timeout=0.05, poll=0.01)
    assert store.reads >= 2


def test_an_unknown_job_is_not_waited_for() -> None:
    with pytest.raises(JobNotFoundError):
        follow(Script([JobStatus.QUEUED]), "nope", timeout=None, poll=0)
