"""Handing QUEUED runs to the broker: at submission (the coordinator) and when a table is released."""

import dagster as dg

from etl_pipelines.lifecycle import admission
from etl_pipelines.store import JobStore


def start(instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> None:
    """Hand a QUEUED run to the run launcher's broker (a run cancelled meanwhile is left alone)."""
    if run is None or run.status != dg.DagsterRunStatus.QUEUED:
        return
    enqueue = getattr(instance.run_launcher, "enqueue", None)
    if enqueue is None:
        raise dg.DagsterInvariantViolationError(
            "EtlRunCoordinator needs etl_pipelines' EtlCeleryRunLauncher as the run launcher "
            f"(dagster.yaml run_launcher), not {type(instance.run_launcher).__name__}"
        )
    enqueue(run)


def hand_on(instance: dg.DagsterInstance, store: JobStore, run_id: str) -> None:
    """`run_id`'s attempt is over (or it was cancelled): the next run in its table's line starts."""
    start_holder(instance, store, admission.release(store, run_id))


def start_holder(instance: dg.DagsterInstance, store: JobStore, run_id: str | None) -> None:
    """Start `run_id`, which was just given its table. One that ended or was deleted while it
    waited (cancelled, failed by hand) gives the table straight on, so a line never stalls."""
    while run_id is not None:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.QUEUED:
            start(instance, run)
            return
        run_id = admission.release(store, run_id)
