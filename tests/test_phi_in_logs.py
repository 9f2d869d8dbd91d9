"""No PHI in the node's logs: the whole flow at DEBUG with distinctive patient values.

storescu -> node -> SEG/SR to a real Orthanc and to a closed port (the export failure
path: warnings, a failed job), a STOW-RS upload, a console login, the API's job listing
and log; then every line the node process wrote (stdout and stderr) is scanned for the
patient names, IDs, birth dates, accession numbers, institution and physicians. Run in
both log formats; in JSON every key and value of every line is scanned too.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.admin import add_console_user, login_session
from tests.support.dcmtk import storescu
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
from tools.net import LOCALHOST, free_port, wait_until
from tools.node_process import NodeProcess, deep_merge
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

TOKEN = "phi-test-token-0123456789abcdef"
PATIENTS = [
    {
        "PatientName": "Zyxwvut^Qrstuv",
        "PatientID": "PID-7Q4Z9",
        "PatientBirthDate": "19230817",
        "AccessionNumber": "ACC-9KX3W",
        "InstitutionName": "Qwhospital Vexmoor",
        "ReferringPhysicianName": "Plimbo^Draxet",
        "OtherPatientIDs": "OPID-4M2N8",
        "StudyID": "SID-8V3C",
    },
    {
        "PatientName": "Jqxkwop^Vbnmzr",
        "PatientID": "PID-3H8R2",
        "PatientBirthDate": "19310429",
        "AccessionNumber": "ACC-5TY7P",
        "InstitutionName": "Krumvale Infirmary",
        "ReferringPhysicianName": "Trozzle^Maxwin",
        "OtherPatientIDs": "OPID-6J1K5",
        "StudyID": "SID-2B7X",
    },
]


def _forbidden(patient: dict[str, str]) -> set[str]:
    born = patient["PatientBirthDate"]
    values = {born, f"{born[:4]}-{born[4:6]}-{born[6:]}"}
    for key, value in patient.items():
        if key != "PatientBirthDate":
            values.update(value.split("^"))  # person names part by part
            values.update(value.split())  # institution words
    return values


def _strings(value: object) -> list[str]:
    """Every key and value of a decoded JSON line, as text."""
    if isinstance(value, dict):
        return [text for k, v in value.items() for text in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [str(value)]


def _series(tmp_path: Path, seed: int, patient: dict[str, str]) -> tuple[list[Path], str]:
    datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=seed)
    for ds in datasets:
        for key, value in patient.items():
            setattr(ds, key, value)
    return write_series(datasets, tmp_path / f"ct-{seed}"), str(datasets[0].StudyInstanceUID)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_patient_data_in_any_log_line(tmp_path: Path, log_format: str) -> None:
    closed_port = free_port()  # nothing listens: every export there fails
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = deep_merge(
            node_config(node_port, pacs, [BUILT_IN_CHEST_RULE], quiet_seconds=1.0),
            {
                "logging": {"level": "debug", "format": log_format},
                "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
                "destinations": {
                    "closed": {
                        "ae_title": "CLOSED",
                        "host": LOCALHOST,
                        "port": closed_port,
                        "max_attempts": 1,
                    }
                },
            },
        )
        config["rules"][0]["send_to"] = ["pacs", "closed"]
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            dimse_files, dimse_study = _series(tmp_path, 31, PATIENTS[0])
            storescu(node.dicom_port, dimse_files, "CT_SCANNER", called_ae=node.ae_title)

            stow_files, stow_study = _series(tmp_path, 32, PATIENTS[1])
            boundary = uuid.uuid4().hex
            body = io.BytesIO()
            for path in stow_files:
                body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
                body.write(path.read_bytes() + b"\r\n")
            body.write(f"--{boundary}--\r\n".encode())
            answer = httpx.post(
                f"{node.url}/dicomweb/studies",
                content=body.getvalue(),
                headers={
                    "Authorization": f"Bearer {TOKEN}",
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
                timeout=120,
            )
            assert answer.status_code == 200, answer.text

            for study in (dimse_study, stow_study):
                one_result_each(pacs, study, ["SEG", "SR"])

            add_console_user(node, "admin", "phi-test-password-1")
            client, _ = login_session(node.url, "admin", "phi-test-password-1")
            try:

                def jobs() -> list[dict[str, object]]:
                    answer = client.get("/api/jobs")
                    assert answer.status_code == 200
                    listed = answer.json()
                    return list(listed["items"] if isinstance(listed, dict) else listed)

                # Both jobs end failed: sent to Orthanc, refused by the closed port.
                wait_until(
                    lambda: len(jobs()) >= 2 and all(j["state"] == "failed" for j in jobs()),
                    120,
                    message="both jobs failed on the closed destination",
                )
                assert client.get("/jobs").status_code == 200
                # The console's log (in memory) works whatever the output format.
                recent = client.get("/api/log", params={"text": "export failed"})
                assert recent.status_code == 200 and recent.json(), recent.text
                assert client.get("/log").status_code == 200
            finally:
                client.close()
    lines = node.log_path.read_text(errors="replace").splitlines()
    texts = lines
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        texts = lines + [" ".join(_strings(record)) for record in records]
        levels = {(r["level"], r["logger"].split(".")[0]) for r in records}
        assert ("INFO", "highdicom") in levels, "highdicom's INFO lines missing at debug"
        assert any(r["level"] == "DEBUG" for r in records), "the node did not log at DEBUG"
        failed = [r for r in records if r["message"].startswith("export failed")]
        assert failed and failed[0]["destination"] == "closed" and "job_id" in failed[0]
    else:
        assert any(" DEBUG " in line for line in lines), "the node did not log at DEBUG"
        assert any(" INFO highdicom" in line for line in lines), "highdicom INFO missing"
        assert any("export failed" in line and "destination=closed" in line for line in lines)
    assert any(dimse_study in line for line in lines)  # UIDs are logged; PHI must not be
    leaks = [
        (value, line)
        for patient in PATIENTS
        for value in _forbidden(patient)
        for line in texts
        if value.lower() in line.lower()
    ]
    assert not leaks, "\n".join(f"{value!r} in: {line}" for value, line in leaks[:20])
    print(f"scanned {len(lines)} log lines for {sum(map(len, map(_forbidden, PATIENTS)))} values")
