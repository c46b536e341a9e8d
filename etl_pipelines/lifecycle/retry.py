"""How long a job waits before each retry: a Dagster RetryPolicy's terms, or an explicit list.

A job type declares `dg.RetryPolicy(max_retries, delay, backoff, jitter)`; the framework turns it
into a RetrySchedule (no Dagster import here) and `wait_before(n)` computes the wait with
Dagster's own formula (`dagster._core.definitions.policy.calculate_delay`, checked against it in
the tests). An explicit list of delays (ETL_RETRY_DELAYS, e.g. the old system's 60,300,900) gives
exact waits instead. The wait is durable: the job table holds it, no process sleeps through it.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Backoff = Literal["linear", "exponential"]
Jitter = Literal["full", "plus_minus"]


@dataclass(frozen=True)
class RetrySchedule:
    """`max_retries` retries; the wait before each is `delays[n - 1]` if given, else Dagster's formula."""

    max_retries: int
    delay: float = 0.0
    backoff: Backoff | None = None
    jitter: Jitter | None = None
    delays: tuple[float, ...] | None = None

    @classmethod
    def explicit(cls, delays: tuple[float, ...]) -> "RetrySchedule":
        """Exactly these waits, one retry per entry."""
        return cls(max_retries=len(delays), delays=tuple(delays))

    def wait_before(self, retry: int, rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before retry number `retry` (1 = the first), or None: no retry left."""
        if retry < 1 or retry > self.max_retries:
            return None
        if self.delays is not None:
            return float(self.delays[retry - 1])
        # Dagster's calculate_delay(attempt_num=retry, backoff, jitter, base_delay=delay).
        base = float(self.delay)
        if self.backoff == "exponential":
            wait = ((1 << retry) - 1) * base  # (2**n - 1) * delay
        elif self.backoff == "linear":
            wait = retry * base
        else:
            wait = base
        if self.jitter == "full":
            wait = float(rand()) * wait
        elif self.jitter == "plus_minus":
            wait = wait + 2 * float(rand()) * base - base
        return max(0.0, wait)  # plus_minus jitter can go below zero: a retry cannot be due in the past

    def describe(self) -> str:
        """`60, 180, 420 s` or `exponential from 60 s, full jitter, 3 retries`."""
        if self.max_retries == 0:
            return "no retries"
        if self.delays is not None or self.jitter is None:
            waits = [self.wait_before(n) for n in range(1, self.max_retries + 1)]
            return ", ".join(f"{w:g}" for w in waits if w is not None) + " s"
        shape = f"{self.backoff or 'fixed'} from {self.delay:g} s, {self.jitter} jitter"
        return f"{shape}, {self.max_retries} retries"
