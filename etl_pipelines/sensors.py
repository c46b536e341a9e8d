"""Sensors: keep job records true when a run ends outside its op, start due retries, recover lost
work, alert on failures, chain jobs."""

import contextlib
import json
import urllib.request
from datetime import timedelta

import dagster as dg

from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.launch import hand_on
from etl_pipelines.framework.op import params_of, run_config_for
from etl_pipelines.framework.recovery import RECOVERY_PREFIX, recover
from etl_pipelines.framework.registry import get_job_type, job_types
from etl_pipelines.framework.retries import run_due_retries, run_failed
from etl_pipelines.framework.tags import QUEUE_TAG, job_id_of
from etl_pipelines.lifecycle import events
from etl_pipelines.lifecycle.bounds import scrub_error
from etl_pipelines.resources import JobStoreResource
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError
from etl_pipelines.store.models import utcnow


def post_alert(url: str, record: JobRecord) -> None:
    """POST a failed job's record to the alert webhook as JSON.

    The error is the job table's, which JobStore scrubbed and bounded when it was written
    (lifecycle.bounds); scrubbed again for records written before it did (scrubbing is idempotent).
    """
    body = {
        "event": "job_failed",
        "job_id": record.id,
        "job_type": record.job_type,
        "queue": record.queue,
        "run_id": record.run_id,
        "status": record.status.value,
        "error": scrub_error(record.error) if record.error is not None else None,
        "retry_count": record.retry_count,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
    }
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dg.run_failure_sensor(
    name="job_failures",
    description="An attempt that ended outside its op (crash, launch error, time limit) is retried "
    "per the job's retry schedule, or the job is marked failed.",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
)
def job_failures(context: dg.RunFailureSensorContext, job_store: JobStoreResource) -> None:
    run = context.dagster_run
    if run.job_name not in job_types():
        return
    store = job_store.store()
    # Its table goes to the next run in line, whoever records the failure (a no-op if its op did).
    hand_on(context.instance, store, run.run_id)
    record = store.get(job_id_of(run))
    message = context.failure_event.message or "run failed"
    if message.startswith(RECOVERY_PREFIX):
        return  # recovery failed this run and is handling the job
    run_record = context.instance.get_run_record_by_id(run.run_id)
    ended = run_record.end_time if run_record is not None else None
    if record is None or not events.run_failure_applies(record, run.run_id, ended):
        return
    context.log.info(f"job {record.id}: run {run.run_id} failed outside its op: {message}")
    # JobStateError: recovery or the op got there first.
    with contextlib.suppress(JobStateError):
        run_failed(store, record, f"RunFailure: {message}", Settings.from_env())


@dg.sensor(
    name="due_retries",
    description="Queues each job whose retry is due (waiting_retry, next_retry_at passed) as a "
    "re-execution of its failed run, once: the fallback for a retry whose timer on the Celery "
    "workers was lost or late, and for a deployment without workers.",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def due_retries(context: dg.SensorEvaluationContext, job_store: JobStoreResource) -> dg.SkipReason:
    actions = run_due_retries(get_instance(), job_store.store(), Settings.from_env())
    for action in actions:
        context.log.info(str(action))
    return dg.SkipReason(f"queued {sum(a.action == 'retried' for a in actions)} retr(y/ies)")


@dg.sensor(
    name="job_recovery",
    description="Finds jobs whose work was lost (flushed broker, killed worker, dead dispatcher) "
    "and queues them again; leaves queued and running jobs alone. Also `etl-jobs recover`.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def job_recovery(context: dg.SensorEvaluationContext, job_store: JobStoreResource) -> dg.SkipReason:
    actions = recover(get_instance(), job_store.store(), Settings.from_env(), since=None)
    for action in actions:
        context.log.warning(str(action))
    return dg.SkipReason(f"recovered {len(actions)} job(s)")


@dg.sensor(
    name="failure_alerts",
    description="POSTs every failed job (last 24 h) to ETL_ALERT_WEBHOOK_URL once delivered; "
    "an unreachable webhook is tried again at the next tick.",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def failure_alerts(context: dg.SensorEvaluationContext, job_store: JobStoreResource) -> dg.SkipReason:
    url = Settings.from_env().alert_webhook_url
    if not url:
        return dg.SkipReason("ETL_ALERT_WEBHOOK_URL is not set")
    store = job_store.store()
    sent = 0
    # The job table, not the sensor cursor, remembers what was delivered: a failed POST is retried.
    for record in store.unalerted_failures(since=utcnow() - timedelta(hours=24)):
        try:
            post_alert(url, record)
        except OSError as exc:
            context.log.warning(f"alert webhook unreachable ({exc}); will try again next tick")
            break
        store.mark_alerted(record.id)
        sent += 1
    return dg.SkipReason(f"sent {sent} alert(s)")


@dg.run_status_sensor(
    name="job_cancellations",
    description="Marks a job cancelled when its run is cancelled.",
    run_status=dg.DagsterRunStatus.CANCELED,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def job_cancellations(context: dg.RunStatusSensorContext, job_store: JobStoreResource) -> None:
    run = context.dagster_run
    if run.job_name not in job_types():
        return
    latest = context.instance.get_run_by_id(run.run_id)
    if latest is None or latest.status != dg.DagsterRunStatus.CANCELED:
        return  # cancelled, then failed: run monitoring's time limit, an attempt for job_failures
    store = job_store.store()
    record = store.get(job_id_of(run))
    if record is not None and record.run_id == run.run_id:
        with contextlib.suppress(JobStateError):  # it ended or moved on before the cancellation
            events.cancelled(store, record.id, run.run_id)


def aggregation_request(run: dg.DagsterRun) -> dg.RunRequest | None:
    """The data_aggregation a successful data_import asks for (aggregate_by), if any."""
    params = params_of(get_job_type("data_import"), run.run_config)
    if not params.get("aggregate_by") or not params.get("aggregate_value"):
        return None
    config = {"table": params["target_table"], "group_by": params["aggregate_by"]}
    config["value_column"] = params["aggregate_value"]
    return dg.RunRequest(
        run_key=run.run_id,  # once per import run, however often the sensor sees it
        run_config=run_config_for(get_job_type("data_aggregation"), config),
        tags={QUEUE_TAG: "medium", "etl/after": run.run_id},
    )


def build_sensors(jobs: dict[str, dg.JobDefinition]) -> list[dg.SensorDefinition]:
    """The sensors; the chaining one needs the job definitions it watches and requests."""

    @dg.run_status_sensor(
        name="aggregate_after_import",
        description="After a data_import with aggregate_by succeeds, queue a data_aggregation of its table.",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[jobs["data_import"]],
        request_job=jobs["data_aggregation"],
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def aggregate_after_import(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        request = aggregation_request(context.dagster_run)
        return request or dg.SkipReason("the import asked for no aggregation")

    return [
        job_failures,
        due_retries,
        job_recovery,
        failure_alerts,
        job_cancellations,
        aggregate_after_import,
    ]
