"""A job's life in one place, with no Dagster import: queues and priorities (queues), the retry
schedule (retry), the transition table and its events (events), and recovery's judgement
(diagnosis). Dispatch, the run coordinator, the op, sensors, recovery and the CLI only call these,
with the store and settings passed in.
"""

from etl_pipelines.lifecycle import events
from etl_pipelines.lifecycle.diagnosis import Finding, RunSnapshot, RunState, Verdict, diagnose
from etl_pipelines.lifecycle.events import TRANSITIONS, ForeignJob, NewJob, Refused, Transition
from etl_pipelines.lifecycle.queues import check_queue, priority
from etl_pipelines.lifecycle.retry import RetrySchedule

__all__ = [
    "TRANSITIONS",
    "Finding",
    "ForeignJob",
    "NewJob",
    "Refused",
    "RetrySchedule",
    "RunSnapshot",
    "RunState",
    "Transition",
    "Verdict",
    "check_queue",
    "diagnose",
    "events",
    "priority",
]
