"""No PHI in the node's logs: the whole flow at DEBUG with distinctive patient values.

storescu -> node -> SEG/SR to a real Orthanc, a STOW-RS upload, a console login and the
API's job listing; then every line the node process wrote (stdout and stderr, text format)
is scanned for the patient names, IDs, birth dates and accession numbers.
"""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from tests.support.admin import login_session
from tests.support.dcmtk import storescu
from tests.support.pacs import node_config, one_result_each, orthanc_for_node
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
    },
    {
        "PatientName": "Jqxkwop^Vbnmzr",
        "PatientID": "PID-3H8R2",
        "PatientBirthDate": "19310429",
        "AccessionNumber": "ACC-5TY7P",
    },
]


def _forbidden(patient: dict[str, str]) -> set[str]:
    family, given = patient["PatientName"].split("^")
    born = patient["PatientBirthDate"]
    return {
        family,
        given,
        patient["PatientID"],
        patient["AccessionNumber"],
        born,
        f"{born[:4]}-{born[4:6]}-{born[6:]}",
    }


def _series(tmp_path: Path, seed: int, patient: dict[str, str]) -> tuple[list[Path], str]:
    datasets, _ = make_chest_ct(n_slices=24, rows=96, columns=96, seed=seed)
    for ds in datasets:
        for key, value in patient.items():
            setattr(ds, key, value)
    return write_series(datasets, tmp_path / f"ct-{seed}"), str(datasets[0].StudyInstanceUID)


def test_no_patient_data_in_any_log_line(tmp_path: Path) -> None:
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = deep_merge(
            node_config(node_port, pacs, [BUILT_IN_CHEST_RULE], quiet_seconds=1.0),
            {
                "logging": {"level": "DEBUG"},
                "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            },
        )
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

            subprocess.run(
                [sys.executable, "-m", "node", "users", "add", "admin", "--role", "admin",
                 "--password-stdin", "--config", str(node.config_path)],
                input="phi-test-password-1\n", text=True, check=True, capture_output=True,
                timeout=60,
            )  # fmt: skip
            client, _ = login_session(node.url, "admin", "phi-test-password-1")
            try:
                jobs = client.get("/api/jobs")
                assert jobs.status_code == 200
                listed = jobs.json()
                assert len(listed["items"] if isinstance(listed, dict) else listed) >= 2
                assert client.get("/jobs").status_code == 200
            finally:
                client.close()
    lines = node.log_path.read_text(errors="replace").splitlines()
    assert any(" DEBUG " in line for line in lines), "the node did not log at DEBUG"
    assert any(dimse_study in line for line in lines)  # UIDs are logged; PHI must not be
    leaks = [
        (value, line)
        for patient in PATIENTS
        for value in _forbidden(patient)
        for line in lines
        if value.lower() in line.lower()
    ]
    assert not leaks, "\n".join(f"{value!r} in: {line}" for value, line in leaks[:20])
    print(f"scanned {len(lines)} log lines for {sum(map(len, map(_forbidden, PATIENTS)))} values")
