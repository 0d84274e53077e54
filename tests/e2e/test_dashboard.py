"""The dashboard in a real headless browser (Debian's Chromium driven by Playwright) against a
real server training a real job: it loads, the loss chart gains points live, the pipeline
timeline shows every stage. A job whose stages hold several chunks (its timeline and placement
written into the server's store) shows each chunk in its own shade, labelled, in the legend.
Screenshots are saved to test-artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from apiserver import TOKEN, Server, tiny_job, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
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
        # the drawn points and the chart's count, read at one moment (the chart redraws live)
        drawn, counted = page.evaluate("""() => [
            document.querySelectorAll('#loss-chart circle.point').length,
            Number(document.querySelector('#loss-chart').dataset.points)]""")
        assert drawn == counted
        assert points(page, "#throughput-chart") > 0
        assert page.inner_text("#job-state") == "RUNNING"
        # the model: kind, architecture, parameters, layers
        assert page.inner_text("#model-architecture") == "gpt"
        assert page.get_attribute("#model-layers", "data-layers") == "6"
        assert page.inner_text("#model-parameters").endswith("parameters")

        page.wait_for_function(f"document.querySelectorAll('#timeline g.stage-row').length == {STAGES}",
                               timeout=60_000)
        for s in range(STAGES):  # every stage has forward and backward spans
            row = page.locator(f"#timeline g.stage-row[data-stage='{s}']")
            assert row.locator("rect.span-F").count() > 0 and row.locator("rect.span-B").count() > 0
        # one chunk per stage: no chunk shades, labels or legend (as before chunks existed)
        assert page.locator("#timeline rect.span[data-chunk]").count() == 0
        labels = page.locator("#timeline text.span-label").all_text_contents()
        assert all(re.fullmatch(r"\d+", t) for t in labels), labels
        assert page.locator("#chunk-legend").is_hidden()
        assert "chunk" not in page.inner_text("#timeline-box") + page.inner_text("#stage-map")
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


def stored_chunked_job(server: Server) -> tuple[str, Any]:
    """A finished 2-worker hanayo job (2 chunks per worker: virtual stages w and 3 - w) written
    straight into the server's store (SUCCEEDED: the dispatcher leaves it alone); returns its id
    and its timeline."""
    from sqlalchemy.orm import Session

    from pipewave.api.db import JobRow
    from pipewave.api.store import JobStore, new_job_id
    from pipewave.api.views import stage_placement, timeline_of
    from pipewave.service.schedules import make_schedule

    sched = make_schedule("hanayo", 2, 4, 1)
    reports = [SimpleNamespace(stage=s, spans=[(a, 50.0 + i, 50.9 + i) for i, a in enumerate(row) if a])
               for s, row in sorted(sched.grid.items())]
    timeline = timeline_of(reports, first=3, count=1, microbatches=4)
    placement = stage_placement([
        {"stage": 0, "layers": [0, 6], "chunks": [[0, 2], [4, 6]], "node_id": "a" * 56, "device": "cpu"},
        {"stage": 1, "layers": [2, 4], "chunks": [[2, 3], [3, 4]], "node_id": "b" * 56, "device": "cpu"},
    ], ["embed", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "head"])
    job_id, now = new_job_id(), time.time()
    spec = tiny_job(name="waves", schedule="hanayo")
    store = JobStore(f"sqlite:///{server.home / 'jobs.db'}")
    try:
        with Session(store.engine) as s, s.begin():
            s.add(JobRow(id=job_id, name="waves", state="SUCCEEDED", phase="SUCCEEDED",
                         reason="finished 4 steps", spec_json=json.dumps(spec),
                         stages=2, microbatches=4, step=4, steps=4, slots=2,
                         placement_json=json.dumps(placement), cancel_requested=False, body_hash="-",
                         output=str(server.home / "jobs" / job_id), created_at=now - 60, started_at=now - 59,
                         finished_at=now - 1, updated_at=now))
        store.add_event(job_id, "state", "SUCCEEDED: finished 4 steps",
                        {"state": "SUCCEEDED", "phase": "SUCCEEDED"})
        store.put_timeline(job_id, timeline)
    finally:
        store.close()
    return job_id, timeline


def test_dashboard_timeline_tells_chunks_apart(server: Server, browser: Any) -> None:
    job_id, timeline = stored_chunked_job(server)
    assert timeline.chunks_per_stage == 2
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.url}/login?token={TOKEN}")
        page.goto(f"{server.url}/#/jobs/{job_id}")
        page.wait_for_function(f"document.querySelector('#timeline')?.dataset.spans == {len(timeline.spans)}",
                               timeout=20_000)
        rects = page.locator("#timeline rect.span")
        assert rects.count() == len(timeline.spans)
        # each span's chunk, as stored; chunk 0 and chunk 1 spans in every row, forward and backward
        got = sorted((int(r.get_attribute("data-chunk")), r.get_attribute("class")) for r in rects.all())
        want = sorted((s.chunk, f"span span-{s.kind} span-c{s.chunk}") for s in timeline.spans)
        assert got == want
        for stage in (0, 1):
            for kind in ("F", "B"):
                for chunk in (0, 1):
                    assert page.locator(f"#timeline g.stage-row[data-stage='{stage}'] "
                                        f"rect.span-{kind}.span-c{chunk}").count() > 0
        # four distinct colours: F and B stay apart, and each chunk has its own shade of them
        fills = {(kind, chunk): page.eval_on_selector(f"#timeline rect.span-{kind}.span-c{chunk}",
                                                      "r => getComputedStyle(r).fill")
                 for kind in ("F", "B") for chunk in (0, 1)}
        assert len(set(fills.values())) == 4, fills
        # labels name microbatch and chunk ("3c1"); tooltips say the chunk
        labels = page.locator("#timeline text.span-label").all_text_contents()
        assert labels and all(re.fullmatch(r"\d+c[01]", t) for t in labels), labels
        assert {t[-2:] for t in labels} == {"c0", "c1"}
        first = next(s for s in timeline.spans if s.chunk == 1)
        title = page.locator(f"#timeline rect.span-c1[data-microbatch='{first.microbatch}']").first \
            .locator("title").text_content() or ""
        assert "chunk 1" in title, title
        # the legend has one entry per chunk, and the header says how many
        legend = page.locator("#chunk-legend")
        assert legend.is_visible()
        assert legend.locator(".chunk-key").all_inner_texts() == ["chunk 0", "chunk 1"]
        for kind in ("F", "B"):
            assert legend.locator(f".chunk-key[data-chunk='1'] .swatch-{kind}.swatch-c1").count() == 1
        assert "2 chunks per stage" in page.inner_text("#timeline-box >> xpath=..")
        # the stage map lists each worker's chunks with their layers
        stage0 = page.locator("#stage-map .stage[data-stage='0']")
        assert stage0.locator(".layer-range").inner_text() == "0\N{EN DASH}1, 4\N{EN DASH}5"
        assert stage0.locator(".chunk-names").all_inner_texts() == ["c0 embed, block0.attn",
                                                                    "c1 block1.mlp, head"]
        stage1 = page.locator("#stage-map .stage[data-stage='1']")
        assert stage1.locator(".layer-range").inner_text() == "2, 3"  # one layer each
        assert stage1.locator(".chunk-names").all_inner_texts() == ["c0 block0.mlp", "c1 block1.attn"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-chunks.png"), full_page=True)
    finally:
        page.close()
    assert not [e for e in errors if "401" not in e], errors
