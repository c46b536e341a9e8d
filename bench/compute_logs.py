"""Compute log managers: what capturing a run's stdout/stderr costs, files against the database.

FileComputeLogManager (files in DAGSTER_HOME/storage, the embedded default's) against
DatabaseComputeLogManager (a local file copied into etl_compute_logs, production's), on a database
of the bench's own (`etl_bench_logs_*` on ETL_BENCH_PG_ADMIN_URL, default the local PostgreSQL,
dropped after). Variants run interleaved, round by round, in one process:

- capture: the manager alone, as a run uses it: capture_logs() around ~2 KB of stderr (a trivial
  run's Dagster log lines) and one stdout line; CPU (process_time, threads included), wall, SQL.
- run: a whole one-op run, `execute_in_process` on a SQLite instance with that manager: the
  difference between variants is the manager's share of a real run.

  .venv/bin/python bench/compute_logs.py --count 200
"""

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from etl_pipelines.framework.compute_logs import DatabaseComputeLogManager, FileComputeLogManager

ADMIN_URL = os.environ.get("ETL_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
STDERR = ("2026-12-02 13:00:00 +0000 - dagster - DEBUG - job - run - op - STEP_START - step\n" * 25).encode()


@contextlib.contextmanager
def database() -> Iterator[str]:
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"etl_bench_logs_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def capture_once(manager: Any, number: int) -> None:
    with manager.capture_logs([f"run-{uuid.uuid4().hex}", "compute_logs", f"step{number}"]):
        os.write(sys.stderr.fileno(), STDERR)
        os.write(sys.stdout.fileno(), b"one line of stdout\n")


def measure(call: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


@dg.op
def trivial_op() -> int:
    return 1


@dg.job
def trivial() -> None:
    trivial_op()


def summary(values: list[float]) -> str:
    p90 = sorted(values)[int(len(values) * 0.9)]
    return f"{statistics.mean(values):.2f} / {statistics.median(values):.2f} / {p90:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200, help="measured captures and runs per variant")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    with database() as url, tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        statements = {"n": 0}
        managers: dict[str, Any] = {
            "file": FileComputeLogManager(base_dir=str(base / "files")),
            "database": DatabaseComputeLogManager(url, local_dir=str(base / "db")),
        }
        sa.event.listen(
            managers["database"].engine,
            "before_cursor_execute",
            lambda *_: statements.__setitem__("n", statements["n"] + 1),
        )
        configs = {
            "file": {
                "module": "etl_pipelines.framework.compute_logs",
                "class": "FileComputeLogManager",
                "config": {"base_dir": str(base / "run-files")},
            },
            "database": {
                "module": "etl_pipelines.framework.compute_logs",
                "class": "DatabaseComputeLogManager",
                "config": {"database_url": url, "local_dir": str(base / "run-db")},
            },
        }
        cpu: dict[str, list[float]] = {f"{k} {v}": [] for k in ("capture", "run") for v in managers}
        wall: dict[str, list[float]] = {k: [] for k in cpu}
        with contextlib.ExitStack() as stack:
            stack.enter_context(quiet_stderr())  # the runs' Dagster log lines (captured ones too)
            instances = {
                name: stack.enter_context(dg.instance_for_test(overrides={"compute_logs": config}))
                for name, config in configs.items()
            }
            sql_before = statements["n"]
            for number in range(args.warmup + args.count):
                for name, manager in managers.items():
                    if name == "database" and number == args.warmup:
                        sql_before = statements["n"]
                    c, w = measure(functools.partial(capture_once, manager, number))
                    r, rw = measure(functools.partial(trivial.execute_in_process, instance=instances[name]))
                    if number >= args.warmup:
                        cpu[f"capture {name}"].append(c)
                        wall[f"capture {name}"].append(w)
                        cpu[f"run {name}"].append(r)
                        wall[f"run {name}"].append(rw)
            sql = (statements["n"] - sql_before) / args.count
        rows = "\n".join(f"| {k} | {summary(cpu[k])} | {summary(wall[k])} |" for k in cpu)
        load = os.getloadavg()[0]
        print(
            f"## Compute log managers ({args.count} per variant, interleaved; load {load:.2f})\n\n"
            "| variant | CPU ms mean / median / p90 | wall ms mean / median / p90 |\n|---|---:|---:|\n"
            f"{rows}\n\nDatabaseComputeLogManager: {sql:.2f} SQL statements per capture "
            "(bench-side count on its engine)."
        )


if __name__ == "__main__":
    main()
