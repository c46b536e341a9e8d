"""The retry schedule: Dagster's RetryPolicy terms with Dagster's own formula, or explicit delays."""

import itertools

import dagster as dg
import pytest
from dagster._core.definitions.policy import calculate_delay

from etl_pipelines.framework.base import DEFAULT_RETRY_POLICY, schedule_of
from etl_pipelines.framework.registry import get_job_type, job_types
from etl_pipelines.lifecycle import RetrySchedule
from etl_pipelines.settings import Settings, SettingsError


class FixedRandom:
    """Dagster's jitter calls random(); ours takes it as an argument: both get the same numbers."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("backoff", "jitter", "delay", "rand"),
    [
        (b, j, d, r)
        for b, j, d, r in itertools.product(
            [None, dg.Backoff.LINEAR, dg.Backoff.EXPONENTIAL],
            [None, dg.Jitter.FULL, dg.Jitter.PLUS_MINUS],
            [0, 1.5, 60],
            [0.0, 0.25, 0.9],
        )
    ],
)
def test_waits_follow_dagsters_formula(
    monkeypatch: pytest.MonkeyPatch, backoff, jitter, delay: float, rand: float
) -> None:
    policy = dg.RetryPolicy(max_retries=4, delay=delay, backoff=backoff, jitter=jitter)
    schedule = schedule_of(policy)
    monkeypatch.setattr("dagster._core.definitions.policy.random", FixedRandom(rand))
    for retry in range(1, 5):
        expected = max(0.0, calculate_delay(retry, backoff, jitter, delay))
        assert schedule.wait_before(retry, FixedRandom(rand)) == pytest.approx(expected)
    assert schedule.wait_before(5) is None and schedule.wait_before(0) is None


def test_the_default_is_three_retries_exponential_from_a_minute() -> None:
    schedule = schedule_of(DEFAULT_RETRY_POLICY)
    assert [schedule.wait_before(n) for n in (1, 2, 3, 4)] == [60.0, 180.0, 420.0, None]
    assert schedule.describe() == "60, 180, 420 s"


def test_explicit_delays_are_exact() -> None:
    schedule = RetrySchedule.explicit((60.0, 300.0, 900.0))
    assert [schedule.wait_before(n) for n in (1, 2, 3, 4)] == [60.0, 300.0, 900.0, None]
    assert RetrySchedule.explicit(()).describe() == "no retries"


def test_which_schedule_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """ETL_RETRY_DELAYS_<TYPE> > the class's own retry_policy > ETL_RETRY_DELAYS > the default policy."""
    for name in [n for n in list(__import__("os").environ) if n.startswith("ETL_RETRY_DELAYS")]:
        monkeypatch.delenv(name)
    fib = get_job_type("fibonacci")
    assert fib.retry_schedule(Settings.from_env()) == schedule_of(DEFAULT_RETRY_POLICY)
    assert get_job_type("demo_batch").retry_schedule(Settings.from_env()).max_retries == 0

    class Patient(fib):  # type: ignore[misc, valid-type]
        """A job type declaring its own policy."""

        retry_policy = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.LINEAR)

    assert Patient.retry_schedule(Settings.from_env()).describe() == "10, 20 s"
    monkeypatch.setenv("ETL_RETRY_DELAYS", "1,2,3")
    assert fib.retry_schedule(Settings.from_env()) == RetrySchedule.explicit((1.0, 2.0, 3.0))
    assert Patient.retry_schedule(Settings.from_env()).describe() == "10, 20 s"  # its own declaration
    assert get_job_type("demo_batch").retry_schedule(Settings.from_env()).max_retries == 0
    monkeypatch.setenv("ETL_RETRY_DELAYS_PATIENT", "7")  # a setting naming the type beats it
    assert Patient.retry_schedule(Settings.from_env()) == RetrySchedule.explicit((7.0,))
    monkeypatch.setenv("ETL_RETRY_DELAYS_FIBONACCI", "5")
    assert fib.retry_schedule(Settings.from_env()) == RetrySchedule.explicit((5.0,))
    monkeypatch.setenv("ETL_RETRY_DELAYS_FIBONACCI", "")
    assert fib.retry_schedule(Settings.from_env()).max_retries == 0  # empty: no retries
    monkeypatch.setenv("ETL_RETRY_DELAYS_FIBONACCI", "1,soon")
    with pytest.raises(SettingsError, match="ETL_RETRY_DELAYS_FIBONACCI must be comma-separated seconds"):
        Settings.from_env()


def test_no_op_carries_a_policy_dagster_would_retry_in_memory() -> None:
    from etl_pipelines.definitions import defs

    for name in job_types():
        job = defs.resolve_job_def(name)
        for node in job.graph.node_dict.values():  # neither on the op nor on its invocation
            assert node.definition.retry_policy is None and node.retry_policy is None, name
        assert job.op_retry_policy is None, name
