"""The admin REST API over real HTTP against a running node (real SQLite, real DICOM)."""

from __future__ import annotations

import html
import io
import json
import re
import sys
from pathlib import Path

import pydicom
import pytest
import torch

from tests.support.admin import (
    ADMIN_PASSWORD,
    ServedNode,
    login_session,
    served_node,
)
from tests.support.dcmtk import storescu
from tests.support.jobs import enqueue_job
from tests.support.plugins import UNIMPORTABLE_MODULE, UNLOADABLE_PLUGIN, write_distribution
from tools.net import free_port, wait_until
from tools.synthetic.chest_ct import make_chest_ct, write_series

RULE = {"name": "chest-ct", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}


@pytest.fixture(scope="module")
def series_dirs(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("series")
    chest, _ = make_chest_ct(
        n_slices=24, rows=96, columns=96, seed=11, series_description="Chest CT 1.0"
    )
    head, _ = make_chest_ct(
        n_slices=8,
        rows=32,
        columns=32,
        seed=12,
        series_description="Head routine",
        include_lungs=False,
    )
    return {
        "chest": write_series(chest, root / "chest"),
        "head": write_series(head, root / "head"),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory, series_dirs) -> ServedNode:
    with served_node(tmp_path_factory.mktemp("node"), {"rules": [RULE]}) as served:
        storescu(served.dicom_port, series_dirs["chest"] + series_dirs["head"])
        with served.client(served.admin_token) as client:
            wait_until(
                lambda: (
                    len(
                        [
                            j
                            for j in client.get("/api/jobs").json()
                            if j["state"] in ("done", "skipped")
                        ]
                    )
                    == 2
                ),
                180,
                message="both jobs finished",
            )
        yield served


def uid_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


# -- open endpoints and authentication ------------------------------------------------------


def test_health_ready_and_metrics_need_no_login(served: ServedNode) -> None:
    with served.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and all(ready.json()["checks"].values())
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        text = metrics.text
    assert "ainode_instances_received_total 32.0" in text
    assert 'ainode_queue_depth{priority="5"}' in text
    assert 'ainode_job_duration_seconds_count{plugin="ct_lungs"} 1.0' in text
    assert "ainode_series_completed_total 2.0" in text
    assert "ainode_received_bytes_total" in text and "ainode_bytes_received" not in text
    # The head series is too short for ct_lungs: a skip (an Accepts refusal), not a failure.
    assert 'ainode_jobs{state="skipped"} 1.0' in text and 'ainode_jobs{state="failed"} 0.0' in text
    assert "# TYPE ainode_quality_skips_total counter" in text  # none here: not the gate
    # The custom registry carries the process and interpreter collectors and the build.
    assert "process_resident_memory_bytes " in text and "process_open_fds " in text
    assert "python_info{" in text and "python_gc_objects_collected_total{" in text
    assert 'ainode_build_info{version="' in text
    # Both series came in one storescu association; nothing was sent, so nothing failed.
    assert "ainode_associations_total 1.0" in text
    assert "ainode_export_failures_total 0.0" in text
    # GPU memory: the family is always declared; samples only where CUDA is.
    assert "# TYPE ainode_gpu_memory_bytes gauge" in text
    gpu_samples = [
        line for line in text.splitlines() if line.startswith("ainode_gpu_memory_bytes{")
    ]
    if torch.cuda.is_available():
        assert any('device="cuda:0",kind="allocated"' in line for line in gpu_samples)
    else:
        assert gpu_samples == []


@pytest.mark.parametrize("path", ["/api/rules", "/api/jobs", "/api/audit", "/api/plugins"])
def test_api_without_credentials_is_401_json(served: ServedNode, path: str) -> None:
    with served.client() as client:
        response = client.get(path)
    assert response.status_code == 401
    assert "log in" in response.json()["message"]


def test_pages_redirect_to_login_and_bad_token_is_refused(served: ServedNode) -> None:
    with served.client() as client:
        page = client.get("/jobs", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/jobs"
    with served.client("ainode_not-a-token") as client:
        assert client.get("/api/rules").status_code == 401


def test_viewer_reads_but_cannot_change(served: ServedNode) -> None:
    with served.client(served.viewer_token) as client:
        assert client.get("/api/rules").status_code == 200
        refused = client.post("/api/rules", json={**RULE, "name": "viewer-rule"})
        assert refused.status_code == 403
        assert "viewer role" in refused.json()["message"]
        assert client.get("/api/users").status_code == 403
        # Testing is reading: viewers may test rules.
        tested = client.post("/api/rules/test", json={"header": {"Modality": "CT"}})
        assert tested.status_code == 200


def test_session_login_needs_csrf_for_changes(served: ServedNode) -> None:
    client, csrf = login_session(served.url, "admin", ADMIN_PASSWORD)
    try:
        body = {**RULE, "name": "session-rule", "enabled": False}
        missing = client.post("/api/rules", json=body)
        assert missing.status_code == 403 and "CSRF" in missing.json()["message"]
        created = client.post("/api/rules", json=body, headers={"X-CSRF-Token": csrf})
        assert created.status_code == 201, created.text
        client.delete(f"/api/rules/{created.json()['id']}", headers={"X-CSRF-Token": csrf})
        logout = client.post("/logout", data={"csrf_token": csrf})
        assert logout.status_code == 303
        assert client.get("/api/me").status_code == 401
    finally:
        client.close()
    with served.client() as anonymous:
        bad = anonymous.post("/login", data={"username": "admin", "password": "wrong"})
        assert bad.status_code == 400  # no login form token: nothing is checked


def test_wrong_password_shows_the_form_again(served: ServedNode) -> None:
    with served.client() as client:
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        response = client.post(
            "/login", data={"username": "admin", "password": "nope", "csrf_token": token}
        )
    assert response.status_code == 401
    assert "Wrong user name or password" in response.text


# -- rules --------------------------------------------------------------------------------


def test_rule_lifecycle_is_versioned_and_audited(served: ServedNode) -> None:
    with served.client(served.admin_token) as client:
        created = client.post(
            "/api/rules", json={**RULE, "name": "mr-brain", "match": "Modality: MR\n"}
        )
        assert created.status_code == 201, created.text
        rule = created.json()
        assert rule["match"] == {"Modality": "MR"} and rule["version"] == 1
        updated = client.put(
            f"/api/rules/{rule['id']}", json={**RULE, "name": "mr-brain", "priority": 2}
        )
        assert updated.json()["version"] == 2 and updated.json()["priority"] == 2
        versions = client.get(f"/api/rules/{rule['id']}/versions").json()
        assert [(v["version"], v["user"]) for v in versions] == [(2, "admin"), (1, "admin")]
        restored = client.post(f"/api/rules/{rule['id']}/versions/1/restore").json()
        assert restored["version"] == 3 and restored["match"] == {"Modality": "MR"}
        order = [r["id"] for r in client.get("/api/rules").json()]
        reordered = client.post("/api/rules/order", json={"order": order[::-1]})
        assert [r["id"] for r in reordered.json()] == order[::-1]
        client.post("/api/rules/order", json={"order": order})
        assert client.delete(f"/api/rules/{rule['id']}").status_code == 200
        assert client.get(f"/api/rules/{rule['id']}").status_code == 404
        audit = client.get("/api/audit", params={"target": f"rule:{rule['id']}"}).json()
    assert [a["action"] for a in audit] == [
        "rule.delete",
        "rule.restore",
        "rule.update",
        "rule.create",
    ]
    assert audit[2]["before"]["priority"] == 5 and audit[2]["after"]["priority"] == 2
    assert all(a["user"] == "admin" for a in audit)


def test_invalid_rules_point_at_the_field(served: ServedNode) -> None:
    with served.client(served.admin_token) as client:
        bad = client.post(
            "/api/rules",
            json={
                **RULE,
                "name": "bad",
                "match": {"SeriesDescription": {"regex": "("}},
                "send_to": ["nowhere"],
            },
        )
        assert bad.status_code == 422
        fields = {e["field"]: e["message"] for e in bad.json()["errors"]}
        assert "invalid regular expression" in fields["match.SeriesDescription.regex"]
        assert "unknown destination 'nowhere'" in fields["send_to[0]"]
        duplicate = client.post("/api/rules", json=RULE)
        assert duplicate.status_code == 422
        assert duplicate.json()["errors"][0]["field"] == "name"
        checked = client.post(
            "/api/rules/validate", json={"rule": {**RULE, "priority": 12, "plugin": "x"}}
        ).json()
        assert not checked["valid"]
        assert {e["field"] for e in checked["errors"]} == {"name", "priority", "plugin"}
        checked = client.post(
            "/api/rules/validate", json={"rule": {**RULE, "name": "other", "plugin": "x"}}
        )
        assert [e["field"] for e in checked.json()["errors"]] == ["plugin"]
        ok = client.post("/api/rules/validate", json={"rule": {**RULE, "name": "new"}}).json()
        assert ok["valid"] and ok["conditions"] == ["Modality equals 'CT'"]
        missing = client.put("/api/rules/9999", json=RULE)
        assert missing.status_code == 404 and "9999" in missing.json()["message"]
        no_name = client.post("/api/rules", json={"plugin": "ct_lungs"})
        assert no_name.status_code == 422 and no_name.json()["errors"][0]["field"] == "name"


def test_rule_test_against_stored_series_file_and_header(served, series_dirs) -> None:
    candidate = {
        "name": "head-only",
        "match": {"SeriesDescription": {"regex": "(?i)head"}},
        "plugin": "ct_lungs",
    }
    with served.client(served.viewer_token) as client:
        stored = client.post(
            "/api/rules/test", json={"series_uid": uid_of(series_dirs["head"]), "rule": candidate}
        ).json()
        assert stored["fires"] == ["chest-ct", "head-only"]
        assert [r["candidate"] for r in stored["results"]] == [False, True]
        chest = client.post(
            "/api/rules/test", json={"series_uid": uid_of(series_dirs["chest"]), "rule": candidate}
        ).json()
        assert chest["fires"] == ["chest-ct"]
        assert chest["results"][1]["failed"] == ["SeriesDescription regex '(?i)head'"]
        upload = client.post(
            "/api/rules/test/file",
            files={"file": ("x.dcm", series_dirs["head"][0].read_bytes())},
            data={"rule": json.dumps(candidate)},
        ).json()
        assert upload["fires"] == ["chest-ct", "head-only"]
        header = client.post(
            "/api/rules/test", json={"header": {"Modality": "MR"}, "rule": candidate}
        ).json()
        assert header["fires"] == []
        not_dicom = client.post("/api/rules/test/file", files={"file": ("x.txt", io.BytesIO(b""))})
        assert not_dicom.status_code == 422 and not_dicom.json()["errors"][0]["field"] == "file"
        unknown = client.post("/api/rules/test", json={"series_uid": "1.2.3.4"})
        assert unknown.status_code == 404 and "1.2.3.4" in unknown.json()["message"]


def test_replay_lists_what_would_change(served: ServedNode, series_dirs) -> None:
    head_uid = uid_of(series_dirs["head"])
    with served.client(served.viewer_token) as client:
        rules = client.get("/api/rules").json()
        chest_id = next(r["id"] for r in rules if r["name"] == "chest-ct")
        narrowed = {**RULE, "match": {"Modality": "CT", "SeriesDescription": {"regex": "Chest"}}}
        replay = client.post(
            "/api/rules/replay", json={"days": 1, "rule": narrowed, "rule_id": chest_id}
        ).json()
        assert replay["series"] == 2 and replay["changed"] == 1
        assert (replay["jobs_now"], replay["jobs_proposed"]) == (2, 1)
        changed = next(i for i in replay["items"] if i["removed"])
        assert changed["series_uid"] == head_uid and changed["removed"] == ["chest-ct"]
        removed = client.post("/api/rules/replay", json={"days": 1, "remove_id": chest_id}).json()
        assert removed["jobs_proposed"] == 0
        bad = client.post("/api/rules/replay", json={"days": 0})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "days"


# -- jobs, studies ------------------------------------------------------------------------


def test_job_list_filters_and_detail(served: ServedNode) -> None:
    with served.client(served.viewer_token) as client:
        # Too few slices for ct_lungs' Accepts: skipped, not failed (nothing is broken).
        assert client.get("/api/jobs", params={"state": "failed"}).json() == []
        failed = client.get("/api/jobs", params={"state": "skipped"}).json()
        assert len(failed) == 1 and "slices" in failed[0]["error"]
        assert failed[0]["series"]["series_description"] == "Head routine"
        assert len(client.get("/api/jobs", params={"text": "Chest CT 1.0"}).json()) == 1
        assert len(client.get("/api/jobs", params={"plugin": "ct_lungs"}).json()) >= 2
        dated = client.get(
            "/api/jobs", params={"study_date_from": "2024-01-01", "study_date_to": "2024-01-01"}
        )
        assert len(dated.json()) >= 2
        assert client.get("/api/jobs", params={"study_date_from": "2099-01-01"}).json() == []
        bad = client.get("/api/jobs", params={"study_date_from": "yesterday"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "study_date_from"
        assert client.get("/api/jobs", params={"state": "weird"}).status_code == 422
        detail = client.get(f"/api/jobs/{failed[0]['id']}").json()
        events = [e["event"] for e in detail["events"]]
        assert events[:4] == ["received", "complete", "queued", "started"], events
        assert events[-1] == "skipped", events
        times = [e["at"] for e in detail["events"]]
        assert times == sorted(times)
        assert "8 instances" in detail["events"][1]["detail"]
        assert "CT_SCANNER" in detail["events"][0]["detail"]
        done = client.get("/api/jobs", params={"state": "done"}).json()[0]
        done_events = [e["event"] for e in client.get(f"/api/jobs/{done['id']}").json()["events"]]
        milestones = ["received", "complete", "queued", "started", "results_written", "done"]
        assert [e for e in done_events if e in milestones] == milestones, done_events
        assert client.get("/api/jobs/424242").status_code == 404
    browser, _ = login_session(served.url, "viewer", "viewer-password-1")
    try:
        page = browser.get(f"/jobs/{failed[0]['id']}").text
        skipped_page = browser.get("/jobs", params={"state": "skipped"}).text
        dashboard = browser.get("/").text
    finally:
        browser.close()
    # The console's timeline is classed by event code (never by wording or display name).
    timeline = re.findall(r'<li class="ev-([a-z_-]+)">', page)
    assert timeline == [e["code"].replace(".", "-") for e in detail["events"]]
    assert timeline[:4] == ["series-received", "series-complete", "job-queued", "job-started"]
    assert timeline[-1] == "job-skipped"
    # The console filters on the state and shows its own badge; the dashboard counts it apart.
    assert "<option selected>skipped</option>" in skipped_page
    assert re.findall(r'class="state state-([a-z]+)"', skipped_page) == ["skipped"]
    assert re.search(r'id="skipped-today"[^>]*>1 skipped<', dashboard)


def test_job_actions_are_audited(served: ServedNode) -> None:
    with served.client(served.admin_token) as client:
        failed = client.get("/api/jobs", params={"state": "skipped"}).json()[0]
        done = client.get("/api/jobs", params={"state": "done"}).json()[0]
        cancel_done = client.post(f"/api/jobs/{done['id']}/cancel")
        assert cancel_done.status_code == 409 and "done" in cancel_done.json()["message"]
        assert (
            client.post(f"/api/jobs/{done['id']}/priority", json={"priority": 1}).status_code == 409
        )
        bad_priority = client.post(f"/api/jobs/{failed['id']}/priority", json={"priority": 11})
        assert bad_priority.status_code == 422
        assert bad_priority.json()["errors"][0]["field"] == "priority"
        bad_plugin = client.post(f"/api/jobs/{done['id']}/rerun", json={"plugin": "nope"})
        assert bad_plugin.status_code == 422 and "nope" in bad_plugin.json()["message"]
        retried = client.post(f"/api/jobs/{failed['id']}/retry")
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        wait_until(
            lambda: client.get(f"/api/jobs/{failed['id']}").json()["state"] == "skipped",
            60,
            message="retried job to be skipped again",
        )
        events = [e["event"] for e in client.get(f"/api/jobs/{failed['id']}").json()["events"]]
        after_retry = events[events.index("retried") :]
        assert after_retry[1] == "started" and after_retry[-1] == "skipped", events
        audit = client.get("/api/audit", params={"target": f"job:{failed['id']}"}).json()
        assert audit[0]["action"] == "job.retry" and audit[0]["user"] == "admin"
        assert audit[0]["before"]["state"] == "skipped" and audit[0]["after"]["state"] == "queued"
        # Re-run with another plugin: a new job for the same series and rule.
        rerun = client.post(f"/api/jobs/{failed['id']}/rerun", json={"plugin": "ct_organs"})
        assert rerun.status_code == 201, rerun.text
        new_job = rerun.json()
        assert new_job["id"] != failed["id"] and new_job["plugin"] == "ct_organs"
        assert (new_job["series_uid"], new_job["rule"]) == (failed["series_uid"], "chest-ct")
        wait_until(
            lambda: (
                client.get(f"/api/jobs/{new_job['id']}").json()["state"]
                in ("done", "failed", "skipped")
            ),
            120,
            message="re-run job to finish",
        )
        new_events = client.get(f"/api/jobs/{new_job['id']}").json()["events"]
        assert any(
            e["event"] == "rerun_of" and f"job {failed['id']}" in e["detail"] for e in new_events
        )
        audit = client.get("/api/audit", params={"target": f"job:{failed['id']}"}).json()
        assert audit[0]["action"] == "job.rerun" and audit[0]["user"] == "admin"
        assert audit[0]["before"]["plugin"] == "ct_lungs"
        assert audit[0]["after"]["plugin"] == "ct_organs"
        assert audit[0]["after"]["job_id"] == new_job["id"]


def test_cancel_priority_and_private_metrics(tmp_path: Path, series_dirs) -> None:
    """A job waiting to resend to a PACS that is down: its priority changes and it is
    cancelled through the API, each audited with before/after; with
    ``security.public_metrics: false`` /metrics needs a login, and counts the failed send."""
    config = {
        "security": {"public_metrics": False},
        "destinations": {
            "down": {
                "ae_title": "NOBODY",
                "host": "127.0.0.1",
                "port": free_port(),
                "timeout_seconds": 2,
                "backoff_seconds": 3600,  # the job waits in 'exporting' for its next try
            }
        },
        "rules": [{**RULE, "send_to": ["down"]}],
    }
    with served_node(tmp_path, config) as served, served.client(served.admin_token) as client:
        storescu(served.dicom_port, series_dirs["chest"])

        def waiting() -> dict | None:
            for job in client.get("/api/jobs", params={"state": "exporting"}).json():
                events = client.get(f"/api/jobs/{job['id']}").json()["events"]
                if any(e["event"] == "export_retry_scheduled" for e in events):
                    return job
            return None

        wait_until(lambda: waiting() is not None, 180, message="a job waiting to resend")
        job = waiting()
        assert job is not None and job["priority"] == 5
        changed = client.post(f"/api/jobs/{job['id']}/priority", json={"priority": 1})
        assert changed.status_code == 200 and changed.json()["priority"] == 1
        cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        events = [e["event"] for e in client.get(f"/api/jobs/{job['id']}").json()["events"]]
        assert events[-3:] == ["export_retry_scheduled", "priority_changed", "cancelled"]
        audit = client.get("/api/audit", params={"target": f"job:{job['id']}"}).json()
        with served.client() as anonymous:
            refused = anonymous.get("/metrics")
        metrics = client.get("/metrics")
        with served.client(served.viewer_token) as viewer:
            assert viewer.get("/metrics").status_code == 200
    assert [a["action"] for a in audit] == ["job.cancel", "job.priority"]
    assert all(a["user"] == "admin" for a in audit)
    cancel, priority = audit
    assert (priority["before"]["priority"], priority["after"]["priority"]) == (5, 1)
    assert (cancel["before"]["state"], cancel["after"]["state"]) == ("exporting", "cancelled")
    assert refused.status_code == 401 and "log in" in refused.json()["message"]
    assert metrics.status_code == 200
    assert "ainode_export_failures_total 1.0" in metrics.text


def test_studies_show_instances_and_job_counts(served: ServedNode, series_dirs) -> None:
    with served.client(served.viewer_token) as client:
        studies = client.get("/api/studies").json()
        series = {s["series_uid"]: s for study in studies for s in study["series"]}
        head = series[uid_of(series_dirs["head"])]
        assert head["instance_count"] == 8 and head["state"] == "complete"
        assert head["series_description"] == "Head routine" and head["calling_ae"] == "CT_SCANNER"
        assert head["jobs"].get("skipped", 0) >= 1
        one = client.get(f"/api/series/{head['series_uid']}").json()
        assert one["jobs"][0]["rule"] == "chest-ct"
        again = client.post(
            f"/api/series/{head['series_uid']}/complete",
            headers={"Authorization": f"Bearer {served.admin_token}"},
        )
        assert again.status_code == 409 and "already complete" in again.json()["message"]


def test_force_complete_routes_a_series_at_once(tmp_path: Path, series_dirs) -> None:
    config = {"completion": {"series_quiet_seconds": 3600}, "rules": [RULE]}
    with served_node(tmp_path, config) as served, served.client(served.admin_token) as client:
        storescu(served.dicom_port, series_dirs["head"])
        uid = uid_of(series_dirs["head"])
        series = client.get(f"/api/series/{uid}").json()
        assert (series["state"], series["instance_count"]) == ("receiving", 8)
        assert client.get("/api/jobs").json() == []
        completed = client.post(f"/api/series/{uid}/complete")
        assert completed.status_code == 200 and completed.json()["state"] == "complete"
        jobs = client.get("/api/jobs", params={"series_uid": uid}).json()
        assert [j["rule"] for j in jobs] == ["chest-ct"]
        audit = client.get("/api/audit", params={"action": "series"}).json()
        assert audit[0]["target"] == f"series:{uid}"


def test_healthz_is_503_while_the_dicom_listener_is_down(tmp_path: Path) -> None:
    with served_node(tmp_path) as served, served.client() as client:
        assert client.get("/healthz").status_code == 200
        served.node.scp.stop()
        down = client.get("/healthz")
        assert down.status_code == 503 and down.json()["status"] == "starting"
        served.node.scp.start()
        assert client.get("/healthz").status_code == 200


def test_job_list_pages_back_by_id(tmp_path: Path) -> None:
    """API pages follow the ``Link: rel="next"`` header; the console pages with "Older jobs"."""
    from node.api.web import JOBS_PER_PAGE

    config = {"completion": {"series_quiet_seconds": 3600}}
    with served_node(tmp_path, config) as served:
        queue = served.node.queue
        ids = [
            enqueue_job(queue, served.node.clock(), series_uid=f"1.2.9.{n}", rule="paging")
            for n in range(JOBS_PER_PAGE + 3)
        ]
        pages: list[list[int]] = []
        with served.client(served.viewer_token) as client:
            url: str | None = "/api/jobs?rule=paging&limit=40"
            while url:
                answer = client.get(url)
                assert answer.status_code == 200, answer.text
                pages.append([job["id"] for job in answer.json()])
                url = answer.links.get("next", {}).get("url")
        browser, _ = login_session(served.url, "viewer", "viewer-password-1")
        first = browser.get("/jobs", params={"rule": "paging"})
        older = re.search(r'id="older-jobs" href="([^"]+)"', first.text)
        assert older, first.text
        second = browser.get(html.unescape(older.group(1)))
        browser.close()
    assert [len(page) for page in pages] == [40, 40, 23]
    assert [i for page in pages for i in page] == sorted(ids, reverse=True)
    on_first = re.findall(r'data-job-id="(\d+)"', first.text)
    on_second = re.findall(r'data-job-id="(\d+)"', second.text)
    assert len(on_first) == JOBS_PER_PAGE and len(on_second) == 3
    assert int(on_second[0]) == int(on_first[-1]) - 1
    assert 'id="older-jobs"' not in second.text and "Newest jobs" in second.text


# -- destinations, plugins, users ---------------------------------------------------------


def test_destinations_crud_echo_and_references(served: ServedNode) -> None:
    own = {"ae_title": "AINODE", "host": "127.0.0.1", "port": served.dicom_port}
    with served.client(served.admin_token) as client:
        created = client.post("/api/destinations/self", json=own)
        assert created.status_code == 201, created.text
        echo = client.post("/api/destinations/self/echo").json()
        assert echo["ok"] and echo["status"] == 0
        closed = {
            "ae_title": "NOBODY",
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout_seconds": 2,
        }
        failed = client.post("/api/destinations/echo", json=closed).json()
        assert not failed["ok"] and "association" in failed["message"]
        bad = client.post(
            "/api/destinations/bad", json={**own, "ae_title": "WAY_TOO_LONG_AE_TITLE"}
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "ae_title"
        assert client.post("/api/destinations/self", json=own).status_code == 409
        rule = client.post(
            "/api/rules", json={**RULE, "name": "to-self", "enabled": False, "send_to": ["self"]}
        ).json()
        in_use = client.delete("/api/destinations/self")
        assert in_use.status_code == 409 and "to-self" in in_use.json()["message"]
        client.delete(f"/api/rules/{rule['id']}")
        moved = client.put("/api/destinations/self", json={**own, "port": 104})
        assert moved.json()["port"] == 104
        assert client.delete("/api/destinations/self").status_code == 200
        audit = client.get("/api/audit", params={"target": "destination:self"}).json()
    assert [a["action"] for a in audit] == [
        "destination.delete",
        "destination.update",
        "destination.create",
    ]
    assert audit[1]["before"]["port"] == served.dicom_port and audit[1]["after"]["port"] == 104


def test_dicomweb_credentials_are_never_shown(served: ServedNode) -> None:
    """Viewers, the console page and the audit log see a placeholder, never the secret;
    an edit that sends the placeholder back keeps the stored secret."""
    secret = "s3cret-basic-password"
    web = {
        "kind": "dicomweb",
        "url": "http://127.0.0.1:9/dicom-web",
        "auth": {"type": "basic", "username": "node", "password": secret},
    }
    with served.client(served.admin_token) as client:
        created = client.post("/api/destinations/web", json=web)
        assert created.status_code == 201, created.text
        shown = created.json()["auth"]
        assert shown == {**web["auth"], "password": "********", "token": ""}
        # The console's edit form sends back what it was shown: the secret stays.
        kept = client.put(
            "/api/destinations/web", json={**web, "auth": shown, "timeout_seconds": 5}
        )
        assert kept.status_code == 200, kept.text
        stored = served.node.admin.destinations.get("web")
        assert stored.auth.password == secret and stored.timeout_seconds == 5
        # A placeholder with nothing of that kind stored is refused, naming the field.
        token_auth = {"type": "bearer", "token": "********"}
        refused = client.put("/api/destinations/web", json={**web, "auth": token_auth})
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "auth.token"
        audit = client.get("/api/audit", params={"target": "destination:web"}).json()
        with served.client(served.viewer_token) as viewer:
            listed = viewer.get("/api/destinations").json()["web"]
        page_client, _ = login_session(served.url, "viewer", "viewer-password-1")
        page = page_client.get("/destinations")
        page_client.close()
        client.delete("/api/destinations/web")
    assert listed["auth"]["password"] == "********"
    assert [a["action"] for a in audit] == ["destination.update", "destination.create"]
    assert secret not in json.dumps(audit)
    assert page.status_code == 200 and "web" in page.text and secret not in page.text


def test_plugins_are_listed(served: ServedNode) -> None:
    with served.client(served.viewer_token) as client:
        plugins = {p["name"]: p for p in client.get("/api/plugins").json()}
    assert plugins["ct_lungs"]["status"] == "ok" and plugins["ct_lungs"]["version"]
    assert plugins["ct_lungs"]["loaded_on"] == ["cpu"]
    declared = plugins["ct_lungs"]["validated_on"]
    assert declared["modalities"] == ["CT"] and declared["noise"] == [9.0, 36.0]
    client, _ = login_session(served.url, "viewer", "viewer-password-1")
    try:
        page = client.get("/plugins")
    finally:
        client.close()
    assert page.status_code == 200 and "CTImageStorage; slices 0.75-6 mm" in page.text


def test_plugin_import_configure_and_load_errors_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, series_dirs
) -> None:
    """Plugins that fail to import (entry point), to be configured (models:) or to load
    (on the first job) are listed by /api/plugins and the console with their reasons."""
    site = write_distribution(
        tmp_path / "site",
        "ainode-broken-plugins",
        {"needs_libfoo": "ainode_api_nodeps", "unloadable": "ainode_api_unloadable"},
        {
            "ainode_api_nodeps": UNIMPORTABLE_MODULE,
            "ainode_api_unloadable": UNLOADABLE_PLUGIN.format(name="unloadable"),
        },
    )
    monkeypatch.syspath_prepend(str(site))
    for module in ("ainode_api_nodeps", "ainode_api_unloadable"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    config = {
        "models": {
            "missing-ts": {
                "type": "torchscript",
                "path": str(tmp_path / "nope.ts"),
                "template": "ct_organs",
                "spacing_mm": [4, 4, 4],
                "window": {"a_min": -1000, "a_max": 400},
                "labels": ["background", "liver"],
            }
        },
        "rules": [{**RULE, "name": "to-unloadable", "plugin": "unloadable"}],
    }
    with served_node(tmp_path / "node", config) as served:
        storescu(served.dicom_port, series_dirs["head"])
        with served.client(served.viewer_token) as client:
            wait_until(
                lambda: [j["state"] for j in client.get("/api/jobs").json()] == ["failed"],
                60,
                message="the job of the unloadable plugin to fail",
            )
            (job,) = client.get("/api/jobs").json()
            plugins = {p["name"]: p for p in client.get("/api/plugins").json()}
        page_client, _ = login_session(served.url, "viewer", "viewer-password-1")
        page = page_client.get("/plugins").text
        page_client.close()
    assert "weights file is truncated" in job["error"]
    nodeps = plugins["needs_libfoo"]
    assert nodeps["status"] == "error" and "libfoo" in nodeps["error"]
    assert nodeps["error"].startswith("ImportError")
    missing = plugins["missing-ts"]
    assert missing["status"] == "error" and "TorchScript file not found" in missing["error"]
    unloadable = plugins["unloadable"]
    assert (unloadable["status"], unloadable["version"]) == ("error", "0.9.0")
    assert "failed to load on cpu: RuntimeError: weights file is truncated" in unloadable["error"]
    assert list(unloadable["load_errors"]) == ["cpu"] and unloadable["loaded_on"] == []
    assert plugins["ct_lungs"]["status"] == "ok" and plugins["ct_lungs"]["error"] is None
    for reason in ("libfoo", "TorchScript file not found", "weights file is truncated"):
        assert html.escape(reason, quote=True) in page or reason in page


def test_users_and_tokens(served: ServedNode) -> None:
    with served.client(served.admin_token) as client:
        weak = client.post("/api/users", json={"username": "carol", "password": "short"})
        assert weak.status_code == 422 and weak.json()["errors"][0]["field"] == "password"
        created = client.post(
            "/api/users", json={"username": "carol", "password": "long-enough-1", "role": "viewer"}
        )
        assert created.status_code == 201
        token = client.post("/api/users/carol/tokens", json={"name": "script"}).json()
        with served.client(token["token"]) as carol:
            assert carol.get("/api/me").json()["username"] == "carol"
            client.delete(f"/api/tokens/{token['id']}")
            assert carol.get("/api/me").status_code == 401
        assert client.patch("/api/users/admin", json={"role": "viewer"}).status_code == 409
        assert client.delete("/api/users/carol").status_code == 200
        audit = client.get("/api/audit", params={"target": "user:carol"}).json()
    assert [a["action"] for a in audit] == [
        "user.delete",
        "token.revoke",
        "token.create",
        "user.create",
    ]
    assert "password" not in json.dumps(audit).replace("password_changed", "")


def test_unknown_paths_and_openapi(served: ServedNode) -> None:
    with served.client() as client:
        missing = client.get("/api/nothing-here")
        assert missing.status_code in (401, 404)
        assert client.get("/openapi.json").json()["info"]["title"] == "ainode"


def test_docs_is_swagger_ui_served_by_the_node(served: ServedNode) -> None:
    """/docs answers without login and every script, style and icon it loads is the node's."""
    with served.client() as client:
        docs = client.get("/docs")
        assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert {a.rsplit("/", 1)[-1] for a in assets} >= {
            "swagger-ui-bundle.js",
            "swagger-ui.css",
        }
        for asset in assets:
            assert asset.startswith("/"), asset  # no CDN, no other host
            answer = client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 100, asset
        assert "validatorUrl: null" in docs.text  # no badge from the public validator
        assert 'url: "/openapi.json"' in docs.text
        assert client.get("/redoc").status_code == 404  # its page would load from a CDN


#: Every console page (and the login and API pages a browser opens).
CONSOLE_PAGES = [
    "/",
    "/rules",
    "/rules/1",
    "/jobs",
    "/jobs/1",
    "/studies",
    "/destinations",
    "/plugins",
    "/audit",
    "/users",
    "/worklist",
    "/docs",
]
_URL_ATTRIBUTE = re.compile(r"""(?:src|href|action|poster|srcset)\s*=\s*["']([^"']*)["']""", re.I)
_CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)["']?\s*\)|@import\s+["']([^"']+)["']""", re.I)


def _foreign(url: str, own: str) -> bool:
    """Whether ``url`` points at another host (absolute or scheme-relative)."""
    url = url.strip()
    if url.startswith("//"):
        url = "http:" + url
    if not re.match(r"(?i)https?://", url):
        return False
    return not url.startswith(own + "/") and url != own


def test_console_ships_no_external_assets(served: ServedNode) -> None:
    """No page and no static file refers to another host: scripts, styles, fonts and images
    all come from the node (the console must work in a hospital network without Internet)."""
    from node.api.app import STATIC_DIR

    client, _ = login_session(served.url, "admin", ADMIN_PASSWORD)
    local: set[str] = set()
    try:
        for path in ["/login", *CONSOLE_PAGES]:
            page = client.get(path)
            assert page.status_code == 200, path
            urls = _URL_ATTRIBUTE.findall(page.text)
            urls += [a or b for a, b in _CSS_URL.findall(page.text)]
            foreign = [u for u in urls if _foreign(u, served.url)]
            assert foreign == [], (path, foreign)
            local |= {u for u in urls if u.startswith("/static/")}
        static = sorted(p.name for p in STATIC_DIR.rglob("*") if p.is_file())
        assert static, "the console ships its own files"
        for name in static:
            answer = client.get(f"/static/{name}")
            assert answer.status_code == 200, name
            if name.endswith(".css"):
                urls = [a or b for a, b in _CSS_URL.findall(answer.text)]
                assert [u for u in urls if _foreign(u, served.url)] == [], name
            if name.endswith(".js"):
                assert not re.findall(r"https?://[^\s'\"]+", answer.text), name
        for url in sorted(local):  # every file a page asks for is there
            assert client.get(url).status_code == 200, url
    finally:
        client.close()
    assert {"/static/console.css", "/static/console.js"} <= {u.split("?")[0] for u in local}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/rules",
        "/rules/1",
        "/jobs",
        "/jobs?state=skipped&text=Head",
        "/jobs/1",
        "/studies",
        "/destinations",
        "/plugins",
        "/audit",
        "/audit?action=rule",
        "/users",
    ],
)
def test_console_pages_render_for_admin(served: ServedNode, path: str) -> None:
    client, _ = login_session(served.url, "admin", ADMIN_PASSWORD)
    try:
        page = client.get(path)
    finally:
        client.close()
    assert page.status_code == 200, page.text[:500]
    assert "<main>" in page.text and "Log out" in page.text


def test_viewer_sees_no_edit_controls(served: ServedNode) -> None:
    client, _ = login_session(served.url, "viewer", "viewer-password-1")
    try:
        rules = client.get("/rules/1").text
        users = client.get("/users", headers={"Accept": "text/html"})
    finally:
        client.close()
    assert "viewer role" in rules and 'id="save-rule"' not in rules
    assert users.status_code == 403
