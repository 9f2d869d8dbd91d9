"""Issue 13, DICOM audit trail: associations accepted and rejected, instances received,
results sent (to whom) and deletions are recorded without patient data, queryable by
admins over the API and exportable as JSON lines (API and ``ainode audit export``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from node.state.dicom_audit import AuditOutcome, DicomAudit, EventType, parse_since
from tests.support.admin import ADMIN_PASSWORD, add_console_user, login_session
from tests.support.dcmtk import storescu
from tests.support.net import wait_until
from tests.support.postgres import INTEGRITY_ERRORS
from tools.held_associations import held_associations
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import wait_for_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


def test_events_are_recorded_filtered_and_append_only(database, clock) -> None:
    audit = DicomAudit(database, clock)
    audit.record(EventType.ASSOCIATION_ACCEPTED, actor="CT_ER", peer="10.0.0.5:4000")
    clock.advance(10)
    audit.record(
        EventType.INSTANCES_DELETED,
        actor="retention",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        instances=12,
        detail="7 days after the last job; 3.1 MB",
    )
    clock.advance(10)
    audit.record(EventType.ASSOCIATION_REJECTED, outcome=AuditOutcome.MINOR_FAILURE, actor="X")
    everything = audit.events()
    assert [e.event_type for e in everything] == [
        "association_accepted",
        "instances_deleted",
        "association_rejected",
    ]
    deleted = everything[1]
    assert (deleted.event_code, deleted.event_meaning) == ("110105", "DICOM Study Deleted")
    assert deleted.instances == 12 and deleted.json()["time"].endswith("Z")
    assert [e.actor for e in audit.events(since=everything[1].at)] == ["retention", "X"]
    assert [e.id for e in audit.events(event_type="association_rejected")] == [everything[2].id]
    assert audit.events(until=everything[0].at + 1) == everything[:1]
    with (
        pytest.raises(INTEGRITY_ERRORS, match="append-only"),
        database.transaction() as cursor,
    ):
        cursor.execute("UPDATE dicom_audit SET actor = 'someone else'")
    with pytest.raises(ValueError):
        audit.record("not_an_event")


def test_times_are_taken_as_epoch_iso_or_an_age() -> None:
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_since("2023-11-14T22:13:20") == 1700000000.0  # UTC unless it says otherwise
    assert abs(parse_since("2h") - (time.time() - 7200)) < 5
    with pytest.raises(ValueError, match="not a time"):
        parse_since("yesterday")


def add_admin(node: NodeProcess) -> httpx.Client:
    """An admin user made with ``ainode users add`` against the running node's database."""
    add_console_user(node, "auditor", ADMIN_PASSWORD)
    client, _ = login_session(node.url, "auditor", ADMIN_PASSWORD)
    return client


@pytest.mark.slow
def test_real_node_audits_associations_receipt_and_results_sent(tmp_path: Path) -> None:
    """storescu → a real node → results to a real Orthanc; the audit trail names the
    sender, the instance count, the destination (AE@host:port) and the result count, and a
    rejected association (over the node's association limit) is there too."""
    datasets, _ = make_chest_ct(n_slices=24, rows=128, columns=128, pixel_spacing_mm=3.0, seed=7)
    files = write_series(datasets, tmp_path / "series")
    study_uid, series_uid = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    with OrthancServer(workdir=tmp_path / "orthanc") as orthanc:
        config = {
            "node": {"idle_timeout_seconds": 3600},  # held open however slowly they open
            "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
            "destinations": {
                "pacs": {"ae_title": "ORTHANC", "host": LOCALHOST, "port": orthanc.dicom_port}
            },
            "rules": [
                {"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}
                | {"send_to": ["pacs"]}
            ],
        }
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            started = time.time()
            storescu(node.dicom_port, files, called_ae=node.ae_title)
            with held_associations(node.dicom_port, 40, calling_ae="FLOOD") as (held, rejected):
                pass  # released at once: only the node's counts and audit trail matter
            assert rejected >= 1 and len(held) >= 30, (len(held), rejected)
            found = wait_for_series(orthanc.client, study_uid, ["SEG", "SR"], 180)
            orthanc_count = sum(
                len(orthanc.client.get_series_id_instances(s["ID"]))
                for v in found.values()
                for s in v
            )
            client = add_admin(node)
            wait_until(
                lambda: any(
                    e["event_type"] == "results_sent" for e in client.get("/api/audit/dicom").json()
                ),
                60,
                message="results_sent audited",
            )
            events = client.get("/api/audit/dicom", params={"since": str(started - 1)}).json()
            by_type: dict[str, list[dict[str, object]]] = {}
            for event in events:
                by_type.setdefault(str(event["event_type"]), []).append(event)

            accepted = [e for e in by_type["association_accepted"] if e["actor"] == "CT_SCANNER"]
            assert len(accepted) == 1 and accepted[0]["event_code"] == "110114"
            assert str(accepted[0]["peer"]).startswith(f"{LOCALHOST}:")
            (received,) = by_type["instances_received"]
            assert received["actor"] == "CT_SCANNER" and received["instances"] == len(files)
            assert (received["study_uid"], received["series_uid"]) == (study_uid, series_uid)
            assert received["outcome"] == 0 and received["event_code"] == "110104"
            (sent,) = by_type["results_sent"]
            assert sent["destination"] == "pacs" and sent["outcome"] == 0
            assert sent["peer"] == f"ORTHANC@{LOCALHOST}:{orthanc.dicom_port}"
            assert sent["instances"] == orthanc_count and sent["study_uid"] == study_uid
            assert sent["actor"] == node.ae_title
            floods = [e for e in by_type["association_accepted"] if e["actor"] == "FLOOD"]
            assert len(floods) == len(held)
            refused = by_type["association_rejected"]
            # Every attempt not held was refused; under load a client may give up waiting
            # (ACSE timeout) before the node's rejection reaches it, and not count it.
            assert rejected <= len(refused) <= 40 - len(held), (len(refused), rejected)
            assert refused[0]["event_code"] == "110113"
            assert refused[0]["actor"] == "FLOOD" and refused[0]["outcome"] == 4
            assert "local-limit-exceeded" in str(refused[0]["detail"]).lower().replace(" ", "-")

            only = client.get("/api/audit/dicom", params={"type": "results_sent"}).json()
            assert [e["id"] for e in only] == [sent["id"]]
            bad = client.get("/api/audit/dicom", params={"since": "soon", "type": "x"})
            assert bad.status_code == 422
            assert {e["field"] for e in bad.json()["errors"]} == {"since", "type"}
            assert httpx.get(f"{node.url}/api/audit/dicom").status_code == 401

            # JSON lines: the API and the CLI give the same events, one object a line.
            jsonl = client.get("/api/audit/dicom", params={"format": "jsonl"})
            assert jsonl.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in jsonl.text.splitlines()]
            exported = subprocess.run(
                [
                    *(sys.executable, "-m", "node", "audit", "export", "--since", "1h"),
                    *("--config", str(node.config_path)),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env={k: v for k, v in os.environ.items() if not k.startswith("AINODE_")},
            )
            assert exported.returncode == 0, exported.stderr
            cli_lines = [json.loads(line) for line in exported.stdout.splitlines()]
            assert [e["id"] for e in cli_lines] == [e["id"] for e in lines]
            assert {e["event_type"] for e in cli_lines} >= {
                "association_accepted",
                "association_rejected",
                "instances_received",
                "results_sent",
            }
    for name in ("PatientName", "PatientID", "AccessionNumber"):  # no patient data
        value = str(datasets[0].get(name, "")).strip()
        assert not value or value not in jsonl.text, name
