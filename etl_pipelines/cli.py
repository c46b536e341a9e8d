"""etl-jobs: dispatch jobs and look at them from the shell (also `python -m etl_pipelines.cli`)."""

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import sqlalchemy as sa
from dagster_postgres.utils import DagsterPostgresException

from etl_pipelines.framework.base import JobInputError
from etl_pipelines.framework.queues import UnknownQueueError, check_queue
from etl_pipelines.framework.registry import UnknownJobTypeError, get_job_type, job_types
from etl_pipelines.settings import Settings, SettingsError
from etl_pipelines.store import JobNotFoundError, JobRecord, JobStatus, JobStore

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


def render_table(records: Sequence[JobRecord], columns: Sequence[str] = LIST_COLUMNS) -> str:
    """Records as an aligned text table."""
    rows = [[_cell(getattr(r, c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def render_record(record: JobRecord) -> str:
    """One record as `field: value` lines (JSON fields compact, the traceback last)."""
    data = record.to_dict()
    tb = data.pop("traceback")
    width = max(len(k) for k in data)
    lines = []
    for key, value in data.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else _cell(value)
        lines.append(f"{key.ljust(width)}  {text}")
    if tb:
        lines += ["traceback:", tb.rstrip()]
    return "\n".join(lines)


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
@clear_errors
def dispatch(job_type: str, queue: str | None, params: tuple[str, ...], as_json: bool) -> None:
    """Queue a job of JOB_TYPE and print its id."""
    from etl_pipelines.framework.dispatch import dispatch as dispatch_job

    job_cls = get_job_type(job_type)
    handle = dispatch_job(job_cls, queue=queue, **parse_params(params))
    if as_json:
        emit_json(handle.record().to_dict())
    else:
        click.echo(handle.id)


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
        click.echo(render_record(record))


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
        click.echo(render_table(records))
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
    from etl_pipelines.framework.celery_queue import make_celery, worker_argv
    from etl_pipelines.framework.instance import ensure_dagster_home

    ensure_dagster_home()
    settings = Settings.from_env()
    app = make_celery(settings)
    app.worker_main(worker_argv(_queues(queues, settings), concurrency, name))


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
