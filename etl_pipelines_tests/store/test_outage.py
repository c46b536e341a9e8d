"""The job table's writes on PostgreSQL through a connection cut mid-write and a database outage.

The store talks to PostgreSQL through a small TCP proxy of this module's own, which cuts the
connection at a chosen message (before the write commits, or after its COMMIT reached the server
and before the reply comes back) or refuses connections for a while. Every write must land exactly
once, with exactly one audit row.
"""

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from etl_pipelines.lifecycle import NewJob, RetrySchedule, events
from etl_pipelines.store import JobStatus, JobStore

# psycopg2 commits with a simple query message: 'Q', its length (4 + 7), "COMMIT\0".
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self.drop_reply = False  # the next reply from the server is swallowed, then both close

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class Proxy:
    """127.0.0.1:<port> forwarding to PostgreSQL, with ways to break it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self.refusing = False
        self.refused = 0
        # Cut at the first client message containing `trigger`: before forwarding it, or (with
        # `after_reply`) after forwarding it and swallowing the server's reply.
        self.trigger: bytes | None = None
        self.after_reply = False
        self.cut = threading.Event()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, trigger: bytes, *, after_reply: bool) -> None:
        with self.lock:
            self.trigger, self.after_reply = trigger, after_reply
            self.cut.clear()

    def outage(self) -> None:
        """Cut every connection and refuse new ones until `restore()`."""
        with self.lock:
            self.refusing = True
            links, self.links = self.links, []
        for link in links:
            link.close()

    def restore(self) -> None:
        with self.lock:
            self.refusing = False

    def close(self) -> None:
        self.closed = True
        self.outage()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.refusing:
                    self.refused += 1
                    client.close()
                    continue
            link = Link(client, socket.create_connection(self.upstream))
            with self.lock:
                self.links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _upstream(self, link: Link) -> None:
        try:
            while data := link.client.recv(65536):
                with self.lock:
                    hit = self.trigger is not None and self.trigger in data
                    if hit:
                        self.trigger = None
                if hit and not self.after_reply:
                    self.cut.set()
                    link.close()
                    return
                if hit:
                    link.drop_reply = True
                link.server.sendall(data)
        except OSError:
            pass
        link.close()

    def _downstream(self, link: Link) -> None:
        try:
            while data := link.server.recv(65536):
                if link.drop_reply:
                    # The server has answered: the statement is done there, and the client never
                    # hears of it.
                    self.cut.set()
                    break
                link.client.sendall(data)
        except OSError:
            pass
        link.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Proxy]:
    url = sa.make_url(pg_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy
    proxy.close()


@pytest.fixture
def store(pg_url: str, proxy: Proxy) -> Iterator[JobStore]:
    """A job table reached through the proxy (no TLS: the proxy reads the messages)."""
    url = sa.make_url(pg_url).set(host="127.0.0.1", port=proxy.port, query={"sslmode": "disable"})
    store = JobStore(url.render_as_string(hide_password=False), retry_seconds=30)
    yield store
    store.engine.dispose()


@pytest.fixture
def direct(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def _job(job_id: str) -> NewJob:
    return NewJob(
        id=job_id,
        job_type="data_import",
        job_class="x.DataImport",
        queue="low",
        payload={"path": "rows.csv"},
        schedule=RetrySchedule.explicit((60.0,)),
    )


def _trail(direct: sa.Engine, job_id: str) -> list[str]:
    """The audit trail as PostgreSQL has it, read past the proxy."""
    with direct.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT action FROM etl_job_events WHERE job_id = :id ORDER BY id"), {"id": job_id}
        )
        return [row.action for row in rows]


def _started(store: JobStore, job_id: str) -> None:
    events.bootstrap(store, _job(job_id), job_id)
    events.started(store, job_id, job_id)


@pytest.mark.parametrize("after_reply", [True, False], ids=["commit-landed-reply-lost", "cut-before-commit"])
def test_completed_write_lands_once_through_a_cut_connection(
    store: JobStore, proxy: Proxy, direct: sa.Engine, after_reply: bool
) -> None:
    """The final write of a successful import, its connection cut: the import stays completed
    (not failed, not run again) with one `completed` in its history."""
    job_id = f"cut-{after_reply}"
    _started(store, job_id)
    proxy.arm(COMMIT if after_reply else b"UPDATE etl_jobs", after_reply=after_reply)
    done = events.completed(store, job_id, job_id, {"imported": 1000})
    assert proxy.cut.is_set(), "the proxy never cut the write"
    assert done.status == JobStatus.COMPLETED and done.result == {"imported": 1000}
    assert _trail(direct, job_id) == ["queued", "started", "completed"]
    with direct.connect() as connection:
        status = connection.execute(
            sa.text("SELECT status FROM etl_jobs WHERE id = :id"), {"id": job_id}
        ).scalar_one()
    assert status == "completed"


@pytest.mark.parametrize("after_reply", [True, False], ids=["commit-landed-reply-lost", "cut-before-commit"])
def test_failure_and_insert_land_once_through_a_cut_connection(
    store: JobStore, proxy: Proxy, direct: sa.Engine, after_reply: bool
) -> None:
    """The record's creation and an attempt's failure: the same guarantee."""
    job_id = f"fail-{after_reply}"
    proxy.arm(COMMIT if after_reply else b"INSERT INTO etl_jobs", after_reply=after_reply)
    assert events.bootstrap(store, _job(job_id), job_id, must_be_new=True).status == JobStatus.QUEUED
    assert proxy.cut.is_set()
    events.started(store, job_id, job_id)
    proxy.arm(COMMIT if after_reply else b"UPDATE etl_jobs", after_reply=after_reply)
    after = events.attempt_failed(
        store, store.require(job_id), job_id, error="E: x", traceback=None, schedule=_job(job_id).schedule
    )
    assert proxy.cut.is_set()
    assert after.status == JobStatus.WAITING_RETRY and after.retry_count == 0
    assert _trail(direct, job_id) == ["queued", "started", "waiting_retry"]


def test_writes_wait_out_an_outage(store: JobStore, proxy: Proxy, direct: sa.Engine) -> None:
    """The job table's database gone for a while (a restart, a failover): the outcome is written
    when it is back, not lost."""
    _started(store, "outage")
    proxy.outage()
    back = threading.Timer(3.0, proxy.restore)
    back.start()
    try:
        done = events.completed(store, "outage", "outage", {"imported": 1})
    finally:
        back.cancel()
    assert proxy.refused >= 2  # it really was down while the write was tried
    assert done.status == JobStatus.COMPLETED
    assert _trail(direct, "outage") == ["queued", "started", "completed"]
