"""Configuration from environment variables, read when asked for (never at import time)."""

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUEUES = ("high", "medium", "low", "default")
DEFAULT_RETRY_DELAYS = (60.0, 300.0, 900.0)
DEFAULT_ALLOWED_SCHEMAS = ("auth",)
# The code location name in workspace.yaml; runs submitted by dispatch() carry it.
LOCATION_NAME = "etl_pipelines"


class SettingsError(ValueError):
    """A configuration variable has a value that cannot be used."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_delays(value: str) -> tuple[float, ...]:
    """Parse a comma-separated list of retry delays in seconds (an empty string means no retries)."""
    try:
        delays = tuple(float(part) for part in _split(value))
    except ValueError:
        raise SettingsError(
            f"ETL_RETRY_DELAYS must be comma-separated seconds, e.g. 60,300,900; got {value!r}"
        ) from None
    if any(d < 0 for d in delays):
        raise SettingsError(f"ETL_RETRY_DELAYS must not be negative; got {value!r}")
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
    retry_delays: tuple[float, ...]
    allowed_schemas: tuple[str, ...]

    @classmethod
    def from_env(cls) -> "Settings":
        """Read the settings from the environment (see README, Configuration)."""
        env = os.environ
        database_url = env.get("ETL_DATABASE_URL") or f"sqlite:///{dagster_home() / 'etl.sqlite'}"
        queues = _split(env.get("ETL_QUEUES", "")) or DEFAULT_QUEUES
        if len(set(queues)) != len(queues):
            raise SettingsError(f"ETL_QUEUES lists a queue twice: {','.join(queues)}")
        delays = env.get("ETL_RETRY_DELAYS")
        return cls(
            database_url=database_url,
            target_database_url=env.get("ETL_TARGET_DATABASE_URL") or database_url,
            queues=queues,
            retry_delays=DEFAULT_RETRY_DELAYS if delays is None else parse_delays(delays),
            allowed_schemas=_split(env.get("ETL_ALLOWED_SCHEMAS", "")) or DEFAULT_ALLOWED_SCHEMAS,
        )
