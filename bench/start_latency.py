"""Idle start latency: how soon a job dispatched to an idle stack starts (record created_at → started_at).

The production stack of throughput.py (workers, dagster-daemon unless `n`, one dispatching process
that warms it first), then N Fibonacci(n=10) dispatched one at a time: each after the previous one
ended and 0.2 s more, so every job meets idle workers. Per job from its record: created_at (the
dispatch) → started_at (its op began) → finished_at; per run the phases between Dagster's run
events.

examples:
  .venv/bin/python bench/start_latency.py                               # N = 50; 2x2, 2x2n
  .venv/bin/python bench/start_latency.py --count 20 --configs 2x2 --code 961a9de
"""

import sys

import harness

JOB, PARAMS, SEQUENTIAL = "fibonacci", {"n": harness.FIB_N}, True


def arguments(parser):
    harness.stack_arguments(parser, count=50, configs="2x2,2x2n", timeout=600.0)


def run(args) -> dict:
    return harness.measure_configs(sys.modules[__name__], args)


def report(result: dict) -> str:
    def stat(key: str) -> object:
        return lambda r: "{median_ms:.0f} / {p90_ms:.0f} / {p99_ms:.0f} / {max_ms:.0f}".format(**r[key])

    rows = [
        ("**created → started, median / p90 / p99 / max (ms)**", stat("created_to_started")),
        ("started → finished (ms)", stat("started_to_finished")),
        ("created → finished (ms)", stat("created_to_finished")),
        (
            "dispatch() returned, median / p99 (ms)",
            lambda r: "{median_ms:.1f} / {p99_ms:.1f}".format(**r["dispatch"]),
        ),
    ]
    title = f"Idle start latency ({result['count']} jobs one at a time)"
    return harness.stack_report(title, result, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
