"""Issue 13, outages: a job that failed after its destination's retry budget (the PACS was
down) can be retried from the CLI and from the console once the PACS is back; the
results are then delivered once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dcmtk import storescu
from tests.support.net import free_ports, wait_until
from tests.test_dicom_audit import add_admin
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import wait_for_series
from tools.synthetic.chest_ct import make_chest_ct, write_series


def jobs(node: NodeProcess) -> list[sqlite3.Row]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute("SELECT * FROM jobs ORDER BY id"))


def events(node: NodeProcess, job_id: int) -> list[tuple[str, str]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        query = "SELECT event, detail FROM job_events WHERE job_id = ? ORDER BY id"
        return list(db.execute(query, (job_id,)))


@pytest.mark.slow
def test_jobs_failed_after_the_export_budget_are_retried_from_cli_and_console(
    tmp_path: Path,
) -> None:
    http_port, dicom_port = free_ports(2)
    config = {
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {
                "ae_title": "ORTHANC",
                "host": LOCALHOST,
                "port": dicom_port,
                "max_attempts": 2,
                "backoff_seconds": 0.5,
                "timeout_seconds": 3,
            }
        },
        "rules": [
            {"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}
            | {"send_to": ["pacs"]}
        ],
    }
    study_uids, file_sets = [], []
    for seed in (7, 8):
        datasets, _ = make_chest_ct(
            n_slices=24, rows=128, columns=128, pixel_spacing_mm=3.0, seed=seed
        )
        study_uids.append(str(datasets[0].StudyInstanceUID))
        file_sets.append(write_series(datasets, tmp_path / f"series{seed}"))
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        for files in file_sets:
            storescu(node.dicom_port, files, called_ae=node.ae_title)
        wait_until(
            lambda: len(rows := jobs(node)) == 2 and all(r["state"] == "failed" for r in rows),
            240,
            message="both jobs failed after the export budget",
        )
        for job in jobs(node):
            assert "association with ORTHANC@" in job["error"], job["error"]
        cli_job, console_job = (r["id"] for r in jobs(node))
        with OrthancServer(
            http_port=http_port, dicom_port=dicom_port, workdir=tmp_path / "orthanc"
        ) as orthanc:
            retried = subprocess.run(
                [
                    *(sys.executable, "-m", "node", "jobs", "retry", str(cli_job)),
                    *("--config", str(node.config_path)),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert retried.returncode == 0, retried.stderr
            assert f"job {cli_job} is exporting again" in retried.stdout  # no new inference
            # The console's retry button: a logged-in session's POST with its CSRF token.
            client = add_admin(node)
            csrf = client.get("/api/me").json()["csrf"]
            answer = client.post(f"/api/jobs/{console_job}/retry", headers={"X-CSRF-Token": csrf})
            assert answer.status_code == 200, answer.text
            wait_until(
                lambda: all(r["state"] == "done" for r in jobs(node)), 60, message="both done"
            )
            for study_uid in study_uids:
                found = wait_for_series(orthanc.client, study_uid, ["SEG", "SR"], 30)
                assert all(len(series) == 1 for series in found.values()), found
        for job_id, who in ((cli_job, "by cli:"), (console_job, "by auditor")):
            retried_events = [d for e, d in events(node, job_id) if e == "retried"]
            assert len(retried_events) == 1 and who in retried_events[0], retried_events
            assert "resend results" in retried_events[0]  # no second inference
            assert [e for e, _ in events(node, job_id)].count("results_written") == 1
