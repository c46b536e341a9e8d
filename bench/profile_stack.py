"""Stack profile: where a trivial job's CPU goes in each process of the production stack.

throughput.py's run (workers, dagster-daemon unless `n`, one dispatching process; N Fibonacci(10)
at once) with py-spy attached to every Python process group for the measured window (`record
--subprocesses --nonblocking`, 100 Hz; idle threads left out, so samples approximate CPU), beside
the /proc CPU of every group and PostgreSQL's pg_stat_statements and Redis's commandstats. Per
group: ms per job of named costs, inclusive (a sample counts for every cost whose frames it holds,
so nested costs overlap), the top functions inclusive and by own time. py-spy's own sampling costs
CPU: the throughput of this run is not the bar's. Needs py-spy in the venv (`.venv/bin/pip install
py-spy`); the collapsed stacks stay in --spy-dir.

examples:
  .venv/bin/python bench/profile_stack.py --count 300 --configs 2x2 --spy-dir /tmp/spy
"""

import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import harness

JOB, PARAMS, SEQUENTIAL = "fibonacci", {"n": harness.FIB_N}, False
RATE = 100  # py-spy's default sampling rate, samples per second
# (label, regex over one frame "function (file:line)"): inclusive costs. Indented labels are
# usually nested in the one above; a sample counts once per label.
COSTS = [
    ("Celery/kombu/billiard outside the task", None),
    ("execute_run: the Celery task", r"^execute_run \(.*celery/task"),
    ("  mark STARTING (task: report_dagster_event)", None),
    ("  execute_run_here", r"^execute_run_here \("),
    ("    load the job (recon / definitions)", r"recon_job_from_origin|get_definition|_load_|load_defin"),
    ("    execution plan", r"create_execution_plan|ExecutionPlan\.build|^build \(.*execution/plan"),
    ("    context and resources", r"create_context_creation_data|scoped_resources_builder|resource_init"),
    ("    compute-log capture", r"capture_logs|compute_log"),
    ("    op body: run_attempt", r"^run_attempt \("),
    ("      handle() (the job's own code)", r"^handle \(.*etl_pipelines/jobs/"),
    ("    output handling / IO manager", r"handle_output|_store_output|io_manager|pickle"),
    ("  hand_on (table line)", r"^hand_on \("),
    ("dispatch()", r"^dispatch \(.*framework/dispatch"),
    ("  record bootstrap", r"^bootstrap \(.*lifecycle/events"),
    ("  create the run (create_run_for_job)", r"create_run_for_job|^create_run \("),
    ("  submit_run (EtlRunCoordinator)", r"^submit_run \(.*coordinator"),
    ("    register_run (admit, tags)", r"^register_run \("),
    ("    admit → Celery send_task", r"^admit \(|^enqueue \(.*launcher|send_task"),
    ("Dagster event writes (report/handle_new_event)", r"handle_new_event|^store_event \("),
    ("run reads (get_run_by_id, get_run_records)", r"get_run_by_id|get_run_records|^get_runs \("),
    ("run status / tag writes", r"handle_run_event|add_run_tags|update_run"),
    ("snapshot reads/writes", r"snapshot"),
    ("schema checks / reflection", r"has_table|get_columns|reflect|inspection|^inspect \("),
    ("new connections (connect)", r"^connect \(psycopg2|__connect|_connect_ping|first_connect"),
    ("job table (etl_pipelines.store)", r"etl_pipelines/store/"),
    ("heartbeat thread", r"Heartbeat|heartbeat"),
    ("SQLAlchemy execute", r"^execute \(sqlalchemy/engine/base|_execute_context"),
    ("serdes", r"serdes"),
    ("config validation (dagster._config)", r"dagster/_config/"),
    ("logging", r"logging/__init__|log_manager"),
    ("daemon: sensors", r"sensor"),
    ("daemon: run monitoring", r"monitor"),
]


def arguments(parser):
    harness.stack_arguments(parser, count=300, configs="2x2", timeout=900.0)
    parser.add_argument(
        "--spy-dir", type=Path, help="keep py-spy's collapsed stacks here (default: a temp dir)"
    )


def run(args) -> dict:
    module = sys.modules[__name__]
    directory = args.spy_dir or Path(tempfile.mkdtemp(prefix="etl_bench_spy_"))
    module.py_spy_dir = lambda label: directory / label.replace(" ", "_")
    result = harness.measure_configs(module, args)
    for r in result["results"]:
        path = directory / r["config"].replace(" ", "_")
        r["profile"] = {f.stem: summarise(f, r["completed"]) for f in sorted(path.glob("*.txt"))}
    return result | {"spy_dir": str(directory)}


def summarise(path: Path, jobs: int) -> dict:
    """ms per job of COSTS, and the top functions inclusive and own, from py-spy's raw output."""
    costs, inclusive, own, total = Counter(), Counter(), Counter(), 0
    patterns = [(label, re.compile(rx)) for label, rx in COSTS if rx]
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        n, frames = int(n), [f for f in stack.split(";") if " (" in f]
        total += n
        for frame in set(frames):
            inclusive[frame.rsplit(":", 1)[0]] += n
        if frames:
            own[frames[-1].rsplit(":", 1)[0]] += n
        labels = {label for label, rx in patterns for f in frames if rx.search(f)}
        in_task = "execute_run: the Celery task" in labels
        if not in_task and any(re.search(r"\((celery|kombu|billiard)/", f) for f in frames):
            labels.add("Celery/kombu/billiard outside the task")
        if (
            in_task
            and "  execute_run_here" not in labels
            and "Dagster event writes (report/handle_new_event)" in labels
        ):
            labels.add("  mark STARTING (task: report_dagster_event)")
        costs.update(dict.fromkeys(labels, n))
    ms = 1000.0 / RATE / jobs
    return {
        "ms_per_job": total * ms,
        "costs": {label: costs[label] * ms for label, _ in COSTS if costs[label]},
        "top_inclusive": [[f, c * ms] for f, c in inclusive.most_common(40)],
        "top_own": [[f, c * ms] for f, c in own.most_common(25)],
    }


def report(result: dict) -> str:
    rows = [*harness.CPU_ROWS, *harness.COUNTER_ROWS]
    text = harness.stack_report(f"Stack profile ({result['count']} jobs, py-spy attached)", result, rows)
    for r in result["results"]:
        groups = list(r["profile"])
        labels = list(dict.fromkeys(k for p in r["profile"].values() for k in p["costs"]))
        body = [["py-spy samples, all (ms per job)", *[r["profile"][g]["ms_per_job"] for g in groups]]]
        body += [[label, *[r["profile"][g]["costs"].get(label, 0.0) for g in groups]] for label in labels]
        text += f"\n{r['config']}: py-spy, ms per job (inclusive)\n\n" + harness.table(
            ["cost", *groups], body
        )
        statements = r["counters"].get("top_statements", [])
        text += "\nPostgreSQL, per job: calls and mean execution time (pg_stat_statements)\n\n"
        text += harness.table(["statement", "calls per job", "mean ms"], statements[:20])
        text += "\nRedis, per job: calls and mean µs (INFO commandstats)\n\n"
        text += harness.table(["command", "calls per job", "mean µs"], r["counters"]["redis_top"])
    return text


if __name__ == "__main__":
    sys.exit(harness.main(sys.modules[__name__]))
