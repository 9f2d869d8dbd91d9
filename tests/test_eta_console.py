"""The queue's ETA and the dashboard's timeline through the real app: a real job runs
(storescu → worker), then the worker stops and jobs wait in the queue, one taken by a
worker of the CPU; the API, the jobs page and the dashboard (Debian's chromium) show them.
"""

from __future__ import annotations

import shutil
from datetime import datetime

import pydicom
import pytest

from node.state.events import EventCode
from tests.support.admin import ADMIN_PASSWORD, ServedNode, served_node
from tests.support.browser import logged_in_page, needs_chromium
from tests.support.dcmtk import storescu
from tests.support.jobs import enqueue_job
from tools.net import wait_until
from tools.node_process import PROJECT_ROOT
from tools.synthetic.chest_ct import make_chest_ct, write_series

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "console"
RULE = {"name": "chest-ct", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="needs dcmtk storescu"),
]


@pytest.fixture(scope="module")
def queued(tmp_path_factory) -> tuple[ServedNode, dict[str, int]]:
    """A node with one done job, then (worker stopped) one running and two queued jobs."""
    datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=31)
    files = write_series(datasets, tmp_path_factory.mktemp("series"))
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with served_node(tmp_path_factory.mktemp("node"), {"rules": [RULE]}) as served:
        storescu(served.dicom_port, files)
        node = served.node
        wait_until(lambda: node.queue.jobs(state="done"), 180, message="the first job done")
        node.worker.stop()  # from here the test moves the queue by hand
        [done] = node.queue.jobs(state="done")
        now = node.clock()
        job = {"series_uid": series_uid, "study_uid": done.study_uid, "rule": "chest-ct"}
        running = enqueue_job(node.queue, now, **job)
        node.queue.claim_next(now, owner=node.worker.owner)
        routine = enqueue_job(node.queue, now, **job, priority=5)
        urgent = enqueue_job(node.queue, now, **job, priority=0)
        unknown = enqueue_job(node.queue, now, **job, priority=9, plugin="ct_organs")
        yield (
            served,
            {
                "done": done.id,
                "running": running,
                "routine": routine,
                "urgent": urgent,
                "unknown": unknown,
            },
        )


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_api_gives_active_jobs_an_eta_in_the_claim_order(queued) -> None:
    served, ids = queued
    with served.client(served.viewer_token) as client:
        listed = {job["id"]: job for job in client.get("/api/jobs").json()}
        detail = {i: client.get(f"/api/jobs/{i}").json() for i in ids.values()}
    assert listed[ids["done"]]["eta"] is None and detail[ids["done"]]["eta"] is None
    running, urgent, routine = (detail[ids[k]]["eta"] for k in ("running", "urgent", "routine"))
    for key in ("running", "urgent", "routine"):
        assert listed[ids[key]]["eta"]["basis"] == detail[ids[key]]["eta"]["basis"]
    started = detail[ids["running"]]["started_at"]
    assert at(running["estimated_start"]) == pytest.approx(started, abs=1.0)
    # One worker: the urgent job (queued last) follows the running one, the routine one last.
    assert urgent["estimated_start"] == running["estimated_finish"]
    assert routine["estimated_start"] == urgent["estimated_finish"]
    assert routine["seconds_to_finish"] > urgent["seconds_to_finish"] >= 0.0
    assert "ct_lungs on cpu: 1 earlier job" in urgent["basis"]
    # A routine that never finished a job here: no estimate, and the detail says why.
    assert listed[ids["unknown"]]["eta"] is None and detail[ids["unknown"]]["eta"] is None
    assert "no finished job of ct_organs" in detail[ids["unknown"]]["eta_note"]
    assert "eta_note" not in detail[ids["urgent"]] and "eta_note" not in detail[ids["done"]]


def test_timeline_reports_the_stages_the_events_recorded(queued) -> None:
    served, ids = queued
    with served.client(served.viewer_token) as client:
        timeline = client.get("/api/stats/timeline", params={"hours": 1, "bins": 4}).json()
        events = client.get(f"/api/jobs/{ids['done']}").json()["events"]
        assert client.get("/api/stats/timeline", params={"hours": 0}).status_code == 422
    assert timeline["finished"] == 1 and len(timeline["bins"]) == 4
    [busy] = [b for b in timeline["bins"] if b["finished"]]
    medians = busy["median_seconds"]
    by_code = {e["code"]: e for e in events}

    def seconds(code: EventCode) -> float:
        return float(by_code[code.value]["detail"].split("seconds=")[1].split()[0])

    assert medians["load"] == pytest.approx(seconds(EventCode.VOLUME_LOADED), abs=1e-3)
    assert medians["infer"] == pytest.approx(seconds(EventCode.INFERENCE_DONE), abs=1e-3)
    assert medians["encode"] == pytest.approx(seconds(EventCode.RESULTS_ENCODED), abs=1e-3)
    wait = by_code[EventCode.JOB_STARTED.value]["at"] - by_code[EventCode.JOB_QUEUED.value]["at"]
    assert medians["wait"] == pytest.approx(wait, abs=1e-3)
    assert medians["export"] == 0.0  # no destinations: done when the results are written
    assert 0.0 <= medians["receive"] < 120.0


@needs_chromium
def test_console_draws_the_timeline_and_shows_the_eta(queued) -> None:
    pytest.importorskip("playwright.sync_api")
    served, ids = queued
    with logged_in_page(served.url, "admin", ADMIN_PASSWORD) as page:
        page.wait_for_selector("#timeline-chart svg rect.throughput")
        assert page.locator("#timeline-chart rect.throughput").get_attribute("data-finished") == "1"
        stages = page.locator("#timeline-chart rect.stage").evaluate_all(
            "rects => rects.map(r => r.dataset.stage)"
        )
        assert {"load", "infer", "encode", "wait"} <= set(stages)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#timeline-chart").screenshot(path=ARTIFACTS / "eta-timeline.png")
        page.goto(f"{served.url}/jobs")
        urgent = page.locator(f"tr[data-job-id='{ids['urgent']}'] td.eta").inner_text()
        running = page.locator(f"tr[data-job-id='{ids['running']}'] td.eta").inner_text()
        done = page.locator(f"tr[data-job-id='{ids['done']}'] td.eta").inner_text()
        assert urgent.startswith("starts ~") and ", done ~" in urgent
        assert running.startswith("started ")
        assert done.strip() == ""
        page.screenshot(path=ARTIFACTS / "eta-jobs.png", full_page=True)
        page.goto(f"{served.url}/jobs/{ids['routine']}")
        assert "ct_lungs on cpu" in page.locator("dd.eta").inner_text()
