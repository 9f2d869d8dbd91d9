"""DICOMweb and Orthanc integration with real parts: Orthanc (DICOMweb + Python plugins),
node processes, real HTTP and DIMSE.

One node (``puller``) completes series only by the sender's instance count (its quiet
period is an hour), so a pulled series that gets processed within the test proves the
count check. STOW-RS input checks use it too: nothing there needs completing.
"""

from __future__ import annotations

import io
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.support.net import free_ports, wait_until
from tools.node_process import NodeProcess
from tools.orthanc import (
    AINODE_PLUGIN_SCRIPT,
    DICOMWEB_PLUGIN,
    PYTHON_PLUGIN,
    OrthancServer,
)
from tools.orthanc_rest import (
    instance_dataset,
    lookup_series,
    lookup_study,
    send_to_modality,
    upload_many,
    wait_for_series,
)
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

TOKEN = "test-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CT_SIZE = {"n_slices": 30, "rows": 96, "columns": 96}


def chest_rule(name: str, pattern: str, destination: str) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"Modality": "CT", "SeriesDescription": {"regex": pattern}},
        "plugin": "ct_lungs",
        "send_to": [destination],
    }


@dataclass
class Stack:
    pacs: OrthancServer  # plain Orthanc with DICOMweb: the pull source and results PACS
    plugin_pacs: OrthancServer  # Orthanc running orthanc/ainode_plugin.py
    node: NodeProcess  # completes series by sender count only

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.node.url}{path}", timeout=120, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.node.url}{path}", headers=AUTH, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dicomweb")
    node_dicom, node_http, plugin_http, plugin_dicom = free_ports(4)
    node_url = f"http://127.0.0.1:{node_http}"
    with OrthancServer(
        modalities={"ainode": ["AINODE", "127.0.0.1", node_dicom]}, workdir=root / "pacs"
    ) as pacs, OrthancServer(
        aet="PLUGINPACS",
        http_port=plugin_http,
        dicom_port=plugin_dicom,
        workdir=root / "plugin-pacs",
        plugins=(DICOMWEB_PLUGIN, PYTHON_PLUGIN),
        config_overrides={
            "PythonScript": str(AINODE_PLUGIN_SCRIPT),
            "AiNode": {"Url": node_url, "Token": TOKEN, "Source": "plugin-pacs",
                       "RetrySeconds": 0.5, "TimeoutSeconds": 5},
        },
    ) as plugin_pacs:  # fmt: skip
        web = f"{pacs.url}/dicom-web"
        dimse = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        config = {
            "node": {"dicom_port": node_dicom, "http_port": node_http},
            "completion": {"series_quiet_seconds": 3600, "poll_seconds": 0.2},
            "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            "sources": {
                "pacs-web": {"kind": "dicomweb", "url": web, "ae_title": pacs.aet},
                "pacs-get": {"kind": "dimse", **dimse, "retrieve": "get"},
                "pacs-move": {"kind": "dimse", **dimse, "retrieve": "move"},
                "plugin-pacs": {"kind": "dicomweb", "url": f"{plugin_pacs.url}/dicom-web"},
            },
            "destinations": {
                "pacs-web": {"kind": "dicomweb", "url": web},
                "plugin-pacs-web": {"kind": "dicomweb", "url": f"{plugin_pacs.url}/dicom-web"},
            },
            "rules": [
                chest_rule("chest-web", "(?i)^chest", "pacs-web"),
                chest_rule("lung-plugin", "(?i)^lung plugin", "plugin-pacs-web"),
            ],
        }
        with NodeProcess(config, workdir=root / "node") as node:
            yield Stack(pacs, plugin_pacs, node)


# -- helpers ---------------------------------------------------------------------------


def ct_files(tmp_path: Path, seed: int, description: str) -> tuple[list[Path], pydicom.Dataset]:
    datasets, _ = make_chest_ct(**CT_SIZE, seed=seed, series_description=description)
    return write_series(datasets, tmp_path / f"ct-{seed}"), datasets[0]


def multipart(parts: list[tuple[str, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/related body of (content type, bytes) parts, and its boundary."""
    boundary = boundary or uuid.uuid4().hex
    body = io.BytesIO()
    for content_type, data in parts:
        body.write(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), boundary


def stow_headers(boundary: str, part_type: str = "application/dicom") -> dict[str, str]:
    return {
        **AUTH,
        "Content-Type": f'multipart/related; type="{part_type}"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }


def spooled(node: NodeProcess, study_uid: str) -> set[str]:
    """SOP Instance UIDs of the study that are in the spool *and* in the database."""
    files = {p.stem for p in (node.data_dir / "spool" / study_uid).rglob("*.dcm")}
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        rows = {r[0] for r in db.execute("SELECT sop_uid FROM instances WHERE study_uid = ?",
                                         (study_uid,))}  # fmt: skip
    assert files == rows
    return files


def failures(answer: dict[str, Any]) -> list[tuple[str | None, int]]:
    items = answer.get("00081198", {}).get("Value", [])
    return [
        ((item["00081155"].get("Value") or [None])[0], item["00081197"]["Value"][0])
        for item in items
    ]


def stored(answer: dict[str, Any]) -> set[str]:
    return {item["00081155"]["Value"][0] for item in answer.get("00081199", {}).get("Value", [])}


def results_in(pacs: OrthancServer, study_uid: str) -> dict[str, pydicom.Dataset]:
    found = wait_for_series(pacs.client, study_uid, ["SEG", "SR"], timeout=300)
    return {m: instance_dataset(pacs.client, s[0]["Instances"][0]) for m, s in found.items()}


def wait_pull_done(stack: Stack, pull_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        answer = stack.get(f"/api/pull/{pull_id}").json()
        assert answer["state"] != "failed", answer
        return answer if answer["state"] == "done" else None

    return wait_until(done, 120, interval=0.25, message=f"pull {pull_id}")


def completed_by_count(node: NodeProcess, series_uid: str) -> bool:
    return any(
        "holds the sender's instance count" in line and series_uid in line
        for line in node.log_text().splitlines()
    )


# -- STOW-RS in ------------------------------------------------------------------------


def test_stow_rs_into_the_node_results_come_back_by_stow_rs(tmp_path):
    """STOW-RS feeds the normal pipeline; results go to Orthanc by STOW-RS (quiet period)."""
    with OrthancServer(workdir=tmp_path / "pacs") as pacs:
        config = {
            "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
            "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            "destinations": {"web": {"kind": "dicomweb", "url": f"{pacs.url}/dicom-web/"}},
            "rules": [chest_rule("chest", "(?i)chest", "web")],
        }
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            files, first = ct_files(tmp_path, 21, "Chest STOW")
            body, boundary = multipart([("application/dicom", p.read_bytes()) for p in files])
            answer = httpx.post(
                f"{node.url}/dicomweb/studies/{first.StudyInstanceUID}",
                content=body,
                headers=stow_headers(boundary),
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("application/dicom+json")
            assert len(stored(answer.json())) == len(files) and not failures(answer.json())
            objects = results_in(pacs, first.StudyInstanceUID)  # fmt: skip
            seg = objects["SEG"]
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
            assert int(seg.NumberOfFrames) == 2 * len(files)
            # The export is logged after Orthanc has answered; wait for the line.
            wait_until(lambda: "via=stow-rs" in node.log_text(), 30, message="stow-rs export log")


def test_stow_rs_needs_a_token(stack):
    body, boundary = multipart([])
    headers = stow_headers(boundary)
    del headers["Authorization"]
    assert stack.post("/dicomweb/studies", content=body, headers=headers).status_code == 401
    headers["Authorization"] = "Bearer not-the-token"
    answer = stack.post("/dicomweb/studies", content=body, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_stow_rs_refuses_what_is_not_multipart_dicom(stack, tmp_path):
    files, first = ct_files(tmp_path, 22, "Other STOW")
    data = files[0].read_bytes()
    single = {**AUTH, "Content-Type": "application/dicom"}
    assert stack.post("/dicomweb/studies", content=data, headers=single).status_code == 415
    body, boundary = multipart([("application/dicom+json", b"[]")])
    answer = stack.post("/dicomweb/studies", content=body,
                        headers=stow_headers(boundary, "application/dicom+json"))  # fmt: skip
    assert answer.status_code == 415
    no_boundary = {**AUTH, "Content-Type": 'multipart/related; type="application/dicom"'}
    assert stack.post("/dicomweb/studies", content=data, headers=no_boundary).status_code == 400
    garbage = stack.post("/dicomweb/studies", content=b"not multipart at all",
                         headers=stow_headers("abc"))  # fmt: skip
    assert garbage.status_code == 400
    assert spooled(stack.node, first.StudyInstanceUID) == set()


def test_stow_rs_bad_parts_fail_alone_and_good_ones_are_kept(stack, tmp_path):
    files, first = ct_files(tmp_path, 23, "Mixed STOW")
    good = files[:4]
    corrupt = files[4].read_bytes()
    corrupt = corrupt[: corrupt.index(b"\x08\x00\x05\x00") + 200]  # truncated header
    parts = [("application/dicom", p.read_bytes()) for p in good[:2]]
    parts += [("application/dicom", corrupt), ("text/plain", b"hello")]
    parts += [("application/dicom", p.read_bytes()) for p in good[2:]]
    body, boundary = multipart(parts)
    answer = stack.post("/dicomweb/studies", content=body, headers=stow_headers(boundary))
    assert answer.status_code == 202, answer.text
    good_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in good}
    assert stored(answer.json()) == good_uids
    codes = [code for _, code in failures(answer.json())]
    assert len(codes) == 2 and all(0xC000 <= code <= 0xCFFF for code in codes)  # cannot understand
    assert spooled(stack.node, first.StudyInstanceUID) == good_uids

    # The same again plus one new instance: duplicates count as stored, once on disk.
    body, boundary = multipart([*parts, ("application/dicom", files[5].read_bytes())])
    again = stack.post("/dicomweb/studies", content=body, headers=stow_headers(boundary))
    assert again.status_code == 202
    assert len(spooled(stack.node, first.StudyInstanceUID)) == 5

    # Nothing storable: 409 with a reason for each part.
    body, boundary = multipart([("application/dicom", corrupt), ("application/dicom", b"x")])
    answer = stack.post("/dicomweb/studies", content=body, headers=stow_headers(boundary))
    assert answer.status_code == 409
    codes = [code for _, code in failures(answer.json())]
    assert len(codes) == 2 and all(0xC000 <= code <= 0xCFFF for code in codes)


def test_stow_rs_study_mismatch_and_broken_body(stack, tmp_path):
    files, first = ct_files(tmp_path, 24, "Broken STOW")
    parts = [("application/dicom", p.read_bytes()) for p in files[:3]]
    body, boundary = multipart(parts)
    other_study = "1.2.826.0.1.3680043.8.498.1"
    answer = stack.post(f"/dicomweb/studies/{other_study}", content=body,
                        headers=stow_headers(boundary))  # fmt: skip
    assert answer.status_code == 409
    assert {code for _, code in failures(answer.json())} == {0xA901}
    assert spooled(stack.node, first.StudyInstanceUID) == set()

    # The connection's body breaks off inside the third part: the first two are kept.
    third = body.index(f"--{boundary}".encode(), body.index(files[1].read_bytes()[-64:]))
    cut = body[: third + 1000]
    answer = stack.post("/dicomweb/studies", content=cut, headers=stow_headers(boundary))
    assert answer.status_code == 202, answer.text
    first_two = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files[:2]}
    assert stored(answer.json()) == first_two
    assert spooled(stack.node, first.StudyInstanceUID) == first_two


# -- pull mode -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "by_series"),
    [("pacs-web", False), ("pacs-get", True), ("pacs-move", False)],
)
def test_pull_processes_the_study_as_if_pushed(stack, tmp_path, source, by_series):
    seed = {"pacs-web": 31, "pacs-get": 32, "pacs-move": 33}[source]
    files, first = ct_files(tmp_path, seed, f"Chest pull {source}")
    upload_many(stack.pacs.client, files)
    request: dict[str, Any] = {"source": source, "rule": "chest-web"}
    if by_series:
        request["series_uid"] = first.SeriesInstanceUID
    else:
        request["study_uid"] = first.StudyInstanceUID
    answer = stack.post("/api/pull", json=request, headers=AUTH)
    assert answer.status_code == 202, answer.text
    pull = wait_pull_done(stack, answer.json()["id"])
    (series,) = pull["series"]
    assert series["expected"] == len(files)
    assert series["stored"] == len(files) and series["failed"] == 0
    objects = results_in(stack.pacs, first.StudyInstanceUID)
    assert objects["SEG"].ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    # The quiet period is an hour: only the count check can have completed it.
    assert completed_by_count(stack.node, first.SeriesInstanceUID)
    status = stack.get(f"/api/studies/{first.StudyInstanceUID}/status").json()
    wait_until(lambda: stack.get(f"/api/studies/{first.StudyInstanceUID}/status")
               .json()["status"] == "done", 60, message="study done")  # fmt: skip
    assert [job["rule"] for job in status["jobs"]] == ["chest-web"]


def test_pull_api_validates_its_input(stack):
    assert stack.post("/api/pull", json={"source": "pacs-web"}, headers=AUTH).status_code == 422
    unknown = {"source": "nowhere", "study_uid": "1.2.3"}
    assert stack.post("/api/pull", json=unknown, headers=AUTH).status_code == 404
    assert stack.post("/api/pull", json={"source": "pacs-web", "study_uid": "1.2.3"}
                      ).status_code == 401  # fmt: skip
    assert stack.get("/api/pull/999999").status_code == 404


def test_push_from_a_queryable_sender_completes_by_count(stack, tmp_path):
    """Orthanc pushes by C-STORE; the node asks it (QIDO-RS) how many instances to expect."""
    files, first = ct_files(tmp_path, 34, "Chest pushed")
    ids = upload_many(stack.pacs.client, files)
    send_to_modality(stack.pacs.client, "ainode", ids)
    results_in(stack.pacs, first.StudyInstanceUID)
    assert completed_by_count(stack.node, first.SeriesInstanceUID)


# -- the Orthanc plugin ----------------------------------------------------------------


def test_orthanc_plugin_notifies_node_pulls_results_appear(stack, tmp_path):
    pacs = stack.plugin_pacs
    assert "Send to AI node" in httpx.get(f"{pacs.url}/plugins/explorer.js", timeout=10).text
    files, first = ct_files(tmp_path, 41, "Lung plugin")
    upload_many(pacs.client, files)  # only to Orthanc: nothing is sent to the node
    study_uid = first.StudyInstanceUID
    objects = results_in(pacs, study_uid)
    assert objects["SR"].CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == study_uid
    study_id = lookup_study(pacs.client, study_uid)

    def status() -> dict[str, Any]:
        answer = httpx.get(f"{pacs.url}/ainode/studies/{study_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    done = wait_until(lambda: status() if status()["status"] == "done" else None, 60,
                      message="plugin status route")  # fmt: skip
    assert done["orthanc_study_id"] == study_id
    assert [job["rule"] for job in done["jobs"]] == ["lung-plugin"]
    assert done["pulls"][0]["origin"] == "orthanc:stable-series"
    # The results' own series (SEG, SR) were not sent back to the node.
    assert {p["series_uid"] for p in done["pulls"]} == {first.SeriesInstanceUID}

    # The Explorer button: a whole-study pull; nothing new, so nothing runs again.
    sent = httpx.post(f"{pacs.url}/ainode/studies/{study_id}/send", timeout=30)
    assert sent.status_code == 200 and sent.json()["queued"] is True
    again = wait_until(
        lambda: [p for p in status()["pulls"] if p["origin"] == "orthanc:send-study"
                 and p["state"] == "done"], 60, message="study pull")  # fmt: skip
    notes = {s["series_uid"]: s.get("note", "") for s in again[0]["series"]}
    assert "nothing new" in notes[first.SeriesInstanceUID]
    assert len(status()["jobs"]) == 1


def test_orthanc_plugin_retries_until_the_node_is_up(tmp_path):
    """The plugin notifies a node that is not running yet: its notifications fail and are
    retried (short delays from ``AiNode.RetrySeconds``/``MaxRetrySeconds``); once the node
    starts on that address a retry gets through and the node pulls and processes the series."""
    node_dicom, node_http = free_ports(2)
    node_url = f"http://127.0.0.1:{node_http}"
    settings = {"Url": node_url, "Token": TOKEN, "Source": "orthanc", "RetrySeconds": 0.5,
                "MaxRetrySeconds": 1, "MaxAttempts": 200, "TimeoutSeconds": 2}  # fmt: skip
    with OrthancServer(
        workdir=tmp_path / "orthanc",
        plugins=(DICOMWEB_PLUGIN, PYTHON_PLUGIN),
        config_overrides={"PythonScript": str(AINODE_PLUGIN_SCRIPT), "AiNode": settings},
    ) as pacs:
        files, first = ct_files(tmp_path, 42, "Lung retry")
        upload_many(pacs.client, files)
        series_id = lookup_series(pacs.client, first.SeriesInstanceUID)

        def failed_notifications() -> int:
            text = pacs.log_path.read_text(errors="replace")
            return text.count(f"node not notified about series {series_id}")

        wait_until(lambda: failed_notifications() >= 3, 60, message="failed notifications")
        web = f"{pacs.url}/dicom-web"
        config = {
            "node": {"dicom_port": node_dicom, "http_port": node_http},
            "completion": {"series_quiet_seconds": 3600, "poll_seconds": 0.2},
            "dicomweb": {"tokens": [{"name": "tests", "token": TOKEN}]},
            "sources": {"orthanc": {"kind": "dicomweb", "url": web}},
            "destinations": {"orthanc-web": {"kind": "dicomweb", "url": web}},
            "rules": [chest_rule("lung-retry", "(?i)^lung retry", "orthanc-web")],
        }
        with NodeProcess(config, workdir=tmp_path / "node") as node:
            objects = results_in(pacs, first.StudyInstanceUID)
            assert objects["SEG"].ReferencedSeriesSequence[0].SeriesInstanceUID == (
                first.SeriesInstanceUID
            )
            # The pull came from a retried notification of the plugin, not from a push.
            status = httpx.get(f"{node.url}/api/studies/{first.StudyInstanceUID}/status",
                               headers=AUTH, timeout=30).json()  # fmt: skip
            assert [p["origin"] for p in status["pulls"]] == ["orthanc:stable-series"]
            assert [job["rule"] for job in status["jobs"]] == ["lung-retry"]
