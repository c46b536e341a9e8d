"""The one module that uses Dagster's private API, so an upgrade touches one place.

Dagster has no public call to submit a run of a workspace job from Python: what `dagster job
launch` does (code location -> remote job -> execution plan -> create_run -> submit_run) needs
`dagster._core`. We load the code location in process (no gRPC code server) under the name the
workspace.yaml gives it, so the daemon and webserver see the run as theirs.
"""

import functools
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._cli.api import _execute_run_command_body
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.errors import DagsterRunAlreadyExists
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.execution.plan.resume_retry import ReexecutionStrategy
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.external import RemoteJob
from dagster._core.run_coordinator.base import RunCoordinator
from dagster._core.storage.cloud_storage_compute_log_manager import (
    CloudStorageComputeLogManager,
    PollingComputeLogSubscriptionManager,
)
from dagster._core.storage.compute_log_manager import (
    CapturedLogContext,
    CapturedLogSubscription,
    ComputeIOType,
)
from dagster._core.storage.defs_state.base import set_defs_state_storage
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, ROOT_RUN_ID_TAG, TAGS_TO_MAYBE_OMIT_ON_RETRY
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from dagster._utils import ensure_file, touch_file

from etl_pipelines.process_cache import ProcessCache
from etl_pipelines.settings import LOCATION_NAME

DEFINITIONS_MODULE = "etl_pipelines.definitions"

# Re-exported for the run coordinator, the Celery run launcher and the compute log managers, which
# must subclass Dagster's interfaces (compute_logs.py: the local and the "cloud storage" managers,
# whose capture-locally-then-upload protocol the database manager implements).
__all__ = [
    "IO_TYPE_EXTENSION",
    "CapturedLogContext",
    "CapturedLogSubscription",
    "CheckRunHealthResult",
    "CloudStorageComputeLogManager",
    "ComputeIOType",
    "ConfigurableClass",
    "ConfigurableClassData",
    "DagsterRunAlreadyExists",
    "LaunchRunContext",
    "LocalComputeLogManager",
    "PollingComputeLogSubscriptionManager",
    "RunCoordinator",
    "RunLauncher",
    "RunSubmitter",
    "WorkerStatus",
    "ensure_file",
    "execute_run_here",
    "pool_storage_connections",
    "redirect_to_file",
    "reexecute_from_snapshots",
    "run_submitter",
    "touch_file",
]


# Run-storage schema checks Dagster makes on every run write and run query, each reflecting the
# `runs` table with SQLAlchemy's inspector (several catalog queries, ~3 ms of CPU). A column that a
# migration added is never removed, so once a check is true it stays true for the process.
_SCHEMA_CHECKS = ("has_run_stats_index_cols", "has_backfill_id_column", "has_bulk_actions_selector_cols")


def _true_once_known(check: Any) -> Any:
    known = False

    @functools.wraps(check)
    def cached() -> bool:
        nonlocal known
        known = known or bool(check())
        return known

    return cached


def pool_storage_connections(instance: dg.DagsterInstance) -> None:
    """Pool the storage's database connections, as dagster-webserver does, and cache schema checks.

    dagster-postgres opens a new connection per query by default (NullPool): ~15 per dispatch.
    """
    if not getattr(instance.run_storage, POOLED, False):  # PooledPostgresStorage did it already
        instance.optimize_for_webserver(statement_timeout=15_000, pool_recycle=3600, max_overflow=5)
    cache_schema_checks(instance.run_storage)


# Set on a run storage whose connections are pooled already (framework/storage.py).
POOLED = "etl_pooled"


def cache_schema_checks(storage: Any) -> None:
    """Run-storage schema checks answered from memory once true (see _SCHEMA_CHECKS)."""
    for name in _SCHEMA_CHECKS:
        check = getattr(storage, name, None)
        if callable(check) and not getattr(check, "__wrapped__", None):
            setattr(storage, name, _true_once_known(check))


def execute_run_here(instance: dg.DagsterInstance, run_id: str) -> int:
    """Execute a launched (STARTING) run in this process, as `dagster api execute_run` does."""
    return _execute_run_command_body(
        run_id=run_id, instance=instance, write_stream_fn=lambda _event: None, set_exit_code_on_failure=True
    )


class RunSubmitter:
    """Creates and submits runs of this code location's jobs to `instance`'s run coordinator."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        origin = InProcessCodeLocationOrigin(
            loadable_target_origin=LoadableTargetOrigin(
                executable_path=sys.executable,
                module_name=DEFINITIONS_MODULE,
                working_directory=os.getcwd(),
            ),
            location_name=LOCATION_NAME,
        )
        # Loading definitions reads "the current" defs-state storage from a context variable that
        # `with instance:` blocks set and reset; name ours rather than inherit a stale one.
        with set_defs_state_storage(instance.defs_state_storage):
            self._process_context = WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin))
            self._workspace = self._process_context.create_request_context()
            self._code_location = self._workspace.get_code_location(LOCATION_NAME)
            (self._repository,) = self._code_location.get_repositories().values()
        self._jobs: dict[str, RemoteJob] = {}
        self._lock = threading.Lock()

    def _job(self, job_name: str) -> RemoteJob:
        with self._lock:
            job = self._jobs.get(job_name)
            if job is None:
                job = self._code_location.get_job(
                    JobSubsetSelector(
                        location_name=LOCATION_NAME,
                        repository_name=self._repository.name,
                        job_name=job_name,
                        op_selection=None,
                    )
                )
                self._jobs[job_name] = job
            return job

    def submit(
        self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str], run_id: str
    ) -> dg.DagsterRun:
        """Create the run and hand it to the run coordinator (queued, not executed here)."""
        remote_job = self._job(job_name)
        plan = self._code_location.get_execution_plan(
            remote_job,
            run_config,
            step_keys_to_execute=None,
            known_state=None,
            instance=self.instance,
        ).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=run_id,
            run_config=run_config,
            resolved_op_selection=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            op_selection=None,
            status=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**remote_job.tags, **tags},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=None,
            asset_check_selection=None,
            asset_graph=self._repository.asset_graph,
        )
        return self.instance.submit_run(run.run_id, self._workspace)

    def submit_created(self, run: dg.DagsterRun) -> dg.DagsterRun:
        """Submit a run that was created but never submitted (its creator died in between)."""
        return self.instance.submit_run(run.run_id, self._workspace)

    def reexecute(self, parent: dg.DagsterRun) -> dg.DagsterRun:
        """Queue a re-execution of `parent` (all steps, its config and tags), as the UI's button does."""
        run = self.instance.create_reexecuted_run(
            request_context=self._workspace,
            parent_run=parent,
            code_location=self._code_location,
            remote_job=self._job(parent.job_name),
            strategy=ReexecutionStrategy.ALL_STEPS,
            use_parent_run_tags=True,
        )
        return self.instance.submit_run(run.run_id, self._workspace)


submitters: ProcessCache[RunSubmitter] = ProcessCache()


def run_submitter(instance: dg.DagsterInstance) -> RunSubmitter:
    """One submitter per instance per process: the code location is loaded once."""
    return submitters.get(id(instance), lambda: RunSubmitter(instance))


# An op job's runs plan no assets: create_run asks for an asset graph all the same.
_NO_ASSETS = AssetGraph.from_assets([])
# Snapshots are named by the hash of their content, so one read per process is enough; a cached
# job snapshot also keeps its computed id (create_run hashes it again otherwise). A few per job type.
_snapshots: ProcessCache[Any] = ProcessCache()


def reexecute_from_snapshots(instance: dg.DagsterInstance, parent: dg.DagsterRun) -> dg.DagsterRun | None:
    """Queue a re-execution of `parent` (all steps, its config and tags) without loading any code.

    What RunSubmitter.reexecute does, with the parent's own job and execution-plan snapshots where
    the code location would compute them again: for a whole run of a one-op job with the same
    config they are the same (a deploy in between changes the code the retry runs, not the
    snapshots the UI shows for it). Submitted with no workspace: only for a run coordinator and
    launcher that need none (EtlRunCoordinator, EtlCeleryRunLauncher). None when `parent` is not
    such a run (a subset, assets, no origin): then the caller needs the code location.
    """
    if (
        parent.job_snapshot_id is None
        or parent.execution_plan_snapshot_id is None
        or parent.remote_job_origin is None
        or parent.job_code_origin is None
        or parent.op_selection
        or parent.asset_selection
        or parent.asset_check_selection
    ):
        return None
    job_id, plan_id = parent.job_snapshot_id, parent.execution_plan_snapshot_id
    job_snapshot = _snapshots.get(("job", job_id), lambda: instance.get_job_snapshot(job_id))
    plan = _snapshots.get(("plan", plan_id), lambda: instance.get_execution_plan_snapshot(plan_id))
    every_step = {step.key for step in plan.steps}
    if (
        job_snapshot.lineage_snapshot is not None  # a subset of its job
        or set(plan.step_keys_to_execute) != every_step
        or set(parent.step_keys_to_execute or every_step) != every_step  # dispatch names them all
    ):
        return None
    root_run_id = parent.root_run_id or parent.run_id
    tags = {key: value for key, value in parent.tags.items() if key not in TAGS_TO_MAYBE_OMIT_ON_RETRY}
    run = instance.create_run(
        job_name=parent.job_name,
        run_id=None,
        run_config=parent.run_config,
        resolved_op_selection=None,
        step_keys_to_execute=None,
        op_selection=None,
        status=dg.DagsterRunStatus.NOT_STARTED,
        root_run_id=root_run_id,
        parent_run_id=parent.run_id,
        tags={**tags, PARENT_RUN_ID_TAG: parent.run_id, ROOT_RUN_ID_TAG: root_run_id},
        job_snapshot=job_snapshot,
        execution_plan_snapshot=plan,
        parent_job_snapshot=None,
        remote_job_origin=parent.remote_job_origin,
        job_code_origin=parent.job_code_origin,
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=_NO_ASSETS,
    )
    return instance.submit_run(run.run_id, None)  # type: ignore[arg-type]  # see the docstring
