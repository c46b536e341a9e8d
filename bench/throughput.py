"""Throughput: trivial jobs end to end through the production architecture.

PostgreSQL (Dagster's storage and the job table), dagster-daemon (EtlRunCoordinator),
EtlCeleryRunLauncher, Redis and `etl-jobs worker` Celery workers. Backlog first: N jobs dispatched
by one process (the dispatch phase) into a template database; each configuration WxC[mM][iS][t[K]]
gets a copy, its own DAGSTER_HOME (the commit's dagster.yaml, only the coordinator settings
changed; a fractional interval through bench_coordinator.py) and Redis key prefix; its workers
start, then dagster-daemon, until all N records are final. Sustained throughput = N / (last
finished_at - first started_at); CPU per job of the worker and daemon process groups between those
instants (/proc); memory per worker; phases per run from Dagster's event_logs; dequeue ticks.

examples:
  .venv/bin/python bench/throughput.py                                  # N = 1000; 1x2, 2x2, 2x2m16
  .venv/bin/python bench/throughput.py --count 200 --configs 1x2,2x2 --out /tmp/tp
  .venv/bin/python bench/throughput.py --configs 2x2i0.25,2x4m8i0.25t --code HEAD~1
"""

import sys

import harness
from harness import BIN, Config

PACKAGES = ("dagster", "celery", "sqlalchemy")
DISPATCH = {}
MARKS = [*harness.RUN_MARKS, ("SENT", "ENGINE_EVENT", "Sent to Celery")]
PHASES = harness.chain(
    "RUN_STARTING", "daemon launch", "SENT", "Celery pickup", "RUN_START", "run set-up", "STEP_START"
)
PHASES += harness.chain("STEP_START", "op", "STEP_SUCCESS", "teardown", "RUN_SUCCESS")
PHASES += [("in the worker: RUN_START → RUN_SUCCESS", "RUN_START", "RUN_SUCCESS")]


def arguments(parser):
    harness.stack_arguments(parser, count=1000, configs="1x2,2x2,2x2m16", timeout=900.0)


def environment(redis_prefix: str, config: Config | None) -> dict:
    env = {"ETL_REDIS_URL": harness.REDIS_URL, "ETL_REDIS_KEY_PREFIX": redis_prefix}
    if config and config.fractional:  # read by bench_coordinator.BenchRunCoordinator
        env["BENCH_DEQUEUE_INTERVAL_SECONDS"] = repr(config.interval)
    return env


def files(code: harness.Code, config: Config, redis_prefix: str) -> dict:
    return {
        "dagster.yaml": harness.instance_yaml(code, config.apply, redis_prefix),
        "workspace.yaml": harness.workspace_yaml("etl_pipelines.definitions", code.root),
    }


def worker_argv(config: Config, number: int) -> list[str]:
    return [str(BIN / "etl-jobs"), "worker", "--concurrency", str(config.concurrency), "-n", f"bw{number}@%h"]


def run(args) -> dict:
    return harness.measure_configs(sys.modules[__name__], args)


def report(result: dict) -> str:
    rows = [
        ("**worker CPU per job (ms)**", lambda r: f"**{r['worker_cpu_ms_per_job']:.1f}**"),
        ("daemon CPU per job (ms, incl. its code servers)", lambda r: r["daemon_cpu_ms_per_job"]),
        ("our workers' CPU in the window (cores)", lambda r: f"{r['workers_cores']:.2f}"),
        ("whole machine busy in the window (cores)", lambda r: f"{r['machine_busy_cores']:.2f}"),
        ("**worker RSS / PSS, each (MB)**", harness.worker_memory),
        ("processes per worker", lambda r: r["memory"]["worker1"]["processes"]),
        (
            "daemon group RSS / PSS at the end (MB)",
            lambda r: "{rss_mb:.0f} / {pss_mb:.0f}".format(**r["memory"]["daemon"]),
        ),
        (
            "record `started_at` → `finished_at`, median (ms)",
            lambda r: r["record_started_to_finished"]["median_ms"],
        ),
        ("daemon ticks that launched", lambda r: r["ticks"]["lines"]),
        (
            "runs launched per tick, mean / max",
            lambda r: f"{r['ticks']['runs'] / r['ticks']['lines']:.1f} / {r['ticks']['max']}",
        ),
        ("seconds per tick (window / ticks)", lambda r: f"{r['window_s'] / r['ticks']['lines']:.2f}"),
        (
            "gap between launches within a tick, median (ms)",
            lambda r: r["events"]["launch_spacing"]["median_ms"],
        ),
    ]
    return harness.stack_report("Throughput, production mode", result, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
