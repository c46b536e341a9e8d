"""etl-jobs: dispatch jobs and look at them from the shell (also `python -m etl_pipelines.cli`)."""

import functools
import getpass
import io
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import redis
import sqlalchemy as sa
from dagster_postgres.utils import DagsterPostgresException
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from etl_pipelines.errors import UnknownJobTypeError, UnknownQueueError
from etl_pipelines.framework.base import JobInputError
from etl_pipelines.framework.registry import get_job_type, job_types
from etl_pipelines.lifecycle.queues import check_queue
from etl_pipelines.settings import Settings, SettingsError
from etl_pipelines.stats import QUANTILES, Stats, queue_stats
from etl_pipelines.store import JobNotFoundError, JobRecord, JobStateError, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

F = TypeVar("F", bound=Callable[..., Any])

LIST_COLUMNS = ("id", "job_type", "queue", "status", "retry_count", "created_at", "finished_at")


def clear_errors(func: F) -> F:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (
            JobInputError,
            UnknownQueueError,
            UnknownJobTypeError,
            JobNotFoundError,
            JobStateError,
            SettingsError,
        ) as exc:
            raise click.ClickException(str(exc)) from None
        except sa.exc.OperationalError as exc:
            raise click.ClickException(f"job table unreachable: {exc.orig}") from None
        except DagsterPostgresException as exc:
            raise click.ClickException(f"Dagster storage unreachable: {exc} ({exc.__cause__})") from None

    return wrapper  # type: ignore[return-value]


def store() -> JobStore:
    return JobStore(Settings.from_env().database_url)


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


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


STATUS_STYLES = {
    "queued": "cyan",
    "started": "blue",
    "waiting_retry": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}


def show(table: Table) -> None:
    """Print a table: coloured at the terminal's width, or plain, never wrapped or cut, in a pipe."""
    out = Console(highlight=False)
    if out.is_terminal:
        out.print(table)
        return
    plain = Console(highlight=False, width=100_000, no_color=True, file=io.StringIO())
    plain.print(table)
    for line in plain.file.getvalue().splitlines():
        click.echo(line.rstrip())


def render_table(records: Sequence[Any], columns: Sequence[str] = LIST_COLUMNS) -> Table:
    """Records (or audit events) as a table, one row each, status coloured on a terminal."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.upper(), no_wrap=column != "reason", overflow="fold")
    for record in records:
        cells = []
        for column in columns:
            text = _cell(getattr(record, column))
            style = STATUS_STYLES.get(text) if column in ("status", "to_status") else None
            cells.append(Text(text, style=style or ""))
        table.add_row(*cells)
    return table


def render_record(record: JobRecord) -> Table:
    """One record as `field  value` rows (JSON fields compact, the traceback last)."""
    data = record.to_dict()
    tb = data.pop("traceback")
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in data.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else _cell(value)
        table.add_row(key, Text(text, style=STATUS_STYLES.get(text, "") if key == "status" else ""))
    if tb:
        table.add_row("traceback", Text(tb.rstrip()))
    return table


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Dispatch database and ETL jobs to Dagster and follow them."""


@cli.command()
@click.argument("job_type")
@click.option("--queue", "-q", help="Queue (default: the job type's own).")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="A parameter; repeat.")
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
@click.option("--wait", is_flag=True, help="Follow the job to its end; exit 0 if completed, else 1.")
@click.option(
    "--timeout", type=click.FloatRange(0), default=None, help="With --wait: give up after this many s."
)
@clear_errors
def dispatch(
    job_type: str,
    queue: str | None,
    params: tuple[str, ...],
    as_json: bool,
    wait: bool,
    timeout: float | None,
) -> None:
    """Queue a job of JOB_TYPE and print its id (with --wait, follow it to its end)."""
    from etl_pipelines.framework.dispatch import dispatch as dispatch_job

    job_cls = get_job_type(job_type)
    handle = dispatch_job(job_cls, queue=queue, **parse_params(params))
    if not wait:
        if as_json:
            emit_json(handle.record().to_dict())
        else:
            click.echo(handle.id)
        return
    if not as_json:
        click.echo(handle.id)
    record = follow(store(), handle.id, timeout=timeout, quiet=as_json)
    if as_json:
        emit_json(record.to_dict())
    sys.exit(0 if record.status == JobStatus.COMPLETED else 1)


def describe(record: JobRecord, now: datetime) -> str:
    """One line for where a job is: `retry 2 of 3 in 4m59s (FailedJobError: boom)`."""
    attempt = f" (retry {record.retry_count} of {record.max_retries})" if record.retry_count else ""
    if record.status == JobStatus.WAITING_RETRY and record.next_retry_at is not None:
        left = max(0, int((record.next_retry_at - now).total_seconds() + 0.999))
        due = f"{left // 60}m{left % 60:02d}s" if left >= 60 else f"{left}s"
        return f"retry {record.retry_count + 1} of {record.max_retries} in {due} ({record.error})"
    if record.status == JobStatus.COMPLETED:
        return f"completed{attempt}: {json.dumps(record.result)}"
    if record.status == JobStatus.FAILED:
        return f"failed{attempt}: {record.error}"
    return f"{record.status.value}{attempt}"


def follow(
    jobs: JobStore, job_id: str, timeout: float | None, quiet: bool = False, poll: float = 0.25
) -> JobRecord:
    """Poll the job until it ends, showing each change on stderr (a live line on a terminal)."""
    err = Console(stderr=True, highlight=False)
    live = err.is_terminal and not quiet
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    while True:
        record = jobs.require(job_id)
        state = (record.status, record.retry_count)
        line = describe(record, utcnow())
        if not quiet and state != shown:
            if live and shown is not None:
                err.file.write("\n")
            if not live:
                click.echo(f"{datetime.now(UTC):%H:%M:%S} {line}", err=True)
            shown = state
        if live:
            err.file.write(f"\r\x1b[2K{datetime.now(UTC):%H:%M:%S} {line}")
            err.file.flush()
        if record.status.is_final:
            if live:
                err.file.write("\n")
            return record
        if deadline is not None and time.monotonic() > deadline:
            raise click.ClickException(f"job {job_id} still {record.status.value} after {timeout:g} s")
        time.sleep(poll)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@clear_errors
def status(job_id: str, as_json: bool) -> None:
    """Show one job's record."""
    record = store().require(job_id)
    if as_json:
        emit_json(record.to_dict())
    else:
        show(render_record(record))


def _list(
    statuses: Sequence[str], queue: str | None, job_type: str | None, limit: int, as_json: bool
) -> None:
    if job_type:
        get_job_type(job_type)
    records = store().list(
        statuses=[JobStatus(s) for s in statuses], queue=queue, job_type=job_type, limit=limit
    )
    if as_json:
        emit_json([r.to_dict() for r in records])
    elif records:
        show(render_table(records))
    else:
        click.echo("no jobs", err=True)


STATUS_CHOICE = click.Choice([s.value for s in JobStatus])


@cli.command("list")
@click.option("--status", "statuses", type=STATUS_CHOICE, multiple=True, help="Only this status; repeat.")
@click.option("--queue", help="Only this queue.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def list_jobs(
    statuses: tuple[str, ...], queue: str | None, job_type: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    _list(statuses, queue, job_type, limit, as_json)


@cli.command("list-failed-jobs")
@click.option("--queue", help="Only this queue.")
@click.option("--type", "job_type", help="Only this job type.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def list_failed_jobs(queue: str | None, job_type: str | None, limit: int, as_json: bool) -> None:
    """List failed jobs, newest first."""
    _list([JobStatus.FAILED.value], queue, job_type, limit, as_json)


def _actor(actor: str | None) -> str:
    """Who did it: --actor, else the OS user."""
    return actor or getpass.getuser()


ACTOR_OPTION = click.option("--actor", help="Who is acting, for the audit trail (default: the OS user).")


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
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.retries import queue_retry

    if bool(job_id) == retry_all:
        raise click.UsageError("give either --job-id ID or --all")
    if job_id and (queue or job_type):
        raise click.UsageError("--queue and --type filter --all")
    jobs = store()
    if job_id:
        record = jobs.require(job_id)
        if record.status != JobStatus.FAILED:
            raise JobStateError(f"job {job_id} is {record.status.value}, not failed: nothing to retry")
        targets = [record]
    else:
        if job_type:
            get_job_type(job_type)
        if queue:
            check_queue(queue, Settings.from_env().queues)
        targets = list(jobs.list(statuses=[JobStatus.FAILED], queue=queue, job_type=job_type, limit=limit))
    if dry_run:
        for record in targets:
            click.echo(
                f"would retry {record.id}  {record.job_type:<17} {record.queue:<8} {record.error or ''}"
            )
        click.echo(f"{len(targets)} job(s) would be retried", err=True)
        return
    instance = get_instance()
    retried = skipped = 0
    for number, record in enumerate(targets):
        if number:
            time.sleep(1 / rate)  # throttled: a bulk retry must not flood the queue
        try:
            after = queue_retry(
                instance,
                jobs,
                record.id,
                expect=[JobStatus.FAILED],
                retry_count=0,
                actor=_actor(actor),
                reason=reason or "retry-job",
                action="manual_retry",
            )
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


@cli.command("mark-completed")
@click.option("--job-id", required=True, help="The failed job to resolve by hand.")
@click.option("--reason", required=True, help="Why it counts as completed (kept in its history).")
@ACTOR_OPTION
@clear_errors
def mark_completed(job_id: str, reason: str, actor: str | None) -> None:
    """Resolve a failed job by hand: its status becomes completed, with who and why in its history."""
    record = store().mark_completed(
        job_id,
        {"resolved_manually": reason},
        expect=[JobStatus.FAILED],
        actor=_actor(actor),
        reason=reason,
        action="marked_completed",
    )
    click.echo(f"{record.id} marked completed")


HISTORY_COLUMNS = ("at", "action", "from_status", "to_status", "actor", "run_id", "reason")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@clear_errors
def history(job_id: str, as_json: bool) -> None:
    """A job's audit trail: every status change and manual action, oldest first."""
    events = store().history(job_id)
    if as_json:
        emit_json([event.to_dict() for event in events])
    else:
        show(render_table(events, HISTORY_COLUMNS))


def _duration(value: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", value)
    if not match:
        raise click.BadParameter(f"expected a duration like 30m, 24h or 7d; got {value!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})


@cli.command("recover")
@click.option(
    "--since", default="24h", show_default=True, help="Look at jobs changed within this (30m, 24h, 7d)."
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@clear_errors
def recover_jobs(since: str, dry_run: bool) -> None:
    """Queue again jobs whose work was lost (flushed broker, killed worker, dead dispatcher).

    Jobs that are queued in Dagster or running are left alone; completed jobs are never touched.
    The job_recovery sensor does the same every 30 s while dagster-daemon runs.
    """
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.recovery import recover

    window = _duration(since)
    settings = Settings.from_env()
    try:
        actions = recover(get_instance(), store(), settings, since=window, dry_run=dry_run)
    except redis.RedisError as exc:
        raise click.ClickException(f"broker unreachable, nothing changed after that point: {exc}") from None
    for action in actions:
        click.echo(str(action))
    click.echo(f"{len(actions)} job(s) {'would be ' if dry_run else ''}recovered", err=True)


def _stats_table(stats: Stats) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    hours = stats.window_seconds / 3600
    window = f"{hours:g}h"
    headers = ["QUEUE", "WAITING", "OLDEST", "RUNNING", "RETRY PENDING", f"DONE {window}", f"FAILED {window}"]
    headers += [f"TO START p{round(float(q) * 100)}" for q in map(str, QUANTILES)]
    for header in headers:
        table.add_column(header, justify="left" if header == "QUEUE" else "right")
    for q in stats.queues:
        failed = Text(str(q.failed_last_window), style="bold red" if q.failed_last_window else "")
        row = [
            q.queue,
            str(q.waiting),
            _age(q.oldest_waiting_seconds),
            str(q.running),
            str(q.retries_pending),
        ]
        row += [str(q.completed_last_window)]
        table.add_row(*row, failed, *(_age(q.time_to_start[str(x)]) for x in QUANTILES))
    return table


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@clear_errors
def stats(as_json: bool) -> None:
    """Per queue: waiting, oldest waiting, running, retries pending, done/failed in the last hour,
    time from dispatch to start (quantiles)."""
    result = queue_stats(store(), Settings.from_env().queues)
    if as_json:
        emit_json(result.to_dict())
    else:
        show(_stats_table(result))


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
@clear_errors
def metrics(host: str, port: int) -> None:
    """Serve the queue metrics for Prometheus on http://HOST:PORT/metrics until Ctrl-C/SIGTERM."""
    from etl_pipelines.metrics import serve

    serve(store(), Settings.from_env().queues, host, port, echo=click.echo)


@cli.command("job-types")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_job_types(as_json: bool) -> None:
    """List the job types with their queue and parameters."""
    data = []
    for name, job_cls in job_types().items():
        params = {
            field: {
                "type": str(
                    info.annotation.__name__ if hasattr(info.annotation, "__name__") else info.annotation
                ),
                "required": info.is_required(),
                "default": None if info.is_required() else info.get_default(call_default_factory=True),
                "description": info.description,
            }
            for field, info in job_cls.model_fields.items()
        }
        data.append(
            {
                "job_type": name,
                "queue": job_cls.queue,
                "description": job_cls.description(),
                "parameters": params,
            }
        )
    if as_json:
        emit_json(data)
        return
    for item in data:
        click.echo(f"{item['job_type']}  (queue {item['queue']})  {item['description']}")
        for field, info in item["parameters"].items():
            default = "required" if info["required"] else f"default {info['default']!r}"
            click.echo(f"    {field}: {info['type']}, {default}  {info['description'] or ''}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@clear_errors
def demo(as_json: bool) -> None:
    """Dispatch the demo batch: the seven sample jobs on their queues."""
    from etl_pipelines.demo import dispatch_demo

    queued = dispatch_demo()
    if as_json:
        emit_json(queued)
    else:
        for item in queued:
            click.echo(f"{item['id']}  {item['job_type']:<17} {item['queue']}")


def _queues(value: str | None, settings: Settings) -> list[str]:
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
    """A Celery worker taking runs from the queues strictly in priority order."""
    from etl_pipelines.framework.celery.app import make_celery, worker_argv
    from etl_pipelines.framework.instance import ensure_dagster_home

    ensure_dagster_home()
    settings = Settings.from_env()
    app = make_celery(settings)
    app.worker_main(worker_argv(_queues(queues, settings), concurrency, name))


def recover_at_start(settings: Settings) -> None:
    """What the last stack left unfinished gets its work back before anything new starts."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.recovery import recover

    try:
        actions = recover(get_instance(), store(), settings, since=None)
    except Exception as exc:  # the job_recovery sensor tries again every 30 s
        click.echo(f"recovery at start-up failed ({type(exc).__name__}: {exc}); the sensor retries", err=True)
        return
    for action in actions:
        click.echo(f"recovered: {action}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the UI listens.")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--demo/--no-demo", "with_demo", default=False, help="Dispatch the demo batch once up.")
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=None,
    help="Celery workers to run (default: 1 when ETL_REDIS_URL is set, else 0).",
)
@click.option("--concurrency", type=click.IntRange(1, 256), default=2, show_default=True)
@clear_errors
def stack(host: str, port: int, with_demo: bool, workers: int | None, concurrency: int) -> None:
    """Run dagster-webserver, dagster-daemon and N workers in the foreground until Ctrl-C/SIGTERM."""
    from etl_pipelines.framework.instance import ensure_dagster_home
    from etl_pipelines.stack import run_stack

    home = ensure_dagster_home()
    settings = Settings.from_env()  # a bad setting fails here, before anything starts
    if workers is None:
        workers = 1 if settings.redis_url else 0
    if workers:
        settings.require_redis()

    recover_at_start(settings)

    def on_ready() -> None:
        from etl_pipelines.demo import dispatch_demo

        if with_demo:
            for item in dispatch_demo():
                click.echo(f"queued {item['job_type']} on {item['queue']}: {item['id']}")

    sys.exit(
        run_stack(
            home, host, port, workers=workers, concurrency=concurrency, on_ready=on_ready, echo=click.echo
        )
    )


def main() -> None:
    cli(prog_name="etl-jobs")


if __name__ == "__main__":
    main()
