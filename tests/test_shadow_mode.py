"""Shadow mode: a rule's jobs run and their results are stored and listed, nothing is sent.

The end-to-end test sends a chest CT to a node with two rules on the same
routine: a shadow rule whose destination is a real Orthanc, and a live rule
whose destination is a real dcmtk storescp. The live results arrive at storescp
(so export works in this set-up); Orthanc receives nothing; the API, the
console, the CLI and ``prediction.json`` show the shadow results.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml

from node.config import settings_from_mapping
from node.export.exporter import Exporter
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.migrations import LEGACY_SCHEMA as SCHEMA
from tests.support.admin import served_node
from tests.support.dcmtk import StoreSCP, storescu
from tests.support.jobs import job_with_results
from tools.net import free_port, wait_until
from tools.orthanc import OrthancServer
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

REPOSITORY = Path(__file__).resolve().parents[1]


def _shadow_job(queue: JobQueue, clock, result_dir: Path) -> int:
    result_dir.mkdir(parents=True, exist_ok=True)
    return job_with_results(queue, clock, result_dir, rule="shadow-rule", shadow=True)


def test_a_shadow_job_finishes_without_exporting(database, clock, tmp_path: Path) -> None:
    queue = JobQueue(database)
    job_id = _shadow_job(queue, clock, tmp_path / "results")
    job = queue.get(job_id)
    assert job is not None
    assert (job.state, job.shadow, job.destinations, job.pending_destinations) == (
        "done", True, ("pacs",), (),
    )  # fmt: skip
    assert queue.events(job_id)[-1].detail == "shadow mode: nothing sent"
    assert queue.claim_export(clock() + 10) is None
    # Retry runs inference again (never a resend); a re-run stays a shadow job.
    assert queue.retry(job_id, clock(), by="test").state == "queued"
    rerun = queue.get(queue.rerun(job_id, clock(), by="test"))
    assert rerun is not None and rerun.shadow


def test_the_exporter_never_sends_a_shadow_job(database, clock, tmp_path: Path) -> None:
    queue = JobQueue(database)
    job_id = _shadow_job(queue, clock, tmp_path / "results")
    # Force it into the exporting state, as no queue path does, to test the exporter's guard.
    database.query("SELECT 1")
    with database.transaction() as cursor:
        cursor.execute(
            "UPDATE jobs SET state = 'exporting', pending_destinations = '[\"pacs\"]',"
            " next_attempt_at = 0 WHERE id = ?",
            (job_id,),
        )
    sent: list[object] = []
    destinations = settings_from_mapping(
        {"destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 1}}},
        environ={},
    ).destinations
    exporter = Exporter(
        queue,
        lambda: destinations,
        calling_ae="AINODE",
        clock=clock,
        sender=lambda destination, paths: sent.append(paths),
    )
    assert exporter.run_once()
    job = queue.get(job_id)
    assert sent == [] and job is not None and job.state == "done"


def test_an_older_database_gains_the_shadow_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(SCHEMA.replace(",\n    shadow          INTEGER NOT NULL DEFAULT 0", ""))
        old.execute(
            "INSERT INTO jobs (series_uid, study_uid, generation, rule, plugin, created_at,"
            " updated_at) VALUES ('1', '2', 1, 'r', 'p', 0, 0)"
        )
    assert "shadow" not in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}
    database = Database(path)
    try:
        (job,) = JobQueue(database).jobs()
        assert job.shadow is False
    finally:
        database.close()


def test_shadow_is_a_validated_rule_key() -> None:
    rule = {"name": "r", "plugin": "ct_lungs", "shadow": True}
    assert settings_from_mapping({"rules": [rule]}, environ={}).rules[0].shadow
    with pytest.raises(Exception, match=r"rules\[0\]\.shadow"):
        settings_from_mapping({"rules": [{**rule, "shadow": "perhaps"}]}, environ={})


@pytest.mark.slow
def test_shadow_results_are_stored_and_listed_but_never_sent(tmp_path: Path) -> None:
    archive = StoreSCP(free_port(), tmp_path / "archive", ae_title="ARCHIVE")
    chest = {"Modality": "CT", "SeriesDescription": {"regex": "(?i)chest"}}
    try:
        with OrthancServer(workdir=tmp_path / "orthanc") as pacs:
            config = {
                "destinations": {
                    "pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port},
                    "archive": {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive.port},
                },
                "rules": [
                    {
                        "name": "lungs-shadow",
                        "match": chest,
                        "plugin": "ct_lungs",
                        "send_to": ["pacs"],
                        "shadow": True,
                    },
                    {"name": "lungs-live", "match": chest, "plugin": "ct_lungs",
                     "send_to": ["archive"]},
                ],
            }  # fmt: skip
            data_dir = tmp_path / "var"
            with served_node(data_dir, config) as served:
                datasets, _ = make_chest_ct(n_slices=30, rows=96, columns=96, seed=8)
                storescu(served.dicom_port, write_series(datasets, tmp_path / "in"))
                queue = served.node.queue

                def finished() -> bool:
                    jobs = queue.jobs()
                    return len(jobs) == 2 and all(
                        j.state in ("done", "failed", "skipped") for j in jobs
                    )

                wait_until(finished, 180, message="both jobs finished")
                jobs = {job.rule: job for job in queue.jobs()}
                shadow, live = jobs["lungs-shadow"], jobs["lungs-live"]
                assert (shadow.state, live.state) == ("done", "done"), (shadow.error, live.error)

                # The live results reached storescp; the shadow destination got nothing.
                received = {pydicom.dcmread(p).Modality for p in archive.received()}
                assert received == {"SEG", "SR"}
                assert pacs.client.get_studies() == []
                assert [e.event for e in queue.events(shadow.id)][-1] == "done"
                assert "sent" not in {e.event for e in queue.events(shadow.id)}

                viewer = served.client(served.viewer_token)
                listed = {j["rule"]: j for j in viewer.get("/api/jobs").json()}
                assert listed["lungs-shadow"]["shadow"] is True
                assert listed["lungs-live"]["shadow"] is False
                only = viewer.get("/api/jobs", params={"shadow": "true"}).json()
                assert [j["id"] for j in only] == [shadow.id]
                live_only = viewer.get("/api/jobs", params={"shadow": "false"}).json()
                assert [j["id"] for j in live_only] == [live.id]

                objects = viewer.get(f"/api/jobs/{shadow.id}/results").json()
                assert sorted(o["kind"] for o in objects) == ["seg", "sr"]
                seg_name = next(o["name"] for o in objects if o["kind"] == "seg")
                download = viewer.get(f"/api/jobs/{shadow.id}/results/{seg_name}")
                assert download.status_code == 200
                assert download.headers["content-type"] == "application/dicom"
                seg_path = tmp_path / "downloaded.dcm"
                seg_path.write_bytes(download.content)
                assert pydicom.dcmread(seg_path).Modality == "SEG"
                assert viewer.get(f"/api/jobs/{shadow.id}/results/..%2Fx.dcm").status_code == 404

                listing = viewer.get("/api/shadow/predictions").json()
                assert listing["format"] == "ainode.shadow-predictions"
                (series,) = listing["series"]
                assert series["series_uid"] == datasets[0].SeriesInstanceUID
                (prediction,) = series["predictions"]
                assert prediction["job_id"] == shadow.id
                assert prediction["would_send_to"] == ["pacs"]
                assert Path(prediction["seg"]).is_file() and Path(prediction["sr"]).is_file()
                volumes = {k: v["volume_cm3"] for k, v in prediction["measurements"].items()}
                assert set(volumes) == {"1", "2"} and all(v > 0 for v in volumes.values())
                # The same routine on the same series: the live job measured the same.
                assert live.result_dir is not None
                live_summary = json.loads((live.result_dir / "prediction.json").read_text())
                assert prediction["measurements"] == live_summary["measurements"]

                # The console marks the shadow job on the list and explains it on its page.
                admin = served.client(served.admin_token)
                page = admin.get("/jobs").text
                row = page.split(f'data-job-id="{shadow.id}"')[1].split("</tr>")[0]
                assert 'class="badge shadow"' in row
                filtered = admin.get("/jobs", params={"mode": "shadow"}).text
                assert f'data-job-id="{shadow.id}"' in filtered
                assert f'data-job-id="{live.id}"' not in filtered
                live_row = page.split(f'data-job-id="{live.id}"')[1].split("</tr>")[0]
                assert "shadow" not in live_row
                detail = admin.get(f"/jobs/{shadow.id}").text
                assert 'id="shadow-note"' in detail and "nothing is sent" in detail
                assert f"/api/jobs/{shadow.id}/results/{seg_name}" in detail

                # The CLI prints the same listing.
                config_file = tmp_path / "cli.yaml"
                config_file.write_text(yaml.safe_dump({"node": {"data_dir": str(data_dir)}}))
                cli = subprocess.run(
                    [sys.executable, "-m", "node", "jobs", "shadow", "--config",
                     str(config_file), "--rule", "lungs-shadow"],
                    capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
                    env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
                )  # fmt: skip
                assert cli.returncode == 0, cli.stderr
                assert json.loads(cli.stdout)["series"] == listing["series"]
            # After the node stopped (exporter drained): still nothing in Orthanc.
            assert pacs.client.get_studies() == []
    finally:
        archive.stop()
