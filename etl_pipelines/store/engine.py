"""Engines, one per database URL per process (Celery and Dagster fork: never share one across a fork)."""

import os
from typing import Any

import sqlalchemy as sa

from etl_pipelines.process_cache import ProcessCache

engines: ProcessCache[sa.Engine] = ProcessCache(close=lambda engine: engine.dispose())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Several processes (run workers, CLI, daemon) write the same file: WAL lets readers through
    # and busy_timeout makes writers wait for the lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine(url: str) -> sa.Engine:
    """The process's engine for `url`, created on first use."""
    return engines.get(url, lambda: create_engine(url))


# Seconds a new PostgreSQL connection may take: a database that does not answer (a dropped network,
# a host being replaced) fails the try, so a write's retry deadline (store.resilience) holds.
CONNECT_TIMEOUT = 10


def network_args(url: str) -> dict[str, Any]:
    """libpq connection parameters (psycopg2, psycopg; other drivers keep their defaults) that bound
    a silent network: a connect timeout, and TCP keepalives plus a limit on unacknowledged data, so
    a cut link that drops packets is noticed in about 20 s instead of the kernel's 15 minutes. The
    URL's own values win."""
    parsed = sa.make_url(url)
    if parsed.get_driver_name() not in ("psycopg2", "psycopg"):
        return {}
    defaults = {
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 20_000,
    }
    return {key: value for key, value in defaults.items() if key not in parsed.query}


def create_engine(url: str) -> sa.Engine:
    """A new engine with the settings etl_pipelines wants for each backend.

    Every engine hides SQL parameters from its errors and logs (`hide_parameters`): an error's
    text reaches the job table, Dagster's event log, the failure alert and the CLI, and a failed
    statement's bound values are row data (an import's rows, say) and may be secrets.
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
        if parsed.database in (None, "", ":memory:"):
            # One in-memory database for the whole engine (the unit tier's job table), not one per thread.
            engine = sa.create_engine(
                url,
                connect_args={"check_same_thread": False},
                poolclass=sa.pool.StaticPool,
                hide_parameters=True,
            )
        else:
            engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = network_args(url)
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        hide_parameters=True,
        connect_args=connect_args,
    )
