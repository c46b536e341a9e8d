"""The Celery app: strict queue order, no prefetch, acknowledged after the run.

Two brokers. Production: Redis (broker and result backend). The embedded default: kombu's
SQLAlchemy transport on a SQLite file in DAGSTER_HOME (`sqla+sqlite:///…/broker.sqlite`), results in
the same database through Celery's database backend, so `make run` needs no service. kombu's SQL
transport polls, round-robins over the queues and keeps bindings in memory; `SqlTransport` below
polls often and cheaply, takes the queues strictly in the worker's order, and keeps bindings in
the database so broadcasts (revoke) reach the workers, as on Redis.
"""

import os
from collections.abc import Sequence
from queue import Empty
from typing import Any

import sqlalchemy as sa
from celery import Celery
from kombu.transport import sqlalchemy as kombu_sql
from kombu.transport import virtual
from kombu.utils.scheduling import FairCycle

from etl_pipelines.framework.celery.task import (
    EXECUTE_RUN_TASK,
    START_DUE_RETRY_TASK,
    execute_run,
    start_due_retry,
)

# A message a worker took but has not acknowledged is redelivered after this long: longer than
# any run may last. Any client that consumes from Redis (a worker, a control reply such as
# `ping`) may redeliver with its own value, so it is one constant for every app, not a setting.
VISIBILITY_TIMEOUT_SECONDS = 6 * 3600

# SQL broker: an idle worker looks at its queues this often, so a job waits at most this long for
# an idle worker (Redis blocks on its lists instead). A look is one indexed read (~0.1 ms).
SQL_POLL_SECONDS = 0.05
SQL_BROKER_SCHEMES = ("sqla+", "sqlalchemy+")


def sql_broker_database(broker_url: str) -> str | None:
    """The SQLAlchemy URL of a `sqla+…` broker's database; None for any other broker (Redis)."""
    for scheme in SQL_BROKER_SCHEMES:
        if broker_url.startswith(scheme):
            return broker_url.removeprefix(scheme)
    return None


def make_celery(broker_url: str, *, key_prefix: str = "", default_queue: str) -> Celery:
    """The Celery app on `broker_url`: strict queue order, acked after the run.

    Redis (`redis://…`) is broker and result backend; every Redis key it writes starts with
    `key_prefix` (several deployments on one Redis). A SQL broker (`sqla+sqlite:///…`) keeps the
    results in the same database and has no key prefix (one database per deployment). The launcher
    and the workers of one deployment must agree on `broker_url` and `key_prefix`.
    """
    database = sql_broker_database(broker_url)
    if database is None:
        app = Celery("etl_pipelines", broker=broker_url, backend=broker_url, set_as_current=False)
        transport: dict[str, Any] = {
            # Pop the worker's queues in the order given (high first), never round-robin.
            "queue_order_strategy": "priority",
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        }
        if key_prefix:
            transport["global_keyprefix"] = key_prefix
        app.conf.update(broker_transport_options=transport, result_backend_transport_options=dict(transport))
    else:
        app = Celery("etl_pipelines", broker=database, backend=f"db+{database}", set_as_current=False)
        app.conf.update(
            broker_transport=f"{__name__}:SqlTransport",
            broker_transport_options={"polling_interval": SQL_POLL_SECONDS},
        )
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Dagster logs to stderr itself; Celery re-logging it as WARNING only doubles the noise.
        worker_redirect_stdouts=False,
        result_expires=7 * 24 * 3600,
        task_default_queue=default_queue,
    )
    app.task(name=EXECUTE_RUN_TASK, bind=True)(execute_run)
    app.task(name=START_DUE_RETRY_TASK, ignore_result=True)(start_due_retry)
    return app


def worker_argv(
    queues: Sequence[str], concurrency: int, name: str | None, *, redis: bool = True
) -> list[str]:
    """Celery worker arguments: the queues in priority order, no prefetch (a busy worker holds nothing).

    Celery's --disable-prefetch works on Redis only; on a SQL broker, acks after the run and a
    prefetch of one per slot already keep a busy worker from taking more than it runs.
    """
    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        *(["--disable-prefetch"] if redis else []),
        "--optimization",
        "fair",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]
    if name:
        argv += ["--hostname", name]
    return argv


class _InOrder(FairCycle):
    """Every look starts at the worker's first queue: strict priority (kombu's `priority` order)."""

    def get(self, callback: Any, **kwargs: Any) -> Any:
        self.pos = 0
        return super().get(callback, **kwargs)


# Exchange → queue bindings where every process sees them (kombu's Redis transport keeps them in
# Redis): a broadcast such as revoke reaches the workers' queues, a reply its caller's queue.
_bindings = sa.Table(
    "etl_kombu_binding",
    sa.MetaData(),
    sa.Column("exchange", sa.String(200), primary_key=True),
    sa.Column("routing_key", sa.String(200), primary_key=True),
    sa.Column("pattern", sa.String(200), primary_key=True),
    sa.Column("queue", sa.String(200), primary_key=True),
)


class SqlChannel(kombu_sql.Channel):
    """kombu's SQLAlchemy channel with strict queue order, a cheap idle look and shared bindings."""

    supports_fanout = True
    # This process's engines: kombu's class-wide cache would hand a forked child its parent's
    # connections (the pool forks workers after the consumer has connected).
    _engines: dict[str, Any] = {}
    _waiting: sa.Select[Any] | None = None

    def _engine_from_config(self) -> sa.Engine:
        # kombu passes every transport option to create_engine; ours are not engine arguments.
        engine = sa.create_engine(self.connection.client.hostname)
        _bindings.metadata.create_all(engine)
        return engine

    def _reset_cycle(self) -> None:
        self._cycle = _InOrder(self._get_and_deliver, self._active_queues, Empty)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        # While nothing waits, one indexed read per look instead of a locked transaction per queue.
        if self._consumers and self.qos.can_consume() and not self._anything_waiting():
            raise Empty()
        return super().drain_events(timeout=timeout, callback=callback)

    def _anything_waiting(self) -> bool:
        if self._waiting is None:
            message, queue = self.message_cls.__table__.c, self.queue_cls.__table__.c
            self._waiting = (
                sa.select(message.id)
                .join_from(self.message_cls.__table__, self.queue_cls.__table__, message.queue_id == queue.id)
                .where(queue.name.in_(sa.bindparam("queues", expanding=True)), message.visible == sa.true())
                .limit(1)
            )
        try:
            found = self.session.execute(self._waiting, {"queues": self._active_queues}).first()
        finally:
            self.session.commit()
        return found is not None

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        row = {
            "exchange": exchange,
            "routing_key": routing_key or "",
            "pattern": pattern or "",
            "queue": queue,
        }
        if self.typeof(exchange).type == "fanout":
            # Broadcasts are for whoever listens now (pub/sub on Redis), not a predecessor's backlog.
            self._purge(queue)
        try:
            self.session.execute(sa.insert(_bindings).values(row))
            self.session.commit()
        except sa.exc.IntegrityError:  # bound before (a restart, another process)
            self.session.rollback()

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        b = _bindings.c
        try:
            rows = self.session.execute(
                sa.select(b.routing_key, b.pattern, b.queue).where(b.exchange == exchange)
            ).all()
        finally:
            self.session.commit()
        return [(r.routing_key, r.pattern, r.queue) for r in rows]

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        for _routing_key, _pattern, queue in self.get_table(exchange):
            self._put(queue, message)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        self.session.execute(sa.delete(_bindings).where(_bindings.c.queue == queue))
        self.session.commit()


os.register_at_fork(after_in_child=SqlChannel._engines.clear)


class SqlTransport(kombu_sql.Transport):
    """kombu's SQLAlchemy transport with SqlChannel: fanout too, so Celery's remote control works."""

    Channel = SqlChannel
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic", "fanout"]))
