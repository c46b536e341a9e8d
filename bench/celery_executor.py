"""celery_executor mode: throughput.py's measurement in dagster-celery's documented step-level mode.

Not the production architecture: the code location bench/celery_executor_defs.py (the project's
own `build_job(Fibonacci)` and resources, executor `dagster_celery.celery_executor` on Redis); the
commit's dagster.yaml with Dagster's QueuedRunCoordinator (max_concurrent_runs M, default W x C)
and without `run_launcher`, so Dagster's DefaultRunLauncher: dagster-daemon asks its gRPC code
server, which spawns a run-worker process per run; the run worker sends the step to Celery queue
`dagster` and polls for its result every second. W workers `celery -A dagster_celery.app worker
-Q dagster --concurrency C --prefetch-multiplier=1` execute the steps. Dispatch is the product's
`Fibonacci.dispatch` pointed at the bench code location. Configurations WxC[mM], warm-up, dispatch
during the run and CPU sampling as in throughput.py; the daemon group's CPU is also split per
process kind: run workers (the code servers' reaped children, or the largest CPU seen of the
run-worker pids), code servers, the daemon process.

examples:
  .venv/bin/python bench/celery_executor.py                              # N = 20; 1x2m4, 2x2m4
  .venv/bin/python bench/celery_executor.py --count 20 --configs 1x2m4 --out /tmp/ce
"""

import sys

import harness
from harness import BENCH, BIN, Config

PACKAGES = ("dagster", "dagster-celery", "celery", "kombu")
JOB, PARAMS, SEQUENTIAL = "fibonacci", {"n": harness.FIB_N}, False
DISPATCH = {"definitions": "celery_executor_defs", "cwd": str(BENCH)}  # the runs' origin: the bench location


def arguments(parser):
    harness.stack_arguments(parser, count=20, configs="1x2m4,2x2m4", timeout=1200.0)


def celery_config_source(prefix: str) -> dict:
    """Celery settings of the executor (run worker) and of the Celery worker's config module."""
    transport = {"queue_order_strategy": "priority"} | ({"global_keyprefix": prefix} if prefix else {})
    return {
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
        "worker_prefetch_multiplier": 1,
    }


def environment(redis_prefix: str, config: Config | None) -> dict:
    return {"ETL_BENCH_CELERY_URL": harness.REDIS_URL, "ETL_BENCH_CELERY_PREFIX": redis_prefix}


def files(code: harness.Code, config: Config, redis_prefix: str) -> dict:
    def queued_default_launcher(instance: dict) -> None:
        # Dagster's own QueuedRunCoordinator and DefaultRunLauncher, at any commit: from 1a55b51
        # EtlRunCoordinator hands runs to EtlCeleryRunLauncher only. dispatch() still writes the
        # job record and the op keeps it current.
        instance.pop("run_launcher", None)
        instance["run_coordinator"] = {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": config.max_runs or config.slots},
        }

    settings = {"broker_url": harness.REDIS_URL, "result_backend": harness.REDIS_URL}
    settings |= celery_config_source(redis_prefix)
    return {
        "dagster.yaml": harness.instance_yaml(code, queued_default_launcher),
        "workspace.yaml": harness.workspace_yaml("celery_executor_defs", BENCH),
        # What `dagster-celery worker start -y` writes; the home is on the workers' PYTHONPATH.
        "dagster_celery_config.py": "".join(f"{key} = {value!r}\n" for key, value in settings.items()),
    }


def worker_argv(config: Config, number: int) -> list[str]:
    celery = [str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "--prefetch-multiplier=1", "-Q"]
    return [
        *celery,
        "dagster",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(config.concurrency),
        "-n",
        f"cw{number}@%h",
    ]


def analyse(sampler: harness.Sampler, result: dict) -> dict:
    """The daemon group's CPU per job and process kind, over each process's sampled lifetime."""
    cpu = {"run_worker_seen": 0.0, "code_server": 0.0, "reaped_by_code_servers": 0.0, "daemon_process": 0.0}
    run_workers = 0
    for info in (p for p in sampler.pids.values() if p["group"] == "daemon"):
        cmd, own = info["cmdline"], info["own"] - info["own0"]
        if "spawn_main" in cmd:  # multiprocessing "spawn" child of a code server: a run worker
            run_workers += 1
            cpu["run_worker_seen"] += info["own"] + info["children"]
        elif " grpc" in cmd or "code-server" in cmd:
            cpu["code_server"] += own
            cpu["reaped_by_code_servers"] += info["children"] - info["children0"]
        elif "dagster-daemon" in cmd or "dagster_daemon" in cmd:
            cpu["daemon_process"] += own
    cpu["run_worker"] = max(cpu["reaped_by_code_servers"], cpu["run_worker_seen"])
    per_job = {
        f"{k}_cpu_ms_per_job": harness.per_job(cpu[k], result["completed"])
        for k in ("code_server", "daemon_process", "run_worker")
    }
    return per_job | {"run_worker_processes": run_workers}


def run(args) -> dict:
    return harness.measure_configs(sys.modules[__name__], args)


def report(result: dict) -> str:
    rows = [
        ("**sustained throughput (jobs/s)**", lambda r: f"**{r['throughput_jobs_s']:.3g}**"),
        *harness.CPU_ROWS,
        ("run-worker process per run (ms)", lambda r: r["run_worker_cpu_ms_per_job"]),
        (
            "code servers / dagster-daemon process per job (ms)",
            lambda r: "{code_server_cpu_ms_per_job:.0f} / {daemon_process_cpu_ms_per_job:.0f}".format(**r),
        ),
        ("run-worker processes seen", lambda r: r["run_worker_processes"]),
        ("Celery worker RSS / PSS, each (MB)", harness.worker_memory),
    ]
    return harness.stack_report(f"celery_executor mode ({result['count']} jobs)", result, rows)


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
