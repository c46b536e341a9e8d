"""The job table's schema version: the one way to make or upgrade it (`upgrade`, Alembic migrations
in store/migrations) and the check a process makes before it uses the table (`ensure`).

Who upgrades: `etl-jobs db upgrade`, `etl-jobs stack` at start, and `create_schema` (tests, tools).
Every other process (CLI commands, dispatch, the coordinator, workers, the daemon's sensors) opens
the table through JobStore, which calls `ensure`: an empty database gets the newest schema (as
every release before did, so a fresh deployment needs no extra step); a table older or newer than
the code is refused with a SchemaVersionError that names what fixes it. Once per process per
engine: the answer is cached (a process keeps using the table it accepted).

The check reads one row with plain SQL and imports no Alembic: operators run `etl-jobs status`
in loops.
"""

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import sqlalchemy as sa

from etl_pipelines.store.models import Base

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

# Alembic's default `alembic_version` is Dagster's, in the same PostgreSQL database.
VERSION_TABLE = "etl_alembic_version"
# Every revision in store/migrations/versions, oldest first (a fast test checks they agree).
REVISIONS = ("0001", "0002")
HEAD = REVISIONS[-1]
MIGRATIONS = Path(__file__).parent / "migrations"
# The tables the migrations own (what an un-versioned database made by 3601def or earlier holds).
TABLES = frozenset({"etl_jobs", "etl_job_events", "etl_table_claims"})
# pg_advisory_xact_lock's key for "the job table's schema is being changed" (the single-bigint
# form: framework/fence.py's table locks use the two-int form, a separate key space).
LOCK_KEY = 0x65746C5F736368  # "etl_sch"

UPGRADE_COMMAND = "etl-jobs db upgrade"

_T = TypeVar("_T")


class SchemaVersionError(RuntimeError):
    """The job table's schema is not the one this code was written for (nothing was changed)."""


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its revision (None: no version recorded) and whether any job table exists."""

    revision: str | None
    has_tables: bool

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.has_tables

    @property
    def current(self) -> bool:
        return self.revision == HEAD

    @property
    def newer(self) -> bool:
        """Made by a newer release: a revision this code does not know."""
        return self.revision is not None and self.revision not in REVISIONS

    def describe(self) -> str:
        if self.empty:
            return "no job table"
        if self.revision is None:
            return "un-versioned (made before migrations: release 3601def or earlier)"
        if self.newer:
            return f"revision {self.revision} (newer than this code, whose newest is {HEAD})"
        return f"revision {self.revision}" + (" (head)" if self.current else f" (head is {HEAD})")


def include_name(name: str | None, type_: "NameFilterType", _parents: "NameFilterParentNames") -> bool:
    """Alembic's filter: only the job table's tables (Dagster's share the database)."""
    return type_ != "table" or name in TABLES


def read_state(connection: sa.Connection) -> SchemaState:
    """The schema state `connection`'s database is in (plain SQL; no Alembic import)."""
    names = set(sa.inspect(connection).get_table_names())
    revision = None
    if VERSION_TABLE in names:
        table = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))
        revisions = connection.execute(sa.select(table.c.version_num)).scalars().all()
        if len(revisions) > 1:
            raise SchemaVersionError(f"{VERSION_TABLE} holds several revisions {revisions}: fix it by hand")
        revision = revisions[0] if revisions else None
    return SchemaState(revision=revision, has_tables=bool(names & TABLES))


def state(engine: sa.Engine) -> SchemaState:
    """The schema state of `engine`'s database."""
    with engine.connect() as connection:
        return read_state(connection)


def refusal(state: SchemaState, url: str) -> SchemaVersionError:
    """The error for a process that may not use a table in `state`, naming what fixes it."""
    where = f"the job table at {sa.make_url(url).render_as_string(hide_password=True)}"
    if state.newer:
        return SchemaVersionError(
            f"{where} is at schema revision {state.revision}, newer than this etl_pipelines "
            f"(newest known: {HEAD}): upgrade etl_pipelines here to the release that upgraded it"
        )
    if state.revision is None:
        what = "was made before schema migrations (release 3601def or earlier) and is not versioned"
    else:
        what = f"is at schema revision {state.revision}, older than this etl_pipelines"
    return SchemaVersionError(
        f"{where} {what}; this etl_pipelines needs revision {HEAD}: run `{UPGRADE_COMMAND}` "
        "(with ETL_DATABASE_URL set to that database), then start this again"
    )


_ready: "weakref.WeakSet[sa.Engine]" = weakref.WeakSet()
_ready_lock = threading.Lock()


def ensure(engine: sa.Engine) -> None:
    """Make sure `engine`'s job table is this code's (once per process per engine: cached).

    An empty database gets the newest schema; any other state but the head raises SchemaVersionError.
    """
    if engine in _ready:
        return
    with _ready_lock:
        if engine in _ready:
            return
        found = state(engine)
        if not found.current:
            if not found.empty:
                raise refusal(found, engine.url.render_as_string(hide_password=False))
            # Creating is what every release did on first use; an upgrade is the operator's to run.
            _locked(engine, lambda connection: _upgrade(connection, create_only=True))
        _ready.add(engine)


_checked_urls: set[str] = set()


def check(url: str) -> None:
    """`ensure` for the job table at `url` through a connection of its own, closed again (nothing
    kept across a fork), once per process: what a process calls when it starts, so that it
    refuses a table older or newer than its code before it serves anything."""
    if url in _checked_urls:
        return
    from etl_pipelines.store.engine import network_args

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=network_args(url))
    try:
        ensure(engine)
    finally:
        engine.dispose()
    _checked_urls.add(url)


def upgrade(engine: sa.Engine) -> tuple[SchemaState, SchemaState]:
    """Bring `engine`'s job table to the newest revision, whatever state it is in but newer.

    Safe to run from several processes at once: PostgreSQL serialises it with an advisory lock held
    to its commit (DDL is transactional there), SQLite with BEGIN IMMEDIATE. Returns the state
    before and after.
    """
    result = _locked(engine, lambda connection: _upgrade(connection, create_only=False))
    _ready.add(engine)
    return result


def _locked(engine: sa.Engine, work: Callable[[sa.Connection], _T]) -> _T:
    """`work` in one transaction that no other schema change runs beside; committed if it returns."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        elif connection.dialect.name == "sqlite":
            # pysqlite opens no transaction before DDL by itself; this takes the write lock now, so a
            # second process waits here (busy_timeout) and then reads what the first made.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        result = work(connection)
        connection.commit()
        return result


def _upgrade(connection: sa.Connection, *, create_only: bool) -> tuple[SchemaState, SchemaState]:
    before = read_state(connection)  # read under the lock: whatever the other process did is here
    url = connection.engine.url.render_as_string(hide_password=False)
    if before.current:
        return before, before
    if before.newer or (create_only and not before.empty):
        raise refusal(before, url)
    from alembic import command

    config = alembic_config(connection)
    if before.empty:
        # A fresh database: the models' create_all and a stamp, one step instead of replaying every
        # migration (test_migrations shows both routes give the same schema).
        Base.metadata.create_all(connection, checkfirst=False)
        _migration_context(connection).stamp(script_directory(), HEAD)
    else:
        if before.revision is None:
            baseline(connection)
            _migration_context(connection).stamp(script_directory(), REVISIONS[0])
        command.upgrade(config, HEAD)
    after = read_state(connection)
    if not after.current:  # a migration that forgot to move the version would land here
        raise SchemaVersionError(f"upgrade ended at {after.describe()}, not {HEAD}")
    return before, after


def baseline(connection: sa.Connection) -> None:
    """Bring an un-versioned job table (made by 3601def or 1a55b51; earlier ones lack more) to 0001.

    Missing tables and indexes are created and missing nullable columns added (1a55b51 made
    etl_job_events without `token`); a missing required column means a release too old to upgrade.
    """
    from alembic.operations import Operations

    first = script_directory().get_revision(REVISIONS[0])
    assert first is not None
    frozen: sa.MetaData = first.module.metadata()
    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names())
    operations = Operations(_migration_context(connection))
    for table in frozen.sorted_tables:
        if table.name not in names:
            table.create(connection)
            continue
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in columns]
        required = [column.name for column in missing if not column.nullable]
        if required:
            raise SchemaVersionError(
                f"{table.name} lacks {', '.join(required)}: it was made by an early release whose "
                "table cannot be upgraded in place; move its rows to a new job table"
            )
        for column in missing:
            operations.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(connection)


def alembic_config(connection: sa.Connection | None = None) -> "Config":
    """The Alembic configuration of the job table's migrations (on `connection`, if given)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


_scripts: list["ScriptDirectory"] = []


def script_directory() -> "ScriptDirectory":
    """The migrations, read once per process."""
    from alembic.script import ScriptDirectory

    if not _scripts:
        _scripts.append(ScriptDirectory.from_config(alembic_config()))
    return _scripts[0]


def _migration_context(connection: sa.Connection) -> "MigrationContext":
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(
        connection,
        opts={"version_table": VERSION_TABLE, "target_metadata": Base.metadata, "include_name": include_name},
    )
