"""Things made once per process (engines, Dagster instances, run submitters), forgotten after a fork.

Celery's prefork pool and Dagster's daemon fork workers: a connection pool must never be shared
across a fork, so a child starts with an empty cache (os.register_at_fork) instead of every cache
keying its entries by pid. `clear()` closes what a cache holds (tests, shutdown).
"""

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ProcessCache(Generic[V]):
    """A dict of values made on first use in this process; empty again in a forked child."""

    def __init__(self, close: Callable[[V], object] | None = None):
        self._close = close
        self._values: dict[Hashable, V] = {}
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value for `key`, made by `make()` the first time it is asked for in this process."""
        with self._lock:
            if key not in self._values:
                self._values[key] = make()
            return self._values[key]

    def clear(self) -> None:
        """Close (if the cache was given a way to) and forget every value."""
        with self._lock:
            values, self._values = list(self._values.values()), {}
        if self._close is not None:
            for value in values:
                self._close(value)

    def _forget(self) -> None:
        # In the child: the parent's values (and a lock another thread may have held) are not ours.
        self._values = {}
        self._lock = threading.Lock()
