"""The fence around an attempt's work in the target database.

Recovery gives up on an attempt whose heartbeat is stale and moves its job on, but the attempt may
still be alive (a paused process, a host cut off from the job table). The fence keeps it from
working beside its retry:

- **One session per attempt** (AttemptSession): made for that attempt only, named after it
  (`application_name` etl:<run_id>:<job_type>) and never made again. Once the server has ended it
  (recovery's pg_terminate_backend, a restart, a broken network) every later use raises FenceLost:
  SQLAlchemy would otherwise reconnect an invalidated Connection on its next use.
- **An advisory lock per target table** (`lock`), taken on that session before handle() runs and
  held until the attempt ends: a retry cannot start its work while the abandoned attempt's session
  lives, however recovery judged it.
- **Ending an attempt's sessions** (`end_sessions`): recovery and the operator's terminate end
  every session whose name names the attempt's run; its lock goes with them.
- **A lease** (framework/attempt.py's Heartbeat): an attempt that has written no heartbeat for
  LEASE_BEATS beats (the job table unreachable from its worker) gives its session up itself, before
  recovery (BEATS_MISSED beats) may judge it lost: no statement and no COMMIT of its work goes to
  the target after that, so recovery's retry never doubles work committed during the outage.
- **Work done** (`mark_done`): once handle() has returned, its work is committed; the session is
  renamed etl:<run_id>:done while the attempt records its outcome (through a job table outage, for
  up to ETL_OUTCOME_RETRY_SECONDS). Recovery leaves such an attempt alone (`attempt_done`): running
  it again would do its committed work twice.

PostgreSQL only. A SQLite target (the embedded default) has no advisory locks and no sessions to
end: there the table's line in the job table (lifecycle.admission) is the only guard, and a paused
worker resumed after recovery gave up on it may still write.
"""

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from etl_pipelines.store.engine import network_args

logger = logging.getLogger(__name__)

# The advisory lock of a table is (FENCE_CLASSID, hashtext(table_key)): the two-int form, so
# pg_locks shows it as classid/objid (objsubid 2) and nobody else's single-bigint locks collide.
FENCE_CLASSID = 0x65746C5F  # "etl_"
LOCK_POLL_SECONDS = 0.25
LOCK_LOG_SECONDS = 10.0
# How long ending a session waits for its backend to exit (PostgreSQL 14+).
END_WAIT_MS = 5000
# PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name.
MAX_APPLICATION_NAME = 63
# The application_name suffix of an attempt whose work is done (handle() returned).
DONE = "done"
# An attempt gives itself up after this many heartbeat intervals without a beat written: less than
# the BEATS_MISSED after which recovery may judge it lost (lifecycle/diagnosis.py), with half a beat
# for a COMMIT in flight to land.
LEASE_BEATS = 2.5

_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:classid, hashtext(:key))")
# pg_locks shows the int4 hash as an unsigned oid.
_HOLDERS = sa.text(
    "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = :classid"
    " AND l.objid = (hashtext(:key)::bigint & 4294967295)::oid"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " ORDER BY l.pid"
)


class FenceLost(RuntimeError):
    """The attempt's session in the target database is gone (ended by recovery or an operator, a
    restart, a lost connection) or its job moved on: the attempt may not touch the target again."""


def attempt_prefix(run_id: str) -> str:
    """The start of the application_name of every session of the attempt in `run_id`."""
    return f"etl:{run_id}:"


def application_name(run_id: str, job_type: str) -> str:
    """The application_name of an attempt's sessions: etl:<run_id>:<job_type>, at most 63 bytes
    (Dagster's run ids are 36 characters, so the prefix always survives)."""
    return (attempt_prefix(run_id) + job_type)[:MAX_APPLICATION_NAME]


def done_name(run_id: str) -> str:
    """The application_name of the session of an attempt whose work is done."""
    return attempt_prefix(run_id) + DONE


def attempt_done(url: str, run_id: str) -> bool:
    """Does the attempt in `run_id` hold a session marked done on `url`'s server (its work is
    committed, its outcome not yet recorded)? False on SQLite."""
    if not is_postgresql(url):
        return False
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": done_name(run_id)},
            ).scalar_one()
    finally:
        engine.dispose()
    return bool(found)


def is_postgresql(url: str) -> bool:
    return sa.make_url(url).get_backend_name() == "postgresql"


def lock_holders(connection: sa.Connection, key: str) -> list[tuple[int, str]]:
    """(pid, application_name) of the sessions holding table `key`'s lock in this database."""
    rows = connection.execute(_HOLDERS, {"classid": FENCE_CLASSID, "key": key}).all()
    return [(row.pid, row.application_name) for row in rows]


def end_sessions(url: str, run_id: str, wait_ms: int = END_WAIT_MS) -> list[int]:
    """End every session of the attempt in `run_id` on `url`'s server (its locks are freed with
    them), waiting for each backend to exit; the pids ended. A session marked done is left (its work
    is committed: it only waits to record its outcome). Nothing to do on SQLite."""
    if not is_postgresql(url):
        return []
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            wait = (connection.dialect.server_version_info or (0,)) >= (14,)
            end = "pg_terminate_backend(pid, :wait_ms)" if wait else "pg_terminate_backend(pid)"
            rows = connection.execute(
                sa.text(
                    f"SELECT pid, {end} AS ended FROM pg_stat_activity"  # noqa: S608 (no input)
                    " WHERE left(application_name, length(:prefix)) = :prefix"
                    " AND application_name <> :done AND pid <> pg_backend_pid()"
                ),
                {"prefix": attempt_prefix(run_id), "done": done_name(run_id), "wait_ms": wait_ms},
            ).all()
    finally:
        engine.dispose()
    if rows:
        logger.warning("ended the database sessions %s of run %s", [r.pid for r in rows], run_id)
    return [row.pid for row in rows if row.ended]


class AttemptSession:
    """The attempt's one session in a PostgreSQL target: made on first use, never made again.

    Used from the attempt's thread; `lose()` may be called from its heartbeat thread.
    """

    def __init__(self, url: str, name: str, run_id: str | None = None):
        self.url = url
        self.name = name
        self.run_id = run_id
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None
        self._dbapi: Any = None
        self._lost: str | None = None
        self._in_use = False
        self.is_done = False
        self._guard = threading.Lock()

    # -- the session -------------------------------------------------------------------------

    def _make_engine(self) -> sa.Engine:
        engine = sa.create_engine(
            self.url,
            poolclass=sa.pool.NullPool,
            connect_args={**network_args(self.url), "application_name": self.name},
        )
        sa.event.listen(engine, "do_connect", self._connect_once)
        sa.event.listen(engine, "connect", self._remember)
        sa.event.listen(engine, "before_cursor_execute", self._before_execute)
        sa.event.listen(engine, "commit", self._before_execute)  # runs before the DBAPI commit
        return engine

    def _connect_once(self, *_args: Any) -> None:
        # Called before the DBAPI connects, also when SQLAlchemy revalidates an invalidated
        # Connection: once a session was made, another would be a new, unfenced one. (A first
        # connect that failed may be tried again: no session existed.)
        if self._dbapi is not None:
            self._lost = self._lost or "its session in the target database was ended"
            raise FenceLost(self._message())

    def _remember(self, dbapi_connection: Any, _record: Any) -> None:
        self._dbapi = dbapi_connection

    def _before_execute(self, *_args: Any) -> None:
        if self._lost is not None:
            raise FenceLost(self._message())

    def _message(self) -> str:
        return f"attempt session {self.name}: {self._lost}; it never reconnects"

    @property
    def lost(self) -> str | None:
        """Why the session may no longer be used, or None."""
        if self._lost is None and self._connection is not None and self._connection.invalidated:
            self._lost = "its session in the target database was ended"
        return self._lost

    def connection(self) -> sa.Connection:
        """The session (made now if it was not): FenceLost once it is gone."""
        with self._guard:
            if self.lost is not None:
                raise FenceLost(self._message())
            if self._connection is None:
                if self._engine is None:
                    self._engine = self._make_engine()
                self._connection = self._engine.connect()
            return self._connection

    def fence_error(self, exc: BaseException) -> FenceLost | None:
        """FenceLost if `exc` came from the session being ended or given up (else None)."""
        if self.lost is None:
            return None
        error = FenceLost(self._message())
        error.__cause__ = exc
        return error

    def lose(self, reason: str) -> None:
        """Give the session up (the job moved on): its running statement is cancelled, every
        later use raises FenceLost. Safe from another thread."""
        self._lost = self._lost or reason
        with self._guard:
            if self.is_done:
                return  # its work is committed: nothing left to stop
            dbapi = self._dbapi
        cancel = getattr(dbapi, "cancel", None)
        if cancel is not None:
            with contextlib.suppress(Exception):  # nothing running, or already gone
                cancel()

    def mark_done(self) -> bool:
        """Rename the session etl:<run_id>:done (handle() returned: its work is committed); True if
        it was. Through the DBAPI connection, whatever the fence says: a session given up for its
        lease is still the attempt's, and done; one the server ended cannot be renamed."""
        dbapi, run_id = self._dbapi, self.run_id
        if dbapi is None or run_id is None or self._connection is None or self._connection.invalidated:
            return False
        with self._guard:  # lose() does not cancel the rename half-way
            try:
                cursor = dbapi.cursor()
                try:
                    cursor.execute("SELECT set_config('application_name', %s, false)", (done_name(run_id),))
                finally:
                    cursor.close()
                dbapi.commit()
            except Exception:  # ended meanwhile: recovery judged it already
                logger.warning("could not mark the session of run %s done", run_id, exc_info=True)
                return False
            self.is_done = True
        return True

    def close(self) -> None:
        """End the session (its locks go with it)."""
        with self._guard:
            connection, engine = self._connection, self._engine
            self._lost = self._lost or "the attempt is over"
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead session closes all the same
                connection.close()
        if engine is not None:
            engine.dispose()

    # -- what an attempt does with it ----------------------------------------------------------

    @contextlib.contextmanager
    def use(
        self, statement_timeout: float | None, *, transaction: bool = False, autocommit: bool = False
    ) -> Iterator[sa.Connection]:
        """The session for one block of the job's work, with its statement timeout; uncommitted
        work is rolled back at the end, as closing a pooled connection would."""
        connection = self.connection()
        if self._in_use:
            raise RuntimeError(
                "the attempt's target session is already in use: one ctx.connect()/begin()/"
                "autocommit() block on the target at a time"
            )
        self._in_use = True
        try:
            if autocommit:
                connection.execution_options(isolation_level="AUTOCOMMIT")
            if statement_timeout:
                connection.execute(
                    sa.text("SELECT set_config('statement_timeout', :ms, false)"),
                    {"ms": f"{int(statement_timeout * 1000)}"},
                )
                if not autocommit:
                    connection.commit()
            try:
                if transaction:
                    with connection.begin():
                        yield connection
                else:
                    yield connection
            finally:
                self._reset(connection, statement_timeout, autocommit)
        finally:
            self._in_use = False

    def _reset(self, connection: sa.Connection, statement_timeout: float | None, autocommit: bool) -> None:
        if self.lost is not None:
            return  # nothing more goes to the server
        with contextlib.suppress(sa.exc.DBAPIError, FenceLost):  # the error in flight says more
            if connection.in_transaction():
                connection.rollback()  # what the block left uncommitted, as closing would
            if statement_timeout:
                connection.execute(sa.text("RESET statement_timeout"))
                connection.commit()  # also ends SQLAlchemy's transaction in autocommit mode
            if autocommit:
                connection.execution_options(isolation_level=connection.default_isolation_level)

    def lock(self, key: str, log: Callable[[str], None] | None = None) -> None:
        """Hold table `key`'s advisory lock on this session until it ends; wait while another
        attempt's session holds it (polled: the wait ends when the session is lost)."""
        connection = self.connection()
        started = time.monotonic()
        next_log = started
        while True:
            taken = connection.execute(_TRY_LOCK, {"classid": FENCE_CLASSID, "key": key}).scalar()
            if connection.in_transaction():
                connection.commit()  # a session-level lock outlives the transaction
            if taken:
                return
            now = time.monotonic()
            if now >= next_log:
                holders = ", ".join(name or str(pid) for pid, name in lock_holders(connection, key))
                if connection.in_transaction():
                    connection.commit()
                message = (
                    f"table {key} is held by another attempt's session ({holders or 'unknown'}); "
                    f"waiting for it ({now - started:.0f} s so far)"
                )
                (log or logger.warning)(message)
                next_log = now + LOCK_LOG_SECONDS
            time.sleep(LOCK_POLL_SECONDS)
