"""The Dagster UI in a real browser (headless Chromium): launchpad config and queue, a run that
succeeds, a failed run re-executed from failure; the job records follow. Screenshots of each step
are kept in $ETL_TEST_ARTIFACTS/ui (default ./test-artifacts/ui)."""

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from etl_pipelines.store import JobStatus, JobStore
from etl_pipelines_tests.harness import REPO, Deployment, poll, wait_for_jobs

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("ETL_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ETL_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
RUN_URL = re.compile(r".*/runs/([0-9a-f-]{36})")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is required at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=False)


def launch_from_launchpad(page: Page, url: str, job: str, config: str, queue: str, name: str) -> str:
    """Open the job's launchpad, type its config, tag its queue, launch; the new run's id."""
    page.goto(f"{url}/locations/etl_pipelines/jobs/{job}/playground")
    skip = page.get_by_role("button", name="Skip")  # the first visit's newsletter dialog
    with contextlib.suppress(PlaywrightTimeoutError):  # shown once per instance
        skip.click(timeout=5000)
    editor = page.locator(".CodeMirror").first
    try:
        editor.wait_for(timeout=60_000)
    except PlaywrightTimeoutError:
        shot(page, f"{name}-no-editor")
        raise AssertionError(
            f"no config editor on the launchpad; page says:\n{page.inner_text('body')[:2000]}"
        ) from None
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(config)
    expect(page.get_by_text("No errors")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Edit tags").click()
    page.get_by_placeholder("Tag Key").fill("etl/queue")
    page.get_by_placeholder("Tag Value").fill(queue)
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text(f"etl/queue: {queue}").first).to_be_visible()
    shot(page, f"{name}-launchpad")
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(RUN_URL, timeout=60_000)
    return RUN_URL.match(page.url).group(1)


def run_status(page: Page, status: str, name: str) -> None:
    """Wait on the run's page for its status badge, then screenshot it."""
    expect(page.get_by_text(status, exact=True).first).to_be_visible(timeout=180_000)
    shot(page, name)


def test_launch_and_reexecute_from_the_ui(
    sqlite_deployment: Deployment, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = sqlite_deployment
    monkeypatch.setenv("ETL_RETRY_DELAYS", "")  # failures are final at once
    deployment.env["ETL_RETRY_DELAYS"] = ""
    store = JobStore(deployment.database_url)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    with deployment.daemon(), deployment.webserver() as url:
        # A job type launched from its launchpad, on the queue picked there, succeeds.
        run_id = launch_from_launchpad(
            page, url, "fibonacci", '{"ops": {"fibonacci_op": {"config": {"n": 12}}}}', "high", "01-fibonacci"
        )
        run_status(page, "Success", "02-fibonacci-success")
        wait_for_jobs(store, [run_id], 120)
        record = store.require(run_id)
        assert record.status == JobStatus.COMPLETED and record.result == 144 and record.queue == "high"
        page.get_by_placeholder("Filter…").fill("result")
        expect(page.get_by_text("144").first).to_be_visible(timeout=30_000)
        shot(page, "03-fibonacci-result-metadata")

        # A failed run, re-executed from failure: the same job record takes the new run.
        failed_id = launch_from_launchpad(
            page,
            url,
            "failed_job",
            '{"ops": {"failed_job_op": {"config": {"message": "from the UI"}}}}',
            "medium",
            "04-failed-job",
        )
        run_status(page, "Failure", "05-failed-run")
        poll(lambda: store.require(failed_id).status == JobStatus.FAILED, 60, 0.3, "the job to fail")
        reexecute = page.get_by_role("button", name=re.compile("Re-execute"))
        expect(reexecute).to_be_enabled(timeout=60_000)
        buttons = page.get_by_role("button").all()
        menu = buttons[next(i for i, b in enumerate(buttons) if "Re-execute" in b.inner_text()) + 1]
        menu.click()
        shot(page, "06-reexecute-menu")
        page.get_by_role("menuitem", name="From failure").click()
        page.wait_for_url(lambda u: RUN_URL.match(u) is not None and failed_id not in u, timeout=60_000)
        new_run = RUN_URL.match(page.url).group(1)
        run_status(page, "Failure", "07-reexecuted-run")
        poll(lambda: new_run in store.require(failed_id).run_ids, 60, 0.3, "the record to take the new run")
        wait_for_jobs(store, [failed_id], 120)
    record = store.require(failed_id)
    assert record.run_ids == [failed_id, new_run] and record.queue == "medium"
    assert record.status == JobStatus.FAILED and record.error == "FailedJobError: from the UI"
    queued = [e for e in store.history(failed_id) if e.action == "run_queued"]
    assert queued[-1].reason == f"re-execution of run {failed_id}"
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == [
        "01-fibonacci-launchpad.png",
        "02-fibonacci-success.png",
        "03-fibonacci-result-metadata.png",
        "04-failed-job-launchpad.png",
        "05-failed-run.png",
        "06-reexecute-menu.png",
        "07-reexecuted-run.png",
    ]


def test_a_fifty_megabyte_result_is_stored_truncated_and_its_run_page_loads(
    sqlite_deployment: Deployment, browser: Browser
) -> None:
    """An aggregation whose groups make a 50 MB result: the job completes, the job table keeps a
    bounded note with the full size, and the run's page in the UI still loads."""
    import sqlalchemy as sa

    from etl_pipelines import dispatch
    from etl_pipelines.resources.database import TargetDatabase

    groups = 450_000  # about 115 bytes of JSON per group: over 50 MB
    with TargetDatabase().engine().begin() as connection:
        connection.execute(sa.text("CREATE TABLE auth.wide (grp TEXT, val REAL)"))
        connection.execute(
            sa.text(
                "INSERT INTO auth.wide WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < :groups) SELECT printf('customer-%060d', i), i * 1.5 FROM n"
            ),
            {"groups": groups},
        )
    store = JobStore(sqlite_deployment.database_url)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    with sqlite_deployment.daemon(), sqlite_deployment.webserver() as url:
        job = dispatch("data_aggregation", table="auth.wide", group_by="grp", value_column="val")
        wait_for_jobs(store, [job.id], 240)
        record = store.require(job.id)
        assert record.status == JobStatus.COMPLETED, (record.status, record.error)
        result = record.result
        assert isinstance(result, dict) and result.get("truncated") is True, str(result)[:500]
        assert result["size_bytes"] > 50_000_000
        assert len(json.dumps(result)) <= 2 * 1024 * 1024
        page.goto(f"{url}/runs/{job.id}")
        with contextlib.suppress(PlaywrightTimeoutError):  # a new instance's newsletter dialog
            page.get_by_role("button", name="Skip").click(timeout=5000)
        run_status(page, "Success", "08-truncated-result-run")
        page.get_by_placeholder("Filter…").fill("result")
        page.get_by_text("Show JSON").first.click()
        expect(page.get_by_text('"truncated"').first).to_be_visible(timeout=60_000)
        shot(page, "09-truncated-result-json")
