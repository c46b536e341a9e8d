"""Configuration from environment variables, read when asked for (never at import time)."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_QUEUES = ("high", "medium", "low", "default")
DEFAULT_ALLOWED_SCHEMAS = ("auth",)
DEFAULT_JOB_TIMEOUT = 300.0
# How long the job table's writes keep retrying through a lost connection (a database restart, a
# failover): an attempt's outcome is written late rather than lost, and a done import not run again.
DEFAULT_OUTCOME_RETRY_SECONDS = 120.0
# The largest result (JSON) the job table keeps; a larger one is kept as a summary (lifecycle.bounds).
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
# The code location name in workspace.yaml; runs submitted by dispatch() carry it.
LOCATION_NAME = "etl_pipelines"


class SettingsError(ValueError):
    """A configuration variable has a value that cannot be used."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


_TYPE_DELAYS = "ETL_RETRY_DELAYS_"


def parse_delays(value: str, variable: str = "ETL_RETRY_DELAYS") -> tuple[float, ...]:
    """Parse a comma-separated list of retry delays in seconds (an empty string means no retries)."""
    try:
        delays = tuple(float(part) for part in _split(value))
    except ValueError:
        raise SettingsError(
            f"{variable} must be comma-separated seconds, e.g. 60,300,900; got {value!r}"
        ) from None
    if any(d < 0 for d in delays):
        raise SettingsError(f"{variable} must not be negative; got {value!r}")
    return delays


def dagster_home() -> Path:
    """DAGSTER_HOME, or the project-local `.dagster_home` of the embedded default."""
    return Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").absolute()


@dataclass(frozen=True)
class Settings:
    """Every setting etl_pipelines reads, with its documented default."""

    database_url: str
    target_database_url: str
    queues: tuple[str, ...]
    # Explicit retry waits from the environment (ETL_RETRY_DELAYS), None when unset: a job type's
    # RetryPolicy applies then. Per job type: ETL_RETRY_DELAYS_<JOB_TYPE>, by job type.
    retry_delays: tuple[float, ...] | None
    allowed_schemas: tuple[str, ...]
    job_timeout: float
    alert_webhook_url: str | None
    import_dir: Path
    redis_url: str | None
    redis_key_prefix: str
    # The Celery broker of the workers: ETL_REDIS_URL, else a SQLite file in DAGSTER_HOME (kombu's
    # SQLAlchemy transport), so the embedded default needs no service.
    broker_url: str
    heartbeat_seconds: float
    recovery_grace_seconds: float
    retry_delays_by_type: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    # ETL_OUTCOME_RETRY_SECONDS: how long a job table write retries through a lost connection.
    outcome_retry_seconds: float = DEFAULT_OUTCOME_RETRY_SECONDS
    # ETL_MAX_RESULT_BYTES: the largest result (JSON, bytes) stored as it is.
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    @classmethod
    def from_env(cls) -> "Settings":
        """Read the settings from the environment (see README, Configuration)."""
        env = os.environ
        database_url = env.get("ETL_DATABASE_URL") or f"sqlite:///{dagster_home() / 'etl.sqlite'}"
        queues = _split(env.get("ETL_QUEUES", "")) or DEFAULT_QUEUES
        if len(set(queues)) != len(queues):
            raise SettingsError(f"ETL_QUEUES lists a queue twice: {','.join(queues)}")
        delays = env.get("ETL_RETRY_DELAYS")
        redis_url = env.get("ETL_REDIS_URL") or None
        return cls(
            database_url=database_url,
            target_database_url=env.get("ETL_TARGET_DATABASE_URL") or database_url,
            queues=queues,
            retry_delays=None if delays is None else parse_delays(delays),
            retry_delays_by_type={
                name.removeprefix(_TYPE_DELAYS).lower(): parse_delays(value, name)
                for name, value in env.items()
                if name.startswith(_TYPE_DELAYS) and name != _TYPE_DELAYS
            },
            allowed_schemas=_split(env.get("ETL_ALLOWED_SCHEMAS", "")) or DEFAULT_ALLOWED_SCHEMAS,
            job_timeout=_seconds("ETL_JOB_TIMEOUT", env.get("ETL_JOB_TIMEOUT"), DEFAULT_JOB_TIMEOUT),
            alert_webhook_url=env.get("ETL_ALERT_WEBHOOK_URL") or None,
            import_dir=Path(env.get("ETL_IMPORT_DIR") or dagster_home() / "imports").absolute(),
            redis_url=redis_url,
            redis_key_prefix=env.get("ETL_REDIS_KEY_PREFIX", ""),
            broker_url=redis_url or f"sqla+sqlite:///{dagster_home() / 'broker.sqlite'}",
            heartbeat_seconds=_seconds("ETL_HEARTBEAT_SECONDS", env.get("ETL_HEARTBEAT_SECONDS"), 10.0)
            or 10.0,
            recovery_grace_seconds=_seconds(
                "ETL_RECOVERY_GRACE_SECONDS", env.get("ETL_RECOVERY_GRACE_SECONDS"), 30.0
            ),
            outcome_retry_seconds=outcome_retry_seconds(env),
            max_result_bytes=max_result_bytes(env),
        )

    @property
    def target_dialect(self) -> str:
        """The target database's SQL dialect (postgresql, sqlite, ...), from its URL's scheme."""
        return self.target_database_url.split(":", 1)[0].split("+", 1)[0]

    def require_redis(self) -> str:
        """ETL_REDIS_URL, which the Celery launcher and workers cannot do without."""
        if not self.redis_url:
            raise SettingsError("ETL_REDIS_URL is not set: Celery workers need a Redis broker")
        return self.redis_url

    def named_database_url(self, name: str) -> str:
        """URL of a named database (ETL_DATABASE_URL_<NAME>), e.g. the source of a sync or import."""
        variable = f"ETL_DATABASE_URL_{name.upper()}"
        url = os.environ.get(variable)
        if not url:
            raise SettingsError(f"no database named {name!r}: set {variable}")
        return url


def outcome_retry_seconds(env: Mapping[str, str]) -> float:
    """ETL_OUTCOME_RETRY_SECONDS (0: a job table write is tried once)."""
    name = "ETL_OUTCOME_RETRY_SECONDS"
    return _seconds(name, env.get(name), DEFAULT_OUTCOME_RETRY_SECONDS)


def max_result_bytes(env: Mapping[str, str]) -> int:
    """ETL_MAX_RESULT_BYTES: a positive whole number of bytes."""
    name = "ETL_MAX_RESULT_BYTES"
    value = env.get(name)
    if value is None or value == "":
        return DEFAULT_MAX_RESULT_BYTES
    try:
        limit = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number of bytes; got {value!r}") from None
    if limit < 1:
        raise SettingsError(f"{name} must be at least 1; got {value!r}")
    return limit


def _seconds(name: str, value: str | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds; got {value!r}") from None
    if seconds < 0:
        raise SettingsError(f"{name} must not be negative (0: no limit); got {value!r}")
    return seconds
