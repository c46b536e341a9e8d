"""Step stdout/stderr captured for the Dagster UI: to local files, or into the database.

Dagster's LocalComputeLogManager mirrors each step's stdout and stderr back to the console with a
`tail -F` process per stream (and a Python watcher for each): four processes per step, ~64 ms of
CPU, more than a trivial job's whole run otherwise costs (bench/README.md, "Worker CPU profile").
FileComputeLogManager redirects the streams into the same files and spawns nothing: the UI shows
the same logs; only the live echo of a step's prints in the worker's own console is gone (its
structured log, events and results are unaffected). It is the embedded default's (one host).

DatabaseComputeLogManager is production's (dagster.yaml): a worker on any host captures into a
local file the same way, and copies what the step wrote into `etl_compute_logs` in the database
every process already has (Dagster's storage), as chunks appended while the step runs (every
`upload_interval` seconds, for live viewing) and when it ends; the webserver reads them from
there. Each stream keeps at most `max_bytes` (a print loop cannot fill the database): the rest is
dropped and a marker line says so. Dagster's own S3/GCS/Azure managers do the same into object
storage, for a deployment that has one.
"""

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from etl_pipelines.framework._dagster_internal import (
    IO_TYPE_EXTENSION,
    CapturedLogContext,
    CapturedLogSubscription,
    CloudStorageComputeLogManager,
    ComputeIOType,
    ConfigurableClass,
    ConfigurableClassData,
    LocalComputeLogManager,
    PollingComputeLogSubscriptionManager,
    ensure_file,
    redirect_to_file,
    touch_file,
)
from etl_pipelines.settings import dagster_home
from etl_pipelines.store.engine import network_args

logger = logging.getLogger(__name__)


class FileComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager minus the console mirror; `base_dir` defaults to $DAGSTER_HOME/storage."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "base_dir": dg.Field(dg.StringSource, is_required=False),
            "polling_timeout": dg.Field(dg.Float, is_required=False),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "FileComputeLogManager":
        config = dict(config_value)
        # Where Dagster's own default puts them (the instance is still being built: no .get() here).
        config.setdefault("base_dir", str(dagster_home() / "storage"))
        return cls(inst_data=inst_data, **config)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, "out")
        errpath = self.get_captured_local_path(log_key, "err")
        ensure_file(outpath)
        ensure_file(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # Left on the file system so that readers know the capture is complete.
        touch_file(self.complete_artifact_path(log_key))


# -- in the database ------------------------------------------------------------------------------

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # per stream of a capture (a step's stdout, its stderr)
DEFAULT_UPLOAD_INTERVAL = 5.0  # seconds between uploads of a running step's new output
CHUNK_BYTES = 1024 * 1024  # the largest row: a long stream is several
TABLE_NAME = "etl_compute_logs"

# One row per chunk of a captured stream. A stream is its chunks in `start` order; `start` is the
# chunk's byte offset in the stream as stored (the marker of a truncated stream included), so a
# reader's cursor is an offset into the same bytes whichever chunks it spans. The chunk with
# `final` set is the stream's last: the capture has ended (it may be empty).
metadata = sa.MetaData()
chunks = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("log_key", sa.String(1024), primary_key=True),  # the log key's parts joined by "/"
    sa.Column("io_type", sa.String(6), primary_key=True),  # stdout | stderr
    sa.Column("start", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("final", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


def truncation_marker(max_bytes: int) -> bytes:
    """The line that ends a stream cut at `max_bytes`."""
    return (
        f"\n[etl_pipelines: output truncated: only the first {max_bytes} bytes of this stream are"
        " stored (DatabaseComputeLogManager max_bytes)]\n"
    ).encode()


def _key(log_key: Sequence[str]) -> str:
    return "/".join(log_key)


def _like_prefix(prefix: Sequence[str]) -> str:
    escaped = _key(prefix).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%"


@dataclasses.dataclass
class _Upload:
    """How far one stream of a capture has been copied: local file bytes read, stored bytes written."""

    read: int = 0
    stored: int = 0
    truncated: bool = False


class _Subscriptions(PollingComputeLogSubscriptionManager):
    """Dagster's polling subscriptions, every `interval` seconds (Dagster's: 5), which also end once
    the capture is complete (Dagster's never do)."""

    interval = 2.0

    def _poll(self, shutdown_event: threading.Event) -> None:
        while not shutdown_event.wait(self.interval):
            for watch_key, subscriptions in list(self._subscriptions.items()):
                for subscription in list(subscriptions):
                    if shutdown_event.is_set():
                        return
                    try:
                        complete = self._manager.is_capture_complete(subscription.log_key)
                        subscription.fetch()  # after the check: nothing written before it is missed
                    except Exception:  # the database for a moment: the next poll tries again
                        logger.warning("step log subscription poll failed", exc_info=True)
                        continue
                    if complete:
                        subscription.complete()
                        if subscription in subscriptions:  # an unsubscribe may have come first
                            subscriptions.remove(subscription)
                if not subscriptions:
                    self._subscriptions.pop(watch_key, None)


class DatabaseComputeLogManager(CloudStorageComputeLogManager, ConfigurableClass):
    """Captures locally like FileComputeLogManager; stores the output in `etl_compute_logs`.

    The table is created if missing, in the database of `database_url` (dagster.yaml gives it
    Dagster's storage URL). Reads (the UI, GraphQL `capturedLogs`, the download link) come from the
    table, from any host. See the module docstring for the bound and the live uploads.
    """

    def __init__(
        self,
        database_url: str,
        local_dir: str | None = None,
        upload_interval: float | None = DEFAULT_UPLOAD_INTERVAL,
        max_bytes: int = DEFAULT_MAX_BYTES,
        inst_data: ConfigurableClassData | None = None,
    ):
        self._database_url = database_url
        self._local_manager = FileComputeLogManager(base_dir=local_dir or str(dagster_home() / "storage"))
        self._upload_interval = upload_interval or None
        self._max_bytes = max_bytes
        self._inst_data = inst_data
        self._engine: sa.Engine | None = None
        self._engine_pid = 0
        self._uploads: dict[tuple[str, ComputeIOType], _Upload] = {}
        self._lock = threading.Lock()
        self._subscription_manager = _Subscriptions(self)

    # -- configuration ----------------------------------------------------------------------------

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "database_url": dg.Field(
                dg.StringSource, description="SQLAlchemy URL of the log table's database."
            ),
            "local_dir": dg.Field(
                dg.StringSource,
                is_required=False,
                description="Where a capture is written before it is stored (default $DAGSTER_HOME/storage).",
            ),
            "upload_interval": dg.Field(
                dg.Float,
                is_required=False,
                default_value=DEFAULT_UPLOAD_INTERVAL,
                description="Seconds between uploads of a running step's output (0: at its end only).",
            ),
            "max_bytes": dg.Field(
                dg.Int,
                is_required=False,
                default_value=DEFAULT_MAX_BYTES,
                description="The most bytes stored per stream of a step; the rest is dropped, marked.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "DatabaseComputeLogManager":
        return cls(inst_data=inst_data, **config_value)

    @property
    def local_manager(self) -> LocalComputeLogManager:
        return self._local_manager

    @property
    def upload_interval(self) -> int | None:
        return self._upload_interval  # type: ignore[return-value]  # seconds, a float is fine

    # -- the table --------------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """This process's engine (a forked child makes its own), the table created if missing."""
        if self._engine is None or self._engine_pid != os.getpid():
            # A silent network (a cut link) fails an upload in ~20 s, not the kernel's minutes; the
            # captured output is row data: never in an error message.
            if self._engine is not None:  # inherited across a fork: the parent's to close
                self._engine.dispose(close=False)
            # One connection kept: uploads are serialised (the lock), reads are few.
            engine = sa.create_engine(
                self._database_url,
                pool_size=1,
                max_overflow=3,
                pool_recycle=3600,
                hide_parameters=True,
                connect_args=network_args(self._database_url),
            )
            try:
                metadata.create_all(engine, checkfirst=True)
            except sa.exc.DBAPIError:  # another process created it at the same moment
                if not sa.inspect(engine).has_table(TABLE_NAME):
                    raise
            self._engine, self._engine_pid = engine, os.getpid()
        return self._engine

    def _insert(self) -> Any:
        # An upload tried again after a failure that did land (its reply lost) starts its chunk at
        # the same offset, with the same bytes or more (the file only grows): the longer is kept.
        dialect = self.engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            return chunks.insert()
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(chunks)
        return insert.on_conflict_do_update(
            index_elements=[chunks.c.log_key, chunks.c.io_type, chunks.c.start],
            set_={"data": insert.excluded.data, "final": insert.excluded.final},
            where=sa.func.length(insert.excluded.data) >= sa.func.length(chunks.c.data),
        )

    def _execute(self, statement: Any, rows: list[dict[str, Any]] | None = None) -> Any:
        """Run one statement in its own transaction; once more on a connection found dead."""
        for attempt in (1, 2):
            try:
                with self.engine.begin() as connection:
                    result = connection.execute(statement, rows) if rows else connection.execute(statement)
                    return result.all() if result.returns_rows else None
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    # -- writing ----------------------------------------------------------------------------------

    def _rows(self, log_key: Sequence[str], io_type: ComputeIOType, final: bool) -> list[dict[str, Any]]:
        """The stream's output not stored yet, as rows (advancing the upload state)."""
        state = self._uploads.setdefault((_key(log_key), io_type), _Upload())
        path = self._local_manager.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])
        rows: list[dict[str, Any]] = []
        if not state.truncated:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = state.read
            wanted = min(size, self._max_bytes) - state.read
            if wanted > 0:
                with open(path, "rb") as file:
                    file.seek(state.read)
                    while wanted > 0 and (data := file.read(min(CHUNK_BYTES, wanted))):
                        rows.append(self._row(log_key, io_type, state.stored, data))
                        state.read += len(data)
                        state.stored += len(data)
                        wanted -= len(data)
            if size > self._max_bytes:
                state.truncated = True
                rows.append(self._row(log_key, io_type, state.stored, truncation_marker(self._max_bytes)))
                state.stored += len(rows[-1]["data"])
        if final:
            if rows:
                rows[-1]["final"] = True
            else:
                rows.append(self._row(log_key, io_type, state.stored, b"", final=True))
        return rows

    @staticmethod
    def _row(
        log_key: Sequence[str], io_type: ComputeIOType, start: int, data: bytes, final: bool = False
    ) -> dict[str, Any]:
        return {
            "log_key": _key(log_key),
            "io_type": io_type.value,
            "start": start,
            "data": data,
            "final": final,
        }

    def _store(self, log_key: Sequence[str], io_types: Sequence[ComputeIOType], final: bool) -> None:
        with self._lock:
            keys = [(_key(log_key), io_type) for io_type in io_types]
            before = {key: dataclasses.replace(self._uploads[key]) for key in keys if key in self._uploads}
            try:
                rows = [row for io_type in io_types for row in self._rows(log_key, io_type, final)]
                if rows:
                    self._execute(self._insert(), rows)
            except Exception:
                # Not stored: the next upload starts where this one did (no hole in the stream).
                for key in keys:
                    if key in before:
                        self._uploads[key] = before[key]
                    else:
                        self._uploads.pop(key, None)
                raise
            finally:
                if final:  # stored or given up: this capture is over either way
                    for io_type in io_types:
                        self._uploads.pop((_key(log_key), io_type), None)

    def upload_to_cloud_storage(
        self, log_key: Sequence[str], io_type: ComputeIOType, partial: bool = False
    ) -> None:
        """Store what the stream has gained since the last upload (all of it, the last time)."""
        self._store(log_key, [io_type], final=not partial)

    def on_progress(self, log_key: Sequence[str]) -> None:
        # The parent asks the database whether the capture is complete first: the local file says.
        if not self._local_manager.is_capture_complete(log_key):
            self._store(log_key, list(ComputeIOType), final=False)

    @contextmanager
    def _poll_for_local_upload(self, log_key: Sequence[str]) -> Iterator[None]:
        # Dagster's thread sleeps a whole interval after its capture ended; this one leaves at once.
        if not self._upload_interval:
            yield
            return
        done = threading.Event()
        interval = self._upload_interval

        def upload_while_running() -> None:
            while not done.wait(interval):
                try:
                    self.on_progress(log_key)
                except Exception as exc:  # the next tick, or the final upload, tries again
                    _warn(f"could not store the running step's output ({type(exc).__name__}: {exc})")

        thread = threading.Thread(target=upload_while_running, name="etl-compute-log-upload", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(30)

    def _on_capture_complete(self, log_key: Sequence[str]) -> None:
        # Both streams in one statement; the local files go once they are stored. A database that
        # cannot be reached loses the step's output for the UI, never the run: they stay on disk.
        try:
            self._store(log_key, list(ComputeIOType), final=True)
        except Exception as exc:
            path = self._local_manager.get_captured_local_path(log_key, "err")
            _warn(f"could not store the step's output ({type(exc).__name__}: {exc}); kept in {path}")
            return
        self._remove_local(log_key)

    @contextmanager
    def open_log_stream(self, log_key: Sequence[str], io_type: ComputeIOType) -> Iterator[IO | None]:
        # Schedule and sensor ticks open one per evaluation: one that logged nothing stores nothing.
        with self._local_manager.open_log_stream(log_key, io_type) as stream:
            yield stream
        path = self._local_manager.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])
        if os.path.exists(path) and os.path.getsize(path):
            self._on_capture_complete(log_key)
        else:
            self._remove_local(log_key)

    def _remove_local(self, log_key: Sequence[str]) -> None:
        try:
            self._local_manager.delete_logs(log_key=log_key)
            # The run's directories too, when nothing else is in them (a warm worker runs many).
            base = Path(self._local_manager._base_dir).resolve()
            folder = Path(self._local_manager.get_captured_local_path(log_key, "out")).parent
            while folder != base and base in folder.parents:
                folder.rmdir()
                folder = folder.parent
        except OSError:
            pass

    # -- reading ----------------------------------------------------------------------------------

    def cloud_storage_has_logs(
        self, log_key: Sequence[str], io_type: ComputeIOType, partial: bool = False
    ) -> bool:
        """Whether the stream has chunks stored (partial), or its final one (not partial)."""
        condition = (chunks.c.log_key == _key(log_key)) & (chunks.c.io_type == io_type.value)
        if not partial:
            condition &= chunks.c.final
        return bool(self._execute(sa.select(sa.literal(1)).where(condition).limit(1)))

    def is_capture_complete(self, log_key: Sequence[str]) -> bool:
        return self.cloud_storage_has_logs(log_key, ComputeIOType.STDERR)

    def get_log_data_for_type(
        self, log_key: Sequence[str], io_type: ComputeIOType, offset: int, max_bytes: int | None
    ) -> tuple[bytes | None, int]:
        """The stored stream's bytes from `offset` (at most `max_bytes`), and the offset after them."""
        offset = offset or 0
        end = chunks.c.start + sa.func.length(chunks.c.data)
        query = (
            sa.select(chunks.c.start, chunks.c.data)
            .where(chunks.c.log_key == _key(log_key), chunks.c.io_type == io_type.value, end > offset)
            .order_by(chunks.c.start)
        )
        if max_bytes is not None:
            query = query.where(chunks.c.start < offset + max_bytes)
        rows = self._execute(query)
        if not rows:
            return None, offset
        # Contiguous chunks from `offset`; should a chunk be missing, the reader goes on after it
        # rather than reading bytes twice.
        pieces: list[bytes] = []
        first = position = rows[0].start
        for row in rows:
            if row.start != position:
                break
            pieces.append(bytes(row.data))
            position += len(row.data)
        offset = max(offset, first)
        data = b"".join(pieces)[offset - first :]
        if max_bytes is not None:
            data = data[:max_bytes]
        return data, offset + len(data)

    def download_from_cloud_storage(
        self, log_key: Sequence[str], io_type: ComputeIOType, partial: bool = False
    ) -> None:
        """The stored stream into the local file the webserver's download link serves."""
        data, _ = self.get_log_data_for_type(log_key, io_type, 0, None)
        path = self._local_manager.get_captured_local_path(
            log_key, IO_TYPE_EXTENSION[io_type], partial=partial
        )
        ensure_file(path)
        with open(path, "wb") as file:
            file.write(data or b"")

    def display_path_for_type(self, log_key: Sequence[str], io_type: ComputeIOType) -> str:
        database = sa.make_url(self._database_url)
        where = f"{database.database} on {database.host or 'localhost'}"
        return f"{TABLE_NAME} in {where}: {_key(log_key)} ({io_type.value})"

    def download_url_for_type(self, log_key: Sequence[str], io_type: ComputeIOType) -> str | None:
        # The webserver's /logs/... endpoint copies the stored stream out (download_from_cloud_storage).
        return self._local_manager.get_captured_log_download_url(log_key, io_type)

    def get_log_keys_for_log_key_prefix(
        self, log_key_prefix: Sequence[str], io_type: ComputeIOType
    ) -> Sequence[list[str]]:
        query = (
            sa.select(chunks.c.log_key)
            .where(chunks.c.log_key.like(_like_prefix(log_key_prefix), escape="\\"))
            .where(chunks.c.io_type == io_type.value)
            .distinct()
        )
        return [row.log_key.split("/") for row in self._execute(query)]

    def delete_logs(self, log_key: Sequence[str] | None = None, prefix: Sequence[str] | None = None) -> None:
        if log_key:
            condition = chunks.c.log_key == _key(log_key)
        elif prefix:
            condition = chunks.c.log_key.like(_like_prefix(prefix), escape="\\")
        else:
            raise ValueError("delete_logs needs a log_key or a prefix")
        self._execute(sa.delete(chunks).where(condition))
        self._local_manager.delete_logs(log_key=log_key, prefix=prefix)

    # -- subscriptions (the UI's live view) -------------------------------------------------------

    def on_subscribe(self, subscription: CapturedLogSubscription) -> None:
        self._subscription_manager.add_subscription(subscription)

    def on_unsubscribe(self, subscription: CapturedLogSubscription) -> None:
        self._subscription_manager.remove_subscription(subscription)

    def dispose(self) -> None:
        self._subscription_manager.dispose()
        self._local_manager.dispose()
        if self._engine is not None and self._engine_pid == os.getpid():
            self._engine.dispose()
        self._engine = None


def _warn(message: str) -> None:
    logger.warning("compute logs: %s", message)
