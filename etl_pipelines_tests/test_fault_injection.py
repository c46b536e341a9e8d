"""Faults between the workers and their services, through TCP proxies the test owns (tcp_proxy.py).

One dagster-daemon for the module (sensors, run monitoring, recovery) and the test process reach
PostgreSQL and Redis directly. Each case starts one `etl-jobs worker` (3 slots) that reaches them
through a proxy each:

- its ETL_DATABASE_URL goes through the PostgreSQL proxy: the job table, Dagster's run and event
  storage (dagster.yaml's storage reads the same variable, as in production, where they are one
  database) and its launcher's job table;
- its ETL_TARGET_DATABASE_URL (the jobs' target database) goes through the same proxy in the
  first case, directly in the second;
- its ETL_REDIS_URL goes through the Redis proxy: its Celery broker and result backend, and the
  broker its instance's launcher sends to (a retry started by a worker's timer, a hand-on).

A cut resets every live connection through the proxy (RST) and refuses new ones until restored.

Each case puts jobs in every unfinished state (two slow queries and a 150 000-row import
running, imports and Fibonacci jobs queued behind them in Celery, a failed_job waiting for a retry
that falls due during the outage), cuts one proxy for OUTAGE seconds (more jobs are dispatched
meanwhile), restores it, and waits for every job to end. Then, for every job:

- its record is final (completed; failed_job failed after its 3 retries), it ended once (one
  audit row into a final status), and every Dagster run made for it has finished;
- its op began (STEP_START in Dagster's event log, over every run of the job) exactly as often as
  attempts were charged: retry_count + 1. An attempt charged without its op having run, or an op
  run twice for one charged attempt, breaks this;
- its op succeeded once if it completed (one completion in the job table, on a run whose op began;
  Dagster's STEP_SUCCESS at most once: a run cut off from Dagster's storage may lose its own), never
  if it failed;
- an import's target table holds its rows once (a load committed twice shows as twice the rows).

Delays: ETL_RETRY_DELAYS 2,2,2 (failed_job: 15,2,2, so its first retry falls due mid-outage),
heartbeat 1 s, recovery grace 3 s; the job_recovery sensor looks every 30 s. On failure (and
with -rA) each case prints its timeline, every job's audit trail and runs, and the logs.
"""

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest
import redis
import sqlalchemy as sa

from etl_pipelines.framework.dispatch import JobHandle
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.tags import JOB_ID_TAG
from etl_pipelines.jobs.data_import import DataImport
from etl_pipelines.jobs.failed_job import FailedJob
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.jobs.slow_query import SlowQuery
from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines.store.models import utcnow
from etl_pipelines_tests.conftest import _ETL_VARS, production_deployment
from etl_pipelines_tests.harness import Deployment, poll
from etl_pipelines_tests.tcp_proxy import Mode, TcpProxy

# Each case: a 45 s outage, the recovery sensor's 30 s period, and on failure the full waits below.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

Note = Callable[[str], None]
OUTAGE = 45.0  # seconds each proxy stays cut
SLOTS = 3  # the worker's concurrency: two slow queries and a big import fill it
SLOW_SECONDS = 15.0  # running at the cut; they end within the outage if nothing breaks them
# A load of a few seconds: still running at the cut (which follows its start by about a second),
# committed a few seconds into the outage when its target stays up.
BIG_IMPORT_ROWS = 150_000
FIRST_RETRY_WAIT = 15.0  # failed_job's first wait: due during the outage
IMPORT_ROWS = 5
UNFINISHED_RUN = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclasses.dataclass
class Stack:
    deployment: Deployment  # the daemon's and the test's env: direct
    store: JobStore
    pg_url: str
    redis_url: str
    pg_proxy: TcpProxy
    redis_proxy: TcpProxy
    workers: Deployment | None = None  # the running worker's: the same deployment, proxied URLs

    @contextlib.contextmanager
    def worker(self, label: str, **env: str) -> Iterator[None]:
        """The case's `etl-jobs worker`: job table, Dagster storage and broker through the
        proxies, targets as `env` says (ETL_TARGET_DATABASE_URL). Its log is kept as
        DAGSTER_HOME/<label>-worker-0.log (the next case's worker would write over it)."""
        self.workers = dataclasses.replace(
            self.deployment,
            env={
                **self.deployment.env,
                "ETL_DATABASE_URL": proxied_pg_url(self.pg_url, self.pg_proxy),
                "ETL_REDIS_URL": proxied_redis_url(self.redis_url, self.redis_proxy),
                **env,
            },
            groups=[],
        )
        try:
            with self.workers.worker(concurrency=SLOTS):
                yield
        finally:
            self.workers.stop_all()
            for group in self.workers.groups:
                group.log = group.log.rename(group.log.with_name(f"{label}-{group.log.name}"))


def proxied_pg_url(url: str, proxy: TcpProxy) -> str:
    return sa.make_url(url).set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)


def proxied_redis_url(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{proxy.url_netloc()}" if auth else proxy.url_netloc()
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str) -> Iterator[Stack]:
    """The daemon direct (each case starts its worker); everything stopped and restored after."""
    pg, rd = sa.make_url(pg_url), urlsplit(redis_url)
    prefix = f"etl-test-{uuid.uuid4().hex[:10]}:"
    home = tmp_path_factory.mktemp("faults") / "dagster_home"
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:  # the imports' targets live in the allowed schema
        connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS auth"))
    engine.dispose()
    with contextlib.ExitStack() as exit_stack:
        exit_stack.callback(delete_keys, redis_url, prefix)  # last, once everything has stopped
        monkeypatch = exit_stack.enter_context(pytest.MonkeyPatch.context())
        for name in _ETL_VARS:
            monkeypatch.delenv(name, raising=False)
        pg_proxy = exit_stack.enter_context(TcpProxy(pg.host or "127.0.0.1", pg.port or 5432))
        redis_proxy = exit_stack.enter_context(TcpProxy(rd.hostname or "127.0.0.1", rd.port or 6379))
        deployment = exit_stack.enter_context(
            production_deployment(
                monkeypatch,
                home,
                pg_url,
                redis_url,
                prefix,
                ETL_HEARTBEAT_SECONDS="1",
                ETL_RECOVERY_GRACE_SECONDS="3",
                ETL_RETRY_DELAYS="2,2,2",
                ETL_RETRY_DELAYS_FAILED_JOB=f"{FIRST_RETRY_WAIT:g},2,2",
            )
        )
        (home / "imports").mkdir()
        for name, rows in (("rows.csv", IMPORT_ROWS), ("big.csv", BIG_IMPORT_ROWS)):
            lines = "".join(f"{i},row {i}\n" for i in range(rows))
            (home / "imports" / name).write_text("id,name\n" + lines)
        exit_stack.enter_context(deployment.daemon(workers=0))
        try:
            yield Stack(deployment, JobStore(pg_url), pg_url, redis_url, pg_proxy, redis_proxy)
        finally:
            pg_proxy.restore()
            redis_proxy.restore()


def delete_keys(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@dataclasses.dataclass
class Jobs:
    running: list[JobHandle]
    queued: list[JobHandle]
    waiting: JobHandle
    during: list[JobHandle] = dataclasses.field(default_factory=list)
    imports: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # id: table, rows

    def all(self) -> list[JobHandle]:
        return [*self.running, *self.queued, self.waiting, *self.during]


def test_job_table_database_cut_for_45_s(stack: Stack) -> None:
    """The worker loses PostgreSQL for 45 s: job table, Dagster storage and the jobs' target (one
    database, as by default): the running attempts break."""
    with stack.worker("pg", ETL_TARGET_DATABASE_URL=proxied_pg_url(stack.pg_url, stack.pg_proxy)):
        outage(stack, stack.pg_proxy, "pg")


def test_job_table_cut_while_the_target_database_stays_up(stack: Stack) -> None:
    """The worker loses the job table and Dagster storage for 45 s but keeps its target database
    (ETL_TARGET_DATABASE_URL direct): running attempts finish their work (the big import commits
    its rows) and cannot record it. Recovery's 30 s tick falls before or after that commit
    (mostly after); either way the rows must be there once."""
    with stack.worker("pg_target_up", ETL_TARGET_DATABASE_URL=stack.pg_url):
        # Short slow queries: their work ends a few seconds into the outage, before recovery
        # (3 missed beats, then its next tick) can judge their worker lost; the big import
        # commits about then too.
        outage(stack, stack.pg_proxy, "pg_target_up", slow_seconds=5)


def test_redis_cut_for_45_s(stack: Stack) -> None:
    """The worker loses Redis for 45 s: its broker, result backend and its launcher's broker."""
    with stack.worker("redis"):
        outage(stack, stack.redis_proxy, "redis")


def outage(
    stack: Stack, proxy: TcpProxy, label: str, *, slow_seconds: float = SLOW_SECONDS, new: Mode = "refuse"
) -> None:
    timeline: list[str] = []
    t0 = time.monotonic()

    def note(text: str) -> None:
        timeline.append(f"{time.monotonic() - t0:6.1f}s {text}")

    settle(stack, note)
    jobs = put_jobs_in_every_state(stack, label, note, slow_seconds)
    try:
        cut_at = time.monotonic()
        reset = proxy.cut(new=new)
        note(f"{label} proxy cut: {reset} live connection(s) reset, new ones {new}d")
        # The outage lasts OUTAGE seconds; meanwhile more work arrives and the states are sampled.
        jobs.during = [Fibonacci.dispatch(n=25 + i) for i in range(2)]
        note(f"dispatched during the outage: {[h.id for h in jobs.during]}")
        watch(jobs, note, until=cut_at + OUTAGE)
    finally:
        proxy.restore()
    note(f"{label} proxy restored")
    try:
        poll(lambda: all_ended(stack, jobs), 180, 1.0, "every job and every run of it to end")
        note("every job ended")
        problems = check(stack, jobs)
    except BaseException:
        print(report(stack, jobs, timeline, logs=True))
        raise
    # Shown with -rA, or when the assertion fails: what each job went through.
    print(report(stack, jobs, timeline, logs=bool(problems)))
    assert not problems, "\n".join(problems)


def settle(stack: Stack, note: Note) -> None:
    """A previous case's leftovers would hold the worker's slots: wait for them, say so if they stay."""
    instance = get_instance()
    try:
        poll(
            lambda: not list(instance.get_runs(dg.RunsFilter(statuses=UNFINISHED_RUN))),
            90,
            1.0,
            "no unfinished run before the case starts",
        )
    except AssertionError:
        left = instance.get_runs(dg.RunsFilter(statuses=UNFINISHED_RUN))
        note(f"LEFTOVER unfinished runs from before: {[(r.run_id, r.status.value) for r in left]}")


def put_jobs_in_every_state(stack: Stack, label: str, note: Note, slow_seconds: float) -> Jobs:
    """failed_job waiting for its retry, slow queries and a big import in every slot, more work
    queued in Celery."""
    waiting = FailedJob.dispatch(message=f"{label}: fails on purpose")
    poll(lambda: waiting.status() == JobStatus.WAITING_RETRY, 60, 0.2, "failed_job's first attempt to fail")
    running = [SlowQuery.dispatch(duration=slow_seconds, queue="high") for _ in range(SLOTS - 1)]
    poll(lambda: all(h.status() == JobStatus.STARTED for h in running), 60, 0.2, "the slow queries to start")
    imports: dict[str, tuple[str, int]] = {}

    def load(csv: str, rows: int, table: str, queue: str | None = None) -> JobHandle:
        handle = DataImport.dispatch(
            source_csv=csv, target_table=table, columns={"id": "int", "name": "str"}, queue=queue
        )
        imports[handle.id] = (table, rows)
        return handle

    big = load("big.csv", BIG_IMPORT_ROWS, f"auth.fault_{label}_big", queue="high")
    running.append(big)
    poll(lambda: big.status() != JobStatus.QUEUED, 60, 0.1, "the big import to start")
    queued = [load("rows.csv", IMPORT_ROWS, f"auth.fault_{label}_{i}") for i in range(3)]
    queued += [Fibonacci.dispatch(n=20 + i) for i in range(2)]
    jobs = Jobs(running=running, queued=queued, waiting=waiting, imports=imports)

    # The states the outage must find: checked, not assumed.
    instance = get_instance()
    record = waiting.record()
    assert record.status == JobStatus.WAITING_RETRY and record.next_retry_at is not None
    assert record.next_retry_at > utcnow() + timedelta(seconds=2), "its retry must fall due in the outage"
    assert all(h.status() == JobStatus.STARTED for h in running), (
        f"not all running at the cut (the big import must outlast its dispatch by ~1 s): "
        f"{[(h.job_type, h.status().value) for h in running]}"
    )
    assert all(h.status() == JobStatus.QUEUED for h in queued)
    assert {instance.get_run_by_id(h.id).status for h in queued} == {dg.DagsterRunStatus.QUEUED}  # type: ignore[union-attr]
    note(
        f"before the cut: running {[h.id for h in running]}, queued {[h.id for h in queued]}, "
        f"waiting_retry {waiting.id} due {record.next_retry_at:%H:%M:%S}"
    )
    return jobs


def job_runs(job_id: str, store: JobStore) -> list[dg.DagsterRun]:
    """Every Dagster run made for the job: its record's, and any tagged with it that the record missed."""
    instance = get_instance()
    record = store.require(job_id)
    runs = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(tags={JOB_ID_TAG: job_id}))}
    for run_id in record.run_ids:
        if run_id not in runs:
            run = instance.get_run_by_id(run_id)
            if run is not None:
                runs[run_id] = run
    return list(runs.values())


def states(jobs: Jobs) -> dict[str, str]:
    instance = get_instance()
    seen = {}
    for handle in jobs.all():
        record = handle.record()
        run = instance.get_run_by_id(record.run_id) if record.run_id else None
        seen[handle.id] = f"{record.status.value}/{run.status.value if run else '-'}"
    return seen


def watch(jobs: Jobs, note: Note, until: float) -> None:
    """Sample the jobs' states once a second until `until` (the outage's end), noting changes."""
    last: dict[str, str] = {}

    def changed() -> bool:
        now = states(jobs)
        for job_id, state in now.items():
            if last.get(job_id) != state:
                note(f"  {job_id[:8]} {last.get(job_id, '')} -> {state}")
        last.update(now)
        return time.monotonic() >= until

    poll(changed, OUTAGE + 30, 1.0, "the outage to last its time")


def all_ended(stack: Stack, jobs: Jobs) -> bool:
    for handle in jobs.all():
        if not handle.record().status.is_final:
            return False
        if any(not run.is_finished for run in job_runs(handle.id, stack.store)):
            return False
    return True


def op_events(run_ids: list[str], event_type: dg.DagsterEventType) -> int:
    instance = get_instance()
    return sum(len(instance.all_logs(run_id, of_type=event_type)) for run_id in run_ids)


def check(stack: Stack, jobs: Jobs) -> list[str]:
    """Every broken promise, for every job (not just the first)."""
    problems = []
    final = {s.value for s in JobStatus if s.is_final}
    engine = sa.create_engine(stack.pg_url, poolclass=sa.pool.NullPool)
    for handle in jobs.all():
        record = handle.record()
        runs = job_runs(handle.id, stack.store)
        run_ids = [r.run_id for r in runs]
        history = stack.store.history(handle.id)
        starts = op_events(run_ids, dg.DagsterEventType.STEP_START)
        successes = op_events(run_ids, dg.DagsterEventType.STEP_SUCCESS)
        who = f"job {handle.id} ({record.job_type})"
        expected = JobStatus.FAILED if handle is jobs.waiting else JobStatus.COMPLETED
        if record.status != expected:
            problems.append(f"{who}: {record.status.value}, expected {expected.value}: {record.error}")
        if handle is jobs.waiting and record.retry_count != 3:
            problems.append(f"{who}: retry_count {record.retry_count}, expected 3 (all its retries)")
        endings = [e for e in history if e.to_status in final]
        if len(endings) != 1:
            problems.append(f"{who}: ended {len(endings)} times: {[e.action for e in endings]}")
        unfinished = [(r.run_id, r.status.value) for r in runs if not r.is_finished]
        if unfinished:
            problems.append(f"{who}: runs not finished: {unfinished}")
        if starts != record.retry_count + 1:
            problems.append(
                f"{who}: its op began {starts} time(s) but {record.retry_count + 1} attempt(s) were "
                f"charged (retry_count {record.retry_count})"
            )
        # Its op succeeded once if it completed: the job table's one completion is on a run whose
        # op began, and Dagster saw at most one success. (A worker cut off from Dagster's storage
        # records the completion in the job table once the link is back, but its run's own success
        # event may be lost: that run then shows FAILURE in Dagster, not a second execution.)
        completing = [e.run_id for e in history if e.action == "completed"]
        if record.status == JobStatus.COMPLETED:
            on_started_run = (
                len(completing) == 1 and op_events(completing, dg.DagsterEventType.STEP_START) == 1
            )
            if successes > 1 or not on_started_run:
                problems.append(
                    f"{who}: its op succeeded {successes} time(s) in Dagster, completions recorded on"
                    f" runs {completing}: expected one completion, on a run whose op began"
                )
        elif successes:
            problems.append(f"{who}: its op succeeded {successes} time(s), but the job did not complete")
        if handle.id in jobs.imports:
            table, expected_rows = jobs.imports[handle.id]
            with engine.connect() as connection:
                schema, name = table.split(".")
                target = sa.table(name, schema=schema)
                rows = connection.execute(sa.select(sa.func.count()).select_from(target)).scalar_one()
            if rows != expected_rows:
                problems.append(f"{who}: {table} holds {rows} rows, expected {expected_rows} (loaded once)")
    engine.dispose()
    # Runs of nobody's job (none expected): every job has ended, so nothing may still be going.
    stray = get_instance().get_runs(dg.RunsFilter(statuses=UNFINISHED_RUN))
    if stray:
        problems.append(
            f"unfinished runs after every job ended: {[(r.run_id, r.status.value) for r in stray]}"
        )
    return problems


def report(stack: Stack, jobs: Jobs, timeline: list[str], logs: bool) -> str:
    """Everything needed to tell a test bug from a product bug: timeline, records, histories, runs."""
    instance = get_instance()
    lines = ["timeline:", *timeline, "", "jobs:"]
    for handle in jobs.all():
        record = handle.record()
        lines.append(
            f"- {handle.id} {record.job_type}: {record.status.value} retry_count={record.retry_count} "
            f"run_ids={record.run_ids} error={record.error!r}"
        )
        for event in stack.store.history(handle.id):
            lines.append(
                f"    {event.at:%H:%M:%S.%f} {event.action} {event.from_status}->{event.to_status} "
                f"run={event.run_id} by {event.actor}: {event.reason or ''}"[:600]
            )
        for run in job_runs(handle.id, stack.store):
            starts = op_events([run.run_id], dg.DagsterEventType.STEP_START)
            success = op_events([run.run_id], dg.DagsterEventType.STEP_SUCCESS)
            failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            why = failures[-1].message if failures else ""
            for step in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
                error = step.dagster_event.step_failure_data.error if step.dagster_event else None
                chain = []
                while error is not None:  # Dagster's wrapper, then what the op hit, and its causes
                    chain.append(error.message.strip().splitlines()[0] if error.message.strip() else "")
                    error = error.cause
                why += " | step failed: " + " <- ".join(chain[1:] or chain)
            line = f"    run {run.run_id} {run.status.value} step_start={starts} step_success={success} {why}"
            lines.append(line[:800])
    for claim in stack.store.claims():
        lines.append(f"table claim: {claim.target} run {claim.run_id} holding={claim.holding}")
    groups = (stack.workers.groups if stack.workers else []) + stack.deployment.groups
    for group in groups if logs else []:
        lines += ["", f"{group.name} log ({group.log}), last lines:", *group.output().splitlines()[-40:]]
    return "\n".join(lines)
