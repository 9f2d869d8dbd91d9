"""A destination made in the console decides what the worker builds, not only where it goes.

Real node process, real HTTP API (first admin through ``/setup``, then a login session),
real Orthanc and storescu: nothing about the destination is in the YAML.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from node.config import BUILT_IN_CHEST_RULE
from node.contract.kinds import file_tag
from tests.support.admin import ADMIN_PASSWORD, login_session
from tests.support.dcmtk import storescu
from tests.support.pacs import orthanc_for_node
from tools.net import LOCALHOST, wait_until
from tools.node_process import NodeProcess
from tools.orthanc_rest import instance_dataset, lookup_study
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def first_admin(node: NodeProcess) -> None:
    """Create the first admin through ``/setup`` with the code the node wrote."""
    code = (node.data_dir / "setup-code").read_text().strip()
    with httpx.Client(base_url=node.url, timeout=30.0) as client:
        page = client.get("/setup")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        form = {"code": code, "username": "admin", "password": ADMIN_PASSWORD}
        response = client.post("/setup", data={**form, "csrf_token": token.group(1)})
        assert response.status_code == 303, response.text


def job_rows(node: NodeProcess) -> list[tuple[str, str | None]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute("SELECT state, result_dir FROM jobs"))


def test_destination_created_in_the_console_gets_the_results_it_asks_for(tmp_path: Path):
    with orthanc_for_node(tmp_path) as (pacs, node_port):
        config = {"node": {"dicom_port": node_port}, "completion": {"series_quiet_seconds": 1.0}}
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            first_admin(node)
            client, csrf = login_session(node.url, "admin", ADMIN_PASSWORD)
            try:
                headers = {"X-CSRF-Token": csrf}
                destination = {
                    "ae_title": pacs.aet,
                    "host": LOCALHOST,
                    "port": pacs.dicom_port,
                    "results": ["sc"],
                }
                created = client.post(
                    "/api/destinations/console-pacs", json=destination, headers=headers
                )
                assert created.status_code == 201, created.text
                rule = {**BUILT_IN_CHEST_RULE, "name": "chest-sc", "send_to": ["console-pacs"]}
                created = client.post("/api/rules", json=rule, headers=headers)
                assert created.status_code == 201, created.text
            finally:
                client.close()

            datasets, _ = make_chest_ct(
                n_slices=30, rows=128, columns=128, pixel_spacing_mm=3.0, slice_thickness_mm=5.0
            )
            files = write_series(datasets, tmp_path / "series")
            storescu(node.dicom_port, files, "SCANNER", called_ae=node.ae_title)
            wait_until(
                lambda: [s for s, _ in job_rows(node)] in (["done"], ["failed"]),
                300,
                message="the job finished",
            )
            ((state, result_dir),) = job_rows(node)
            assert state == "done", node.log_text()[-3000:]
            # The worker built what the console's destination asked for, and nothing else.
            built = {file_tag(p.name) for p in Path(result_dir).glob("*.dcm")}
            assert built == {"sc"}
            # And Orthanc has exactly that: Secondary Captures, no SEG, no SR.
            study = lookup_study(pacs.client, datasets[0].StudyInstanceUID)
            assert study is not None
            received = [
                instance_dataset(pacs.client, instance["ID"])
                for series in pacs.client.get_studies_id_series(study)
                for instance in pacs.client.get_series_id_instances(series["ID"])
            ]
            assert received
            assert {str(ds.SOPClassUID) for ds in received} == {SECONDARY_CAPTURE}
            assert len(received) == len(list(Path(result_dir).glob("*.dcm")))
