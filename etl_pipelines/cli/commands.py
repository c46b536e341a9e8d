"""The etl-jobs commands: each reads its options, makes one call, and hands the result to render.

Imports are deferred into the commands that use them: `--help`, `status`, `list` and `stats` are
run in loops by operators and must not pay for Dagster, Celery or pandas (~2 s), nor `--help` for
SQLAlchemy (~0.25 s) and rich. test_cli checks which modules these commands load.
"""

import functools
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from etl_pipelines.errors import JobInputError, UnknownJobTypeError, UnknownQueueError
from etl_pipelines.jobs import check_name as check_job_type
from etl_pipelines.settings import Settings, SettingsError

if TYPE_CHECKING:
    import dagster as dg

    from etl_pipelines.store import JobRecord, JobStore

F = TypeVar("F", bound=Callable[..., Any])

# JobStatus's values, spelled out because JobStatus lives beside the SQLAlchemy models, which
# `--help` must not import; test_cli checks that the two agree.
STATUSES = ("queued", "started", "waiting_retry", "completed", "failed", "cancelled")


def _raised(exc: BaseException, module: str, *names: str) -> bool:
    # An exception of a class implies its module is loaded: a command that never touched
    # SQLAlchemy or Dagster's storage does not import them just to look at its error.
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, tuple(getattr(loaded, name) for name in names))


def user_error(exc: BaseException) -> str | None:
    """The one line for an error a user can cause (bad input, unreachable storage); None for a bug."""
    if isinstance(exc, (JobInputError, UnknownQueueError, UnknownJobTypeError, SettingsError)):
        return str(exc)
    if _raised(exc, "etl_pipelines.store", "JobNotFoundError", "JobStateError", "SchemaVersionError"):
        return str(exc)
    if _raised(exc, "sqlalchemy.exc", "OperationalError"):
        return f"job table unreachable: {getattr(exc, 'orig', exc)}"
    if _raised(exc, "dagster_postgres.utils", "DagsterPostgresException"):
        return f"Dagster storage unreachable: {exc} ({exc.__cause__})"
    return None


def clear_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None

    return wrapper  # type: ignore[return-value]


def open_store(settings: Settings | None = None) -> "JobStore":
    """The job table of ETL_DATABASE_URL (or of `settings`)."""
    from etl_pipelines.store import JobStore

    return JobStore((settings or Settings.from_env()).database_url)


def _check_job_table(settings: Settings) -> None:
    """Refuse to start against a job table older or newer than this code (SchemaVersionError names
    the fix), through a connection of its own, closed again: nothing crosses a worker's fork."""
    from etl_pipelines.store import schema

    schema.check(settings.database_url)


def dagster_instance() -> "dg.DagsterInstance":
    """This process's Dagster instance (imports Dagster: only for commands that change runs)."""
    from etl_pipelines.framework.instance import get_instance

    return get_instance()


# The two calls into a job's life that retry-job and mark-completed make, one function each, so
# the commands never say which module owns that rule.


def manual_retry(
    instance: "dg.DagsterInstance", jobs: "JobStore", settings: Settings, job_id: str, actor: str, reason: str
) -> "JobRecord":
    """A failed job queued again, a re-execution of its last run with its whole retry schedule."""
    from etl_pipelines.framework.retries import retry_failed_job

    return retry_failed_job(instance, jobs, settings, job_id, actor=actor, reason=reason)


def cancel_job(
    instance: "dg.DagsterInstance", jobs: "JobStore", job_id: str, actor: str, reason: str | None
) -> "JobRecord":
    """A queued, started or waiting_retry job cancelled, its run taken out of the broker or revoked."""
    from etl_pipelines.framework.coordinator import cancel_job as cancel

    return cancel(instance, jobs, job_id, actor=actor, reason=reason)


def resolve_by_hand(jobs: "JobStore", job_id: str, actor: str, reason: str) -> "JobRecord":
    """A failed job counted as completed without running, with who and why in its history."""
    from etl_pipelines.lifecycle.events import mark_completed

    return mark_completed(jobs, job_id, actor=actor, reason=reason)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value starting with [ or { is JSON, others are left to pydantic."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JobInputError(f"--param takes key=value, got {pair!r}")
        if key in params:
            raise JobInputError(f"--param {key} given twice")
        if value.startswith(("[", "{")):
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise JobInputError(f"--param {key}: invalid JSON ({exc})") from None
        else:
            params[key] = value
    return params


def parse_duration(_ctx: click.Context, _param: click.Parameter, value: str) -> timedelta:
    """`30m`, `24h`, `7d` (also s) as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if not match:
        raise click.BadParameter(f"expected a duration like 30m, 24h or 7d; got {value!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})


def _actor(actor: str | None) -> str:
    """Who did it: --actor, else the OS user."""
    return actor or getpass.getuser()


ACTOR_OPTION = click.option("--actor", help="Who is acting, for the audit trail (default: the OS user).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Dispatch database and ETL jobs to Dagster and follow them."""


@cli.command()
@click.argument("job_type")
@click.option("--queue", "-q", help="Queue (default: the job type's own).")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="A parameter; repeat.")
@click.option(
    "--confirm", is_flag=True, help="Needed to dispatch a destructive job type (job-types marks them)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
@click.option("--wait", is_flag=True, help="Follow the job to its end; exit 0 if completed, else 1.")
@click.option(
    "--timeout", type=click.FloatRange(0), default=None, help="With --wait: give up after this many s."
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Dispatching again with the same KEY (after a timeout, say) gives the job the first call made.",
)
@clear_errors
def dispatch(
    job_type: str,
    queue: str | None,
    params: tuple[str, ...],
    confirm: bool,
    as_json: bool,
    wait: bool,
    timeout: float | None,
    idempotency_key: str | None,
) -> None:
    """Queue a job of JOB_TYPE and print its id (with --wait, follow it to its end)."""
    from etl_pipelines.cli import render
    from etl_pipelines.framework.dispatch import dispatch as dispatch_job
    from etl_pipelines.framework.registry import get_job_type
    from etl_pipelines.store import JobStatus
    from etl_pipelines.store.follow import follow

    job_cls = get_job_type(job_type)
    if job_cls.destructive and not confirm:
        raise click.ClickException(f"{job_type} destroys data: add --confirm to dispatch it")
    handle = dispatch_job(job_cls, queue=queue, idempotency_key=idempotency_key, **parse_params(params))
    if not as_json:
        click.echo(handle.id)
    if not wait:
        if as_json:
            render.emit_json(handle.record().to_dict())
        return
    try:
        with render.StatusLine() as line:
            record = follow(
                open_store(), handle.id, timeout=timeout, poll=0.25, on_record=None if as_json else line
            )
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        render.emit_json(record.to_dict())
    sys.exit(0 if record.status == JobStatus.COMPLETED else 1)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@clear_errors
def status(job_id: str, as_json: bool) -> None:
    """Show one job's record."""
    from etl_pipelines.cli import render

    render.show_record(open_store().require(job_id), as_json)


def _list(
    statuses: Sequence[str],
    queue: str | None,
    job_type: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    from etl_pipelines.cli import render
    from etl_pipelines.store import JobStatus

    if job_type:
        check_job_type(job_type)
    jobs = open_store()
    wanted = [JobStatus(s) for s in statuses]
    found = jobs.list(statuses=wanted, queue=queue, job_type=job_type, limit=limit, offset=offset)
    render.show_records(found, as_json)
    render.show_page(offset, len(found), lambda: jobs.count(statuses=wanted, queue=queue, job_type=job_type))


# Pages: 50 rows unless asked (the newest, for list; the oldest events, for history), --offset on.
LIMIT_OPTION = click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many."
)
OFFSET_OPTION = click.option(
    "--offset",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Skip this many first (the next page: the offset printed on stderr).",
)


@cli.command("list")
@click.option(
    "--status", "statuses", type=click.Choice(STATUSES), multiple=True, help="Only this status; repeat."
)
@click.option("--queue", help="Only this queue.")
@click.option("--type", "job_type", help="Only this job type.")
@LIMIT_OPTION
@OFFSET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def list_jobs(
    statuses: tuple[str, ...],
    queue: str | None,
    job_type: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List jobs, newest first, a page at a time (how many more: on stderr)."""
    _list(statuses, queue, job_type, limit, offset, as_json)


@cli.command("list-failed-jobs")
@click.option("--queue", help="Only this queue.")
@click.option("--type", "job_type", help="Only this job type.")
@LIMIT_OPTION
@OFFSET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def list_failed_jobs(queue: str | None, job_type: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List failed jobs, newest first, a page at a time (how many more: on stderr)."""
    _list(["failed"], queue, job_type, limit, offset, as_json)


@cli.command("retry-job")
@click.option("--job-id", help="The failed job to run again.")
@click.option("--all", "retry_all", is_flag=True, help="Every failed job (filtered by --queue/--type).")
@click.option("--queue", help="With --all: only this queue.")
@click.option("--type", "job_type", help="With --all: only this job type.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="With --all.")
@click.option(
    "--rate",
    type=click.FloatRange(0.1, 1000),
    default=5.0,
    show_default=True,
    help="With --all: at most this many retries queued per second.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be retried; change nothing.")
@click.option("--reason", help="Why, for the audit trail.")
@ACTOR_OPTION
@clear_errors
def retry_job(
    job_id: str | None,
    retry_all: bool,
    queue: str | None,
    job_type: str | None,
    limit: int,
    rate: float,
    dry_run: bool,
    reason: str | None,
    actor: str | None,
) -> None:
    """Run a failed job again: a re-execution of its last run, recorded on the same job.

    The job gets its whole retry schedule again. Only failed jobs can be retried: a job waiting for
    an automatic retry, queued or running is refused (and left as it is).
    """
    from etl_pipelines.lifecycle.queues import check_queue
    from etl_pipelines.store import JobStateError, JobStatus

    if bool(job_id) == retry_all:
        raise click.UsageError("give either --job-id ID or --all")
    if job_id and (queue or job_type):
        raise click.UsageError("--queue and --type filter --all")
    settings = Settings.from_env()
    jobs = open_store(settings)
    if job_id:
        record = jobs.require(job_id)
        if record.status != JobStatus.FAILED:
            raise JobStateError(f"job {job_id} is {record.status.value}, not failed: nothing to retry")
        targets = [record]
    else:
        if job_type:
            check_job_type(job_type)
        if queue:
            check_queue(queue, settings.queues)
        targets = list(jobs.list(statuses=[JobStatus.FAILED], queue=queue, job_type=job_type, limit=limit))
    if dry_run:
        for record in targets:
            click.echo(
                f"would retry {record.id}  {record.job_type:<17} {record.queue:<8} {record.error or ''}"
            )
        click.echo(f"{len(targets)} job(s) would be retried", err=True)
        return
    instance = dagster_instance()
    retried = skipped = 0
    for number, record in enumerate(targets):
        if number:
            time.sleep(1 / rate)  # throttled: a bulk retry must not flood the queue
        try:
            after = manual_retry(instance, jobs, settings, record.id, _actor(actor), reason or "retry-job")
        except Exception as exc:
            if job_id:
                raise
            click.echo(f"skipped {record.id}: {type(exc).__name__}: {exc}")
            skipped += 1
            continue
        click.echo(f"retried {after.id}  {after.job_type:<17} {after.queue:<8} new run {after.run_id}")
        retried += 1
    if retry_all:
        click.echo(f"{retried} job(s) retried, {skipped} skipped", err=True)


@cli.command()
@click.option("--job-id", required=True, help="The queued, started or waiting_retry job to cancel.")
@click.option("--reason", help="Why, for the audit trail.")
@ACTOR_OPTION
@clear_errors
def cancel(job_id: str, reason: str | None, actor: str | None) -> None:
    """Cancel a job: waiting for a worker or its table (taken out of the queue), running (its task
    revoked), or waiting for its retry (the retry never starts)."""
    record = cancel_job(dagster_instance(), open_store(), job_id, _actor(actor), reason)
    click.echo(f"{record.id} {record.status.value}")


@cli.command("mark-completed")
@click.option("--job-id", required=True, help="The failed job to resolve by hand.")
@click.option("--reason", required=True, help="Why it counts as completed (kept in its history).")
@ACTOR_OPTION
@clear_errors
def mark_completed(job_id: str, reason: str, actor: str | None) -> None:
    """Resolve a failed job by hand: its status becomes completed, with who and why in its history."""
    record = resolve_by_hand(open_store(), job_id, _actor(actor), reason)
    click.echo(f"{record.id} marked completed")


@cli.command()
@click.argument("job_id")
@LIMIT_OPTION
@OFFSET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def history(job_id: str, limit: int, offset: int, as_json: bool) -> None:
    """A job's audit trail: every status change and manual action, oldest first, a page at a time."""
    from etl_pipelines.cli import render

    jobs = open_store()
    events = jobs.history(job_id, limit=limit, offset=offset)
    render.show_records(events, as_json, render.HISTORY_COLUMNS, empty="no events")
    render.show_page(offset, len(events), lambda: jobs.count_history(job_id), noun="events")


@cli.command("recover")
@click.option(
    "--since",
    default="24h",
    show_default=True,
    callback=parse_duration,
    help="Look at jobs changed within this (30m, 24h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@clear_errors
def recover_jobs(since: timedelta, dry_run: bool) -> None:
    """Queue again jobs whose work was lost (flushed broker, killed worker, dead dispatcher).

    Jobs that are queued in Dagster or running are left alone; completed jobs are never touched.
    The job_recovery sensor does the same every 30 s while dagster-daemon runs.
    """
    import redis

    from etl_pipelines.framework.recovery import recover

    settings = Settings.from_env()
    try:
        actions = recover(dagster_instance(), open_store(settings), settings, since=since, dry_run=dry_run)
    except redis.RedisError as exc:
        raise click.ClickException(f"broker unreachable, nothing changed after that point: {exc}") from None
    for action in actions:
        click.echo(str(action))
    click.echo(f"{len(actions)} job(s) {'would be ' if dry_run else ''}recovered", err=True)


@cli.command()
@JSON_OPTION
@clear_errors
def stats(as_json: bool) -> None:
    """Per queue: waiting, oldest waiting, running, retries pending, done/failed in the last hour,
    time from dispatch to start (quantiles)."""
    from etl_pipelines.cli import render
    from etl_pipelines.stats import queue_stats

    settings = Settings.from_env()
    render.show_stats(queue_stats(open_store(settings), settings.queues), as_json)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Where to listen (0.0.0.0: every interface, for a scraper on another host or container).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@clear_errors
def metrics(host: str, port: int) -> None:
    """Serve the queue metrics for Prometheus on http://HOST:PORT/metrics until Ctrl-C/SIGTERM."""
    from etl_pipelines.metrics import serve

    settings = Settings.from_env()
    serve(open_store(settings), settings.queues, host, port, echo=click.echo)


@cli.command("job-types")
@JSON_OPTION
def list_job_types(as_json: bool) -> None:
    """List the job types with their queue, whether they destroy data, and their parameters."""
    from etl_pipelines.cli import render
    from etl_pipelines.framework.registry import job_types

    render.show_job_types(job_types(), as_json)


@cli.command()
@JSON_OPTION
@clear_errors
def demo(as_json: bool) -> None:
    """Dispatch the demo batch: the seven sample jobs on their queues (no --confirm needed)."""
    from etl_pipelines.cli import render
    from etl_pipelines.demo import dispatch_demo

    render.show_queued(dispatch_demo(), as_json)


def _queues(value: str | None, settings: Settings) -> list[str]:
    from etl_pipelines.lifecycle.queues import check_queue

    queues = [q.strip() for q in (value or ",".join(settings.queues)).split(",") if q.strip()]
    for queue in queues:
        check_queue(queue, settings.queues)
    # Priority order is the configured order, whatever order they were given in.
    return sorted(set(queues), key=settings.queues.index)


@cli.command()
@click.option("--queues", "-Q", help="Comma-separated queues to consume (default: all of ETL_QUEUES).")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--name", "-n", help="Worker name (Celery hostname, e.g. w1@%h).")
@clear_errors
def worker(queues: str | None, concurrency: int, name: str | None) -> None:
    """A Celery worker taking runs from the queues strictly in priority order.

    Its broker is ETL_REDIS_URL, or without it a SQLite file in DAGSTER_HOME (the embedded default).
    """
    from etl_pipelines.framework.celery.app import make_celery, sql_broker_database, worker_argv
    from etl_pipelines.framework.instance import ensure_dagster_home

    if os.environ.get("ETL_REDIS_URL") and not os.environ.get("DAGSTER_HOME"):
        # Else it would open the embedded default's instance (SQLite in ./.dagster_home), find
        # none of the runs Redis sends it, and drop every task.
        raise click.UsageError(
            "DAGSTER_HOME is not set: set it to a directory holding the deployment's dagster.yaml "
            "(a copy of the repository's), or to the embedded default's ($PWD/.dagster_home) for a "
            "worker beside `etl-jobs stack`"
        )
    ensure_dagster_home()
    settings = Settings.from_env()
    _check_job_table(settings)
    # The launcher's broker and redis_key_prefix in dagster.yaml must be these same settings.
    app = make_celery(
        settings.broker_url, key_prefix=settings.redis_key_prefix, default_queue=settings.queues[-1]
    )
    on_redis = sql_broker_database(settings.broker_url) is None
    # Imported before the pool forks: every pool process starts warm (its first run does not pay
    # ~1.5 s of imports). Nothing here opens a connection, so nothing is shared across the fork.
    import etl_pipelines.definitions  # noqa: F401

    app.worker_main(worker_argv(_queues(queues, settings), concurrency, name, redis=on_redis))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the UI listens.")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--demo/--no-demo", "with_demo", default=False, help="Dispatch the demo batch once up.")
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Celery workers to run (default: 1; on Redis with ETL_REDIS_URL, else on a SQLite broker).",
)
@click.option("--concurrency", type=click.IntRange(1, 256), default=2, show_default=True)
@clear_errors
def stack(host: str, port: int, with_demo: bool, workers: int | None, concurrency: int) -> None:
    """Run dagster-webserver, dagster-daemon and N workers in the foreground until Ctrl-C/SIGTERM.

    Work the last stack left unfinished is recovered first.
    """
    from etl_pipelines.stack import run_stack

    settings = Settings.from_env()  # a bad setting fails here, before anything starts
    code = run_stack(
        settings, host, port, workers=workers, concurrency=concurrency, demo=with_demo, echo=click.echo
    )
    sys.exit(code)


@cli.group()
def db() -> None:
    """The job table's schema (ETL_DATABASE_URL): which revision it is at, and upgrading it."""


@db.command("upgrade")
@clear_errors
def db_upgrade() -> None:
    """Make the job table, or upgrade it in place to this release's schema (Alembic migrations).

    Safe to run while another upgrade runs; a table made before migrations is brought to 0001 and
    upgraded. Processes of this release refuse an older table until this has run.
    """
    from etl_pipelines.store.engine import get_engine
    from etl_pipelines.store.schema import upgrade

    before, after = upgrade(get_engine(Settings.from_env().database_url))
    if before == after:
        click.echo(f"job table already at {after.describe()}")
    else:
        click.echo(f"job table upgraded: {before.describe()} -> {after.describe()}")


@db.command("current")
@clear_errors
def db_current() -> None:
    """Print the job table's schema revision and this release's (exit 1 if they differ)."""
    from etl_pipelines.store.engine import get_engine
    from etl_pipelines.store.schema import HEAD, UPGRADE_COMMAND, state

    found = state(get_engine(Settings.from_env().database_url))
    click.echo(found.describe())
    if not found.current:
        hint = "upgrade etl_pipelines" if found.newer else f"run `{UPGRADE_COMMAND}`"
        click.echo(f"this release needs {HEAD}: {hint}", err=True)
        sys.exit(1)


def main() -> None:
    """The etl-jobs console script."""
    cli(prog_name="etl-jobs")
