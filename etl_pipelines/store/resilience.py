"""Writes to the job table that outlast a lost connection: which errors to try again, and how long.

A PostgreSQL restart or failover must not turn a finished attempt into a failed one (and a done
import into one that runs again): JobStore's writes go through `retry_write`, which tries again on
connection-level errors with a bounded exponential backoff until a deadline, and never on an error
that would only repeat (a refused transition, an integrity error, bad SQL).

A retried write may find that its first try did commit (the reply was lost with the connection):
JobStore recognises its own write by a token in the audit row and returns it (store.py).
"""

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from etl_pipelines.settings import DEFAULT_OUTCOME_RETRY_SECONDS

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WritePolicy:
    """Try again after `first_delay` s, doubling up to `max_delay` s, while the next try starts
    within `deadline` s of the first (0: try once)."""

    deadline: float = DEFAULT_OUTCOME_RETRY_SECONDS
    first_delay: float = 0.2
    max_delay: float = 10.0

    def delays(self) -> Iterator[float]:
        """The waits between tries, in order, their sum within the deadline."""
        spent, delay = 0.0, self.first_delay
        while spent + delay <= self.deadline:
            yield delay
            spent += delay
            delay = min(delay * 2, self.max_delay)


def is_transient(exc: BaseException) -> bool:
    """True for an error that says the connection failed, not the statement: worth trying again.

    OperationalError (server gone, connection refused, a restart's "terminating connection",
    SQLite's "database is locked", a deadlock or serialization failure: nothing was written),
    InterfaceError (a connection already closed), and any DBAPIError that invalidated its
    connection. Never an IntegrityError, ProgrammingError or DataError on a live connection:
    those would be refused again.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))


def retry_write(
    write: Callable[[bool], T],
    policy: WritePolicy,
    *,
    what: str = "job table write",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`write(retrying)` until it returns, trying again on transient errors as `policy` allows.

    `retrying` is False on the first try and True after a failed one: then the write must check
    whether the failed try committed after all before writing again. The last error is raised
    when the policy gives up; any other error at once.
    """
    delays = policy.delays()
    start = clock()
    retrying = False
    while True:
        try:
            return write(retrying)
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = next(delays, None)
            # The deadline counts the tries too (a connect may hang until its timeout).
            if delay is None or clock() - start + delay > policy.deadline:
                raise
            log.warning("%s failed (%s); trying again in %.1f s", what, type(exc).__name__, delay)
            sleep(delay)
            retrying = True
