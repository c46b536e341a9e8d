"""BaseJob: a job type is a subclass with typed parameters (pydantic fields) and `handle()`."""

import inspect
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
import pydantic
import sqlalchemy as sa

from etl_pipelines.errors import JobInputError
from etl_pipelines.identifiers import allowed_table
from etl_pipelines.lifecycle import NewJob, RetrySchedule
from etl_pipelines.lifecycle.progress import Progress
from etl_pipelines.settings import Settings

if TYPE_CHECKING:
    from etl_pipelines.framework.dispatch import JobHandle
    from etl_pipelines.framework.fence import AttemptSession
    from etl_pipelines.resources.database import TargetDatabase


def snake_case(name: str) -> str:
    """`TruncateTable` -> `truncate_table`, `ETLImport` -> `etl_import`."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


@dataclass(frozen=True)
class JobContext:
    """What `handle()` gets besides its parameters."""

    job_id: str
    run_id: str
    retry_count: int
    log: Any  # Dagster's logger: context.log in an op
    database: "TargetDatabase"
    settings: Settings
    timeout: float  # seconds; PostgreSQL cancels a statement that runs longer
    # The attempt's one fenced session in a PostgreSQL target (framework/fence.py): every
    # connect()/begin()/autocommit() on the target uses it. None: the target is not PostgreSQL
    # (or no attempt runs), and the target's pooled connections are used.
    session: "AttemptSession | None" = None
    # application_name of the attempt's connections to other databases (PostgreSQL sources).
    application_name: str | None = None
    # What handle() reports as it goes (ctx.progress.update(rows_read=...)): written to the job
    # record with each heartbeat and logged to the run (lifecycle/progress.py).
    progress: Progress = field(default_factory=Progress)

    def connect(self, url: str | None = None) -> AbstractContextManager[sa.Connection]:
        """A connection to the target (or `url`) with the job's statement timeout; commit as you go."""
        if url is None and self.session is not None:
            return self.session.use(self.timeout)
        return self.database.connect(self.timeout, url=url, application_name=self.application_name)

    def begin(self, url: str | None = None) -> AbstractContextManager[sa.Connection]:
        """One transaction on the target (or `url`) with the job's statement timeout."""
        if url is None and self.session is not None:
            return self.session.use(self.timeout, transaction=True)
        return self.database.connect(
            self.timeout, url=url, transaction=True, application_name=self.application_name
        )

    def autocommit(self, url: str | None = None) -> AbstractContextManager[sa.Connection]:
        """A connection outside any transaction (VACUUM, REINDEX CONCURRENTLY need one)."""
        if url is None and self.session is not None:
            return self.session.use(self.timeout, autocommit=True)
        return self.database.connect(
            self.timeout, url=url, autocommit=True, application_name=self.application_name
        )


# What the design asks of every job type unless it declares otherwise: 3 retries, exponential
# backoff from 60 s (Dagster's formula: 60, 180 and 420 s).
DEFAULT_RETRY_POLICY = dg.RetryPolicy(max_retries=3, delay=60, backoff=dg.Backoff.EXPONENTIAL)


def schedule_of(policy: dg.RetryPolicy) -> RetrySchedule:
    """A Dagster RetryPolicy as the lifecycle's RetrySchedule (same terms, no Dagster types)."""
    return RetrySchedule(
        max_retries=policy.max_retries,
        delay=float(policy.delay or 0),
        backoff=None if policy.backoff is None else policy.backoff.value.lower(),  # type: ignore[arg-type]
        jitter=None if policy.jitter is None else policy.jitter.value.lower(),  # type: ignore[arg-type]
    )


class BaseJob(dg.Config):
    """Base class of every job type. Subclasses declare parameters as fields and implement handle()."""

    # The queue a job of this type goes to unless dispatch names another.
    queue: ClassVar[str] = "default"
    # Retries, in Dagster's terms; interpreted durably (a re-execution queued when due, no process
    # sleeps), never given to the op (Dagster would retry in memory). ETL_RETRY_DELAYS_<JOB_TYPE>
    # wins over a declared policy; ETL_RETRY_DELAYS only over the default one.
    retry_policy: ClassVar[dg.RetryPolicy] = DEFAULT_RETRY_POLICY
    # Destructive job types change or remove data: `etl-jobs dispatch` asks for --confirm. (Every
    # job type, destructive or not, touches only tables in ETL_ALLOWED_SCHEMAS: see tables().)
    destructive: ClassVar[bool] = False
    # Seconds a statement may run; None means ETL_JOB_TIMEOUT (default 300), 0 means no limit.
    timeout_seconds: ClassVar[float | None] = None
    # Seconds a whole attempt may run (the run's dagster/max_runtime is built from it); None means
    # the statement timeout, for jobs that run one long statement.
    attempt_seconds: ClassVar[float | None] = None

    def handle(self, ctx: JobContext) -> Any:
        """Do the work; return a JSON-serialisable result."""
        raise NotImplementedError(f"{type(self).__name__}.handle() is not implemented")

    def validate_input(self, settings: Settings) -> None:
        """Check parameters beyond their types (identifiers, schemas); raise JobInputError.

        Overrides call super(): every table of tables() is checked here by the one rule
        (identifiers.allowed_table: schema-qualified, in ETL_ALLOWED_SCHEMAS, never a system
        catalog, Dagster's storage or the job table), for every job type, before any SQL runs.
        """
        for table in self.tables():
            allowed_table(table, settings.allowed_schemas)

    def tables(self) -> list[str]:
        """Every table of the target database this job's parameters name (its target, by
        default); types that name more (archive_old_rows' archive table) add theirs."""
        target = self.target()
        return [target] if target is not None else []

    def result_metadata(self, result: Any) -> dict[str, dg.MetadataValue]:
        """How the result appears on the run in the Dagster UI (override for tables, counts)."""
        return {}

    def target(self) -> str | None:
        """The table this job touches: two jobs with the same target never run at once."""
        table = getattr(self, "table", None)
        return table if isinstance(table, str) and table else None

    @classmethod
    def timeout(cls, settings: Settings) -> float:
        """Seconds a statement of this job may run (the class's, else ETL_JOB_TIMEOUT); 0: no limit."""
        return settings.job_timeout if cls.timeout_seconds is None else float(cls.timeout_seconds)

    @classmethod
    def attempt_limit(cls, settings: Settings) -> float | None:
        """Seconds one attempt may take in all, or None for no limit."""
        if cls.attempt_seconds is not None:
            return float(cls.attempt_seconds) or None
        return cls.timeout(settings) or None

    @classmethod
    def job_type(cls) -> str:
        """The name used everywhere: module, Dagster job, CLI argument, `job_type` column."""
        return snake_case(cls.__name__)

    @classmethod
    def job_class(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def description(cls) -> str:
        doc = inspect.getdoc(cls)
        if not doc or cls.__doc__ is None:
            raise TypeError(f"job type {cls.__name__} needs a docstring: it is its description")
        return doc.strip()

    @classmethod
    def retry_schedule(cls, settings: Settings) -> RetrySchedule:
        """Retries of this type: ETL_RETRY_DELAYS_<TYPE>, else the type's own retry_policy, else
        ETL_RETRY_DELAYS, else the default policy.

        A type that declares its policy knows something a global setting does not (demo_batch must
        never run twice); only a setting naming the type overrides it.
        """
        explicit = settings.retry_delays_by_type.get(cls.job_type())
        if explicit is None and cls.retry_policy is DEFAULT_RETRY_POLICY:
            explicit = settings.retry_delays
        if explicit is not None:
            return RetrySchedule.explicit(explicit)
        return schedule_of(cls.retry_policy)

    @classmethod
    def new_job(cls, job_id: str, queue: str, payload: dict[str, Any], settings: Settings) -> NewJob:
        """What a record of a job of this type is made of (lifecycle.events.bootstrap makes it)."""
        return NewJob(
            id=job_id,
            job_type=cls.job_type(),
            job_class=cls.job_class(),
            queue=queue,
            payload=payload,
            schedule=cls.retry_schedule(settings),
        )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "BaseJob":
        """Build and check a job from keyword parameters; JobInputError names what is wrong."""
        known = set(cls.model_fields)
        unknown = sorted(set(params) - known)
        if unknown:
            raise JobInputError(
                f"{cls.job_type()}: unknown parameter(s) {', '.join(unknown)}; "
                f"parameters: {', '.join(sorted(known)) or '(none)'}"
            )
        # Dagster's Config turns a missing field into None; name it as missing instead.
        missing = [n for n, f in cls.model_fields.items() if f.is_required() and n not in params]
        if missing:
            raise JobInputError(f"{cls.job_type()}: missing required parameter(s) {', '.join(missing)}")
        try:
            return cls(**params)
        except pydantic.ValidationError as exc:
            raise JobInputError(f"{cls.job_type()}: {_describe(exc)}") from None

    @classmethod
    def dispatch(
        cls, *, queue: str | None = None, idempotency_key: str | None = None, **params: Any
    ) -> "JobHandle":
        """Queue a job of this type and return at once with its handle (`.id`); a repeated
        `idempotency_key` returns the job it first made."""
        from etl_pipelines.framework.dispatch import dispatch

        return dispatch(cls, queue=queue, idempotency_key=idempotency_key, **params)


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "parameters"
        problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(problems)
