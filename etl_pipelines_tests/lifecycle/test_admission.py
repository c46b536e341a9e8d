"""One run per table: the line each targeted run joins when submitted (lifecycle/admission.py)."""

import pytest

from etl_pipelines.identifiers import IdentifierError
from etl_pipelines.lifecycle import admission
from etl_pipelines.store import JobStore


@pytest.fixture
def store() -> JobStore:
    return JobStore.in_memory()


@pytest.mark.parametrize(
    ("target", "dialect", "key"),
    [
        ("users", "postgresql", "public.users"),
        ("public.users", "postgresql", "public.users"),
        ("auth.t", "postgresql", "auth.t"),
        # PostgreSQL keeps the case of quoted names, and a name with capitals is quoted.
        ("USERS", "postgresql", "public.USERS"),
        # SQLite folds every name: one table, one key.
        ("USERS", "sqlite", "main.users"),
        ("Main.Users", "sqlite", "main.users"),
        ("users", "sqlite", "main.users"),
    ],
)
def test_one_table_one_key(target: str, dialect: str, key: str) -> None:
    assert admission.table_key(target, dialect) == key


@pytest.mark.parametrize("target", ["users; drop table x", "a.b.c", "", '"users"'])
def test_a_target_that_is_no_table_is_refused(target: str) -> None:
    with pytest.raises(IdentifierError):
        admission.table_key(target, "postgresql")


def test_a_free_table_starts_the_run_at_once(store: JobStore) -> None:
    assert admission.enter(store, "r1", "j1", "public.t", priority=0) == "r1"
    assert not admission.waiting(store, "r1")
    # Other tables are not affected.
    assert admission.enter(store, "r2", "j2", "public.u", priority=0) == "r2"


def test_a_busy_table_makes_runs_wait_and_hands_on_by_priority_then_order(store: JobStore) -> None:
    assert admission.enter(store, "holder", "j0", "public.t", priority=0) == "holder"
    assert admission.enter(store, "low1", "j1", "public.t", priority=1) is None
    assert admission.enter(store, "high", "j2", "public.t", priority=3) is None
    assert admission.enter(store, "low2", "j3", "public.t", priority=1) is None
    assert all(admission.waiting(store, run) for run in ("low1", "high", "low2"))
    assert admission.release(store, "holder") == "high"
    assert admission.release(store, "high") == "low1"
    assert admission.release(store, "low1") == "low2"
    assert admission.release(store, "low2") is None
    assert store.claims() == []


def test_a_waiting_run_that_leaves_hands_nothing_on(store: JobStore) -> None:
    admission.enter(store, "holder", "j0", "public.t", priority=0)
    admission.enter(store, "cancelled", "j1", "public.t", priority=0)
    admission.enter(store, "next", "j2", "public.t", priority=0)
    assert admission.release(store, "cancelled") is None  # it never held the table
    assert admission.release(store, "holder") == "next"


def test_release_is_idempotent(store: JobStore) -> None:
    admission.enter(store, "holder", "j0", "public.t", priority=0)
    admission.enter(store, "next", "j1", "public.t", priority=0)
    assert admission.release(store, "holder") == "next"
    # The op released it; the worker's and the failure sensor's releases find nothing.
    assert admission.release(store, "holder") is None
    assert admission.release(store, "unknown") is None
    assert [c.run_id for c in store.claims() if c.holding] == ["next"]


def test_a_run_submitted_again_keeps_its_place_and_is_not_started_twice(store: JobStore) -> None:
    assert admission.enter(store, "holder", "j0", "public.t", priority=0) == "holder"
    assert admission.enter(store, "holder", "j0", "public.t", priority=0) is None
    assert admission.enter(store, "w", "j1", "public.t", priority=0) is None
    assert admission.enter(store, "w", "j1", "public.t", priority=0) is None
    assert len(store.claims("public.t")) == 2


def test_a_line_nobody_handed_on_starts_with_the_next_submission(store: JobStore) -> None:
    """The releaser died between leaving the line and starting the next run: the next submission
    for the table starts the stranded run, and waits behind it."""
    store.join_line("stranded", "j1", "public.t", 0)
    assert admission.enter(store, "late", "j2", "public.t", priority=0) == "stranded"
    assert admission.waiting(store, "late")
