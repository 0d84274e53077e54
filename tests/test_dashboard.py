"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright) against a
real server training a real job: it loads, the loss chart gains points live, the pipeline
timeline shows every stage. A screenshot is saved to test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apiserver import TOKEN, Server, tiny_job, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STAGES = 3


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: `make install` installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def points(page: Any, chart: str) -> int:
    return int(page.get_attribute(chart, "data-points") or 0)


def test_dashboard_shows_a_running_job_live(server: Server, browser: Any) -> None:
    with server.client() as c:
        job = c.post("/jobs", json=tiny_job(name="dashboard", stages=STAGES, steps=1_000_000)).json()
    server.wait_state(job["id"], {"RUNNING"})
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.url}/login?token={TOKEN}")  # sets the cookie, redirects to /
        page.wait_for_selector(f"#jobs-table tr[data-job-id='{job['id']}']", timeout=20_000)
        assert "RUNNING" in page.inner_text(f"#jobs-table tr[data-job-id='{job['id']}']")

        page.goto(f"{server.url}/#/jobs/{job['id']}")
        page.wait_for_function("document.querySelector('#loss-chart')?.dataset.points >= 2", timeout=60_000)
        first = points(page, "#loss-chart")
        wait_for(lambda: points(page, "#loss-chart") > first + 3, 60, "the loss chart to gain points")
        assert page.locator("#loss-chart circle.point").count() == points(page, "#loss-chart")
        assert points(page, "#throughput-chart") > 0
        assert page.inner_text("#job-state") == "RUNNING"

        page.wait_for_function(f"document.querySelectorAll('#timeline g.stage-row').length == {STAGES}",
                               timeout=60_000)
        for s in range(STAGES):  # every stage has forward and backward spans
            row = page.locator(f"#timeline g.stage-row[data-stage='{s}']")
            assert row.locator("rect.span-F").count() > 0 and row.locator("rect.span-B").count() > 0
        assert page.locator("#stage-map .stage").count() == STAGES
        assert page.locator("#events li").count() > 3
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # fits a laptop screen
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

        page.click("#cancel-btn")  # the dashboard's cancel button (cookie auth + request header)
        server.wait_state(job["id"], {"CANCELLED"}, timeout=60)
        page.wait_for_function("document.querySelector('#job-state').textContent == 'CANCELLED'",
                               timeout=20_000)
        page.goto(f"{server.url}/#/")
        page.wait_for_selector(f"#jobs-table tr[data-job-id='{job['id']}']", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"), full_page=True)
    finally:
        page.close()
    assert not [e for e in errors if "401" not in e], errors
