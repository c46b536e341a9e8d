"""The fence around an attempt's work in the target (framework/fence.py): one session per attempt
that never reconnects, an advisory lock per table, and recovery ending an abandoned attempt's
sessions, down to a paused Celery pool process on the real stack."""

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.framework.attempt import Heartbeat
from etl_pipelines.framework.fence import (
    FENCE_CLASSID,
    LEASE_BEATS,
    AttemptSession,
    FenceLost,
    application_name,
    attempt_done,
    done_name,
    end_sessions,
    lock_holders,
)
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.jobs.slow_query import SlowQuery
from etl_pipelines.lifecycle.admission import table_key
from etl_pipelines.lifecycle.diagnosis import BEATS_MISSED
from etl_pipelines.resources.database import TargetDatabase
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.conftest import production_deployment
from etl_pipelines_tests.harness import Deployment, poll, pool_pid, wait_for_jobs


@pytest.fixture
def observer(pg_url: str) -> Iterator[sa.Connection]:
    """A connection of the test's own to look at pg_stat_activity and pg_locks."""
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        yield connection
    engine.dispose()


def run_id() -> str:
    return str(uuid.uuid4())


def sessions_named(observer: sa.Connection, name: str) -> list[int]:
    rows = observer.execute(
        sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"), {"name": name}
    )
    return [row.pid for row in rows]


def test_the_attempt_session_is_named_after_its_run_and_made_lazily(pg_url: str, observer) -> None:
    name = application_name(run_id(), "slow_query")
    session = AttemptSession(pg_url, name)
    try:
        assert sessions_named(observer, name) == []  # a job that never touches the target pays nothing
        with session.use(5) as connection:
            assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "5s"
            pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert sessions_named(observer, name) == [pid]
        for timeout in (None, 7):
            with session.use(timeout, autocommit=True) as connection:
                assert connection.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
                assert connection.connection.dbapi_connection.autocommit is True  # type: ignore[union-attr]
                expected = "7s" if timeout else "0"
                assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == expected
                connection.execute(sa.text("CREATE TABLE IF NOT EXISTS fence_kept (x int)"))
            with session.use(None, transaction=True) as connection:  # back from autocommit
                assert connection.in_transaction()
                assert connection.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
                assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "0"
                connection.execute(sa.text("CREATE TABLE fence_dropped (x int)"))
                connection.rollback()
        with session.use(None) as connection:
            connection.execute(sa.text("CREATE TABLE fence_uncommitted (x int)"))  # never committed
        with session.use(None) as connection:
            tables = connection.execute(
                sa.text("SELECT relname FROM pg_class WHERE relname LIKE 'fence_%' ORDER BY 1")
            ).scalars()
            assert list(tables) == ["fence_kept"]  # autocommit kept; the rest rolled back
    finally:
        session.close()
    assert sessions_named(observer, name) == []


def test_an_ended_session_is_never_made_again(pg_url: str, observer) -> None:
    run = run_id()
    session = AttemptSession(pg_url, application_name(run, "truncate_table"))
    try:
        with session.use(None) as connection:
            connection.execute(sa.text("SELECT 1"))
        assert len(end_sessions(pg_url, run)) == 1
        # The very use that finds it gone fails; SQLAlchemy would reconnect on the next one.
        with pytest.raises(sa.exc.DBAPIError), session.use(None) as connection:
            connection.execute(sa.text("SELECT 1"))
        assert session.lost is not None
        for _ in range(2):
            with pytest.raises(FenceLost, match="never reconnects"), session.use(None) as connection:
                connection.execute(sa.text("SELECT 1"))
        raw = session._connection  # what SQLAlchemy would reconnect once its transaction is gone
        assert raw is not None
        raw.rollback()
        with pytest.raises(sa.exc.StatementError, match=r"FenceLost.*never reconnects"):
            raw.execute(sa.text("SELECT 1"))
        assert sessions_named(observer, session.name) == []
    finally:
        session.close()


def test_a_first_connect_that_fails_is_not_a_lost_fence() -> None:
    session = AttemptSession("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere", "etl:r:x")
    for _ in range(2):  # no session was ever made: the database's own error, each time
        with pytest.raises(sa.exc.OperationalError), session.use(None):
            pass
    assert session.lost is None


def test_a_session_given_up_cancels_its_statement_and_refuses_the_next(pg_url: str) -> None:
    session = AttemptSession(pg_url, application_name(run_id(), "slow_query"))
    try:
        timer = threading.Timer(0.5, session.lose, args=["job j1 is no longer on this run"])
        timer.start()
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as raised, session.use(None) as connection:
            connection.execute(sa.text("SELECT pg_sleep(30)"))
        assert time.monotonic() - started < 10
        assert isinstance(session.fence_error(raised.value), FenceLost)
        with pytest.raises(FenceLost, match="no longer on this run"), session.use(None):
            pass
    finally:
        session.close()


def test_one_session_at_a_time_holds_a_tables_lock(pg_url: str, observer) -> None:
    key = table_key("auth.t", "postgresql")
    assert key == table_key("AUTH.t", "postgresql") or key == "auth.t"
    first_run, second_run = run_id(), run_id()
    first = AttemptSession(pg_url, application_name(first_run, "truncate_table"))
    second = AttemptSession(pg_url, application_name(second_run, "truncate_table"))
    waited: list[str] = []
    try:
        first.lock(key)
        assert [name for _, name in lock_holders(observer, key)] == [first.name]
        row = observer.execute(
            sa.text("SELECT classid, objsubid FROM pg_locks WHERE locktype = 'advisory' AND pid = :pid"),
            {"pid": lock_holders(observer, key)[0][0]},
        ).one()
        assert (row.classid, row.objsubid) == (FENCE_CLASSID, 2)
        other = AttemptSession(pg_url, application_name(run_id(), "x"))
        try:
            other.lock(table_key("auth.other", "postgresql"))  # another table: no wait
        finally:
            other.close()

        thread = threading.Thread(target=second.lock, args=(key, waited.append))
        thread.start()
        poll(lambda: waited, 10, 0.05, "the second attempt to wait")
        assert first.name in waited[0]
        assert [name for _, name in lock_holders(observer, key)] == [first.name]
        end_sessions(pg_url, first_run)  # recovery ends the abandoned attempt: the lock goes with it
        thread.join(10)
        assert not thread.is_alive()
        assert [name for _, name in lock_holders(observer, key)] == [second.name]
    finally:
        first.close()
        second.close()
    assert lock_holders(observer, key) == []


def test_a_lock_wait_ends_when_the_session_is_given_up(pg_url: str) -> None:
    key = table_key("auth.waits", "postgresql")
    holder = AttemptSession(pg_url, application_name(run_id(), "a"))
    waiter = AttemptSession(pg_url, application_name(run_id(), "b"))
    try:
        holder.lock(key)
        threading.Timer(0.5, waiter.lose, args=["job j1 is no longer on this run"]).start()
        with pytest.raises(FenceLost):
            waiter.lock(key)
    finally:
        holder.close()
        waiter.close()


def test_other_databases_are_named_after_the_attempt_while_it_uses_them(
    pg_url: str, observer, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    name = application_name(run_id(), "sync_table")
    with TargetDatabase().connect(3, url=pg_url, application_name=name) as connection:
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "3s"
        assert sessions_named(observer, name) == [pid]
    assert sessions_named(observer, name) == []  # the pooled connection goes back unnamed


class RefusingStore:
    """A job table that no longer has the job on this run (recovery moved it on)."""

    def __init__(self) -> None:
        self.beats = 0

    def heartbeat(self, job_id: str, run_id: str, *, retry_seconds: float | None = None, **_: Any) -> bool:
        self.beats += 1
        return False


def test_a_refused_heartbeat_gives_the_attempt_up_once() -> None:
    store = RefusingStore()
    lost: list[str] = []
    with Heartbeat(store, "j1", "r1", 0.05, on_lost=lost.append) as heartbeat:  # type: ignore[arg-type]
        poll(lambda: store.beats >= 3, 10, 0.05, "three beats")
    assert heartbeat.lost and lost == ["job j1 is no longer on this run"]


class UnreachableStore:
    """A job table this worker cannot reach: every beat fails."""

    def __init__(self) -> None:
        self.beats = 0

    def heartbeat(self, job_id: str, run_id: str, *, retry_seconds: float | None = None, **_: Any) -> bool:
        self.beats += 1
        raise sa.exc.OperationalError("UPDATE etl_jobs", {}, Exception("connection refused"))


def test_an_attempt_that_cannot_beat_gives_itself_up_before_recovery_may() -> None:
    store = UnreachableStore()
    lost: list[str] = []
    interval = 0.1
    started = time.monotonic()
    with Heartbeat(store, "j1", "r1", interval, on_lost=lost.append) as heartbeat:  # type: ignore[arg-type]
        poll(lambda: heartbeat.lost, 10, 0.02, "the lease to run out")
        given_up = time.monotonic() - started
    assert len(lost) == 1 and "could be written" in lost[0] and store.beats >= 2
    # After LEASE_BEATS intervals without a beat, before recovery's BEATS_MISSED (3).
    assert LEASE_BEATS * interval <= given_up < BEATS_MISSED * interval + 0.5


def test_a_given_up_session_commits_nothing_more(pg_url: str, observer) -> None:
    with sa.create_engine(pg_url).begin() as connection:
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS fence_commit (n int)"))
        connection.execute(sa.text("TRUNCATE fence_commit"))
    session = AttemptSession(pg_url, application_name(run_id(), "data_import"))
    try:
        with pytest.raises(FenceLost), session.use(None, transaction=True) as connection:
            connection.execute(sa.text("INSERT INTO fence_commit VALUES (1)"))
            session.lose("the lease ran out")  # as the heartbeat's watchdog does
        with pytest.raises(FenceLost):
            session.connection()
    finally:
        session.close()
    assert observer.execute(sa.text("SELECT count(*) FROM fence_commit")).scalar() == 0


def test_a_session_whose_work_is_done_is_left_alone_by_recovery(pg_url: str, observer) -> None:
    run = run_id()
    session = AttemptSession(pg_url, application_name(run, "data_import"), run)
    try:
        assert not attempt_done(pg_url, run)
        with session.use(None) as connection:
            connection.execute(sa.text("SELECT 1"))
        session.lose("the lease ran out")  # given up, but handle() had returned: done all the same
        assert session.mark_done()
        assert sessions_named(observer, done_name(run)) and attempt_done(pg_url, run)
    finally:
        session.close()
    assert not attempt_done(pg_url, run)


# -- the real stack: a Celery pool process paused past its heartbeat ------------------------------

TABLE = "auth.t"
SLOW_QUERY_SECONDS = 25


@dataclass(frozen=True)
class Sample:
    at: float
    sleeping: frozenset[tuple[int, str]]  # sessions running the slow query: (pid, application_name)
    holders: tuple[tuple[int, str], ...]  # sessions holding auth.t's fence lock


class Sampler(threading.Thread):
    """pg_stat_activity and pg_locks every 100 ms, from a connection of the test's own."""

    def __init__(self, url: str):
        super().__init__(name="fence-sampler", daemon=True)
        self.url = url
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                while not self.stop.is_set():
                    rows = connection.execute(
                        sa.text(
                            "SELECT pid, application_name FROM pg_stat_activity"
                            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                            " AND state = 'active' AND query ILIKE '%pg_sleep%'"
                        )
                    ).all()
                    holders = tuple(lock_holders(connection, table_key(TABLE, "postgresql")))
                    self.samples.append(
                        Sample(
                            time.monotonic(), frozenset((r.pid, r.application_name) for r in rows), holders
                        )
                    )
                    self.stop.wait(0.1)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            engine.dispose()


@pytest.mark.e2e
def test_a_paused_worker_never_works_beside_its_retry(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """A pool process paused mid-query past its heartbeat timeout (SIGSTOP), failed by recovery,
    resumed (SIGCONT) while its retry runs: at no moment do two attempts work on auth.t, and the
    job ends once."""
    with production_deployment(
        clean_env,
        tmp_path / "dagster_home",
        pg_url,
        redis_url,
        redis_prefix,
        ETL_HEARTBEAT_SECONDS="1",
        ETL_RECOVERY_GRACE_SECONDS="2",
    ) as deployment:
        store = JobStore(deployment.database_url)
        sampler = Sampler(pg_url)
        paused: int | None = None
        with deployment.daemon(workers=1, concurrency=2):
            sampler.start()
            try:
                handle = SlowQuery.dispatch(duration=SLOW_QUERY_SECONDS, table=TABLE)
                first = handle.id
                poll(lambda: handle.status() == JobStatus.STARTED, 60, 0.1, "the slow job to start")
                # The first attempt's query, by its server process (whatever its session's name).
                first_pids = poll(
                    lambda: {pid for s in sampler.samples[-1:] for pid, _ in s.sleeping}, 30, 0.1, "its query"
                )
                paused = poll(lambda: pool_pid(first), 30, 0.5, "the pool process running it")
                os.kill(paused, signal.SIGSTOP)
                # No beat for 3 s: recovery (`etl-jobs recover`, what the job_recovery sensor runs
                # every 30 s) fails the attempt; its retry is due 1 s later (ETL_RETRY_DELAYS).
                poll(
                    lambda: deployment.cli("recover").returncode == 0 and handle.record().run_id != first,
                    90,
                    1.0,
                    "recovery to give up on the paused attempt and queue its retry",
                )
                second = handle.record().run_id
                assert second is not None
                poll(
                    lambda: (
                        handle.record().status == JobStatus.STARTED
                        and any(pid not in first_pids for s in sampler.samples[-1:] for pid, _ in s.sleeping)
                    ),
                    90,
                    0.1,
                    "the retry to run its query",
                )
                time.sleep(1)  # the retry works a while beside the paused process
            finally:
                if paused is not None:
                    os.kill(paused, signal.SIGCONT)  # always: a stopped process outlives the test
            # Resumed: recovery revoked its task, so it takes its SIGTERM now (Dagster turns it into
            # an interrupt of the op: the warm pool process lives on, its attempt ends).
            poll(lambda: pool_pid(first) is None, 30, 0.5, "the abandoned attempt's task to end")
            wait_for_jobs(store, [first], 120)
            sampler.stop.set()
            sampler.join(10)
        assert sampler.error is None, sampler.error
        samples = sampler.samples
        assert len(samples) > 100
        overlaps = [s for s in samples if len(s.sleeping) > 1 or len(s.holders) > 1]
        assert not overlaps, overlaps[:3]
        seen = {name.split(":")[1] for s in samples for _, name in s.sleeping}
        assert seen == {first, second}, seen  # both attempts worked, each in its own named session
        assert {name.split(":")[1] for s in samples for _, name in s.holders} == {first, second}

        record = handle.record()
        assert record.status == JobStatus.COMPLETED and record.retry_count == 1, record.to_dict()
        assert record.run_ids == [first, second]
        first_run = get_instance().get_run_by_id(first)
        assert first_run is not None and first_run.status == dg.DagsterRunStatus.FAILURE
        # The abandoned attempt never got to an outcome of its own; the retry completed, once.
        assert not get_instance().all_logs(first, of_type=dg.DagsterEventType.STEP_SUCCESS)
        history = store.history(first)
        assert [e.action for e in history].count("completed") == 1
        assert [e.run_id for e in history if e.action == "completed"] == [second]
        lost = [e for e in history if e.action == "waiting_retry"]
        assert len(lost) == 1 and "WorkerLost: no heartbeat" in (lost[0].reason or ""), lost
        assert "ended 1 session(s)" in (lost[0].reason or ""), lost[0].reason


@pytest.mark.e2e
@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_terminating_a_running_run_ends_its_sessions_before_it_is_reported_cancelled(
    pg_deployment: Deployment, observer, paused: bool
) -> None:
    """Cancelled is reported once the attempt said it stopped, or (paused) once its sessions are
    ended and it is fenced off the target, saying which."""
    store = JobStore(pg_deployment.database_url)
    instance = get_instance()
    key = table_key(TABLE, "postgresql")
    with pg_deployment.worker(concurrency=1):
        handle = SlowQuery.dispatch(duration=60, table=TABLE)
        prefix = f"etl:{handle.id}:"
        poll(
            lambda: any(name.startswith(prefix) for _, name in lock_holders(observer, key)),
            60,
            0.1,
            "the job to hold its table",
        )
        pid = poll(lambda: pool_pid(handle.id), 30, 0.5, "the pool process running it") if paused else None
        try:
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
            assert instance.run_launcher.terminate(handle.id)
            # Reported only now that its session (and table lock) is gone.
            run = instance.get_run_by_id(handle.id)
            assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
            assert lock_holders(observer, key) == []
            assert sessions_named(observer, application_name(handle.id, "slow_query")) == []
            assert store.require(handle.id).status == JobStatus.CANCELLED
            messages = [e.message or "" for e in instance.all_logs(handle.id)]
            assert any("ended its 1 session(s)" in m for m in messages), messages
            unconfirmed = [m for m in messages if "has not confirmed it stopped" in m]
            assert bool(unconfirmed) is paused, messages
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        # The table is free: a job waiting for it runs, on the same worker once it is resumed.
        after = SlowQuery.dispatch(duration=0, table=TABLE)
        wait_for_jobs(store, [after.id], 60)
    assert store.require(after.id).status == JobStatus.COMPLETED


@pytest.mark.e2e
def test_a_cancel_its_attempt_never_confirmed_ends_cancelled_not_retried(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, pg_url: str, redis_url: str, redis_prefix: str
) -> None:
    """A run left CANCELING (its paused attempt never confirmed the cancel, and it could not be
    fenced off from here) whose heartbeat goes stale: recovery stops it and cancels the job, it
    never fails it and queues a retry of what the operator cancelled."""
    with production_deployment(
        clean_env,
        tmp_path / "dagster_home",
        pg_url,
        redis_url,
        redis_prefix,
        ETL_HEARTBEAT_SECONDS="1",
        ETL_RECOVERY_GRACE_SECONDS="2",
    ) as deployment:
        store = JobStore(deployment.database_url)
        instance = get_instance()
        with deployment.worker(concurrency=1):
            handle = SlowQuery.dispatch(duration=60, table=TABLE)
            poll(lambda: handle.status() == JobStatus.STARTED, 60, 0.1, "the slow job to start")
            pid = poll(lambda: pool_pid(handle.id), 30, 0.5, "the pool process running it")
            try:
                os.kill(pid, signal.SIGSTOP)
                run = instance.get_run_by_id(handle.id)
                assert run is not None
                instance.report_run_canceling(run)  # what terminate() leaves when it cannot confirm
                poll(
                    lambda: deployment.cli("recover").returncode == 0 and handle.status().is_final,
                    60,
                    1.0,
                    "recovery to deal with the cancelled attempt",
                )
            finally:
                os.kill(pid, signal.SIGCONT)
            record = handle.record()
            assert record.status == JobStatus.CANCELLED and record.retry_count == 0, record.to_dict()
            assert record.run_ids == [handle.id]
            run = instance.get_run_by_id(handle.id)
            assert run is not None and run.status == dg.DagsterRunStatus.CANCELED
            assert "waiting_retry" not in [e.action for e in store.history(handle.id)]
