"""UPS-RS against a real node process and a real Orthanc: a plain HTTP client creates and
drives workitems, a real WebSocket client (``websockets``) receives the event reports.

The node's sources and destinations are the same Orthanc (DICOMweb); its rules match
nothing pushed, so every job here is a workitem's.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from websockets.asyncio.client import connect

from tests.support.net import free_ports, wait_until
from tests.support.validators import dciodvfy_errors
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

TOKEN = "worklist-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GLOBAL = "1.2.840.10008.5.1.4.34.5"
CT_SIZE = {"n_slices": 30, "rows": 96, "columns": 96}
#: Too small for the lung routine: its job fails ("no lungs found").
TINY_CT = {"n_slices": 24, "rows": 80, "columns": 80}
STATE, TXN, EVENT = "00741000", "00081195", "00001002"


@dataclass
class Stack:
    pacs: OrthancServer
    node: NodeProcess

    @property
    def base(self) -> str:
        return f"{self.node.url}/dicomweb"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=AUTH, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("worklist")
    node_dicom, node_http = free_ports(2)
    with OrthancServer(
        modalities={"ainode": ["AINODE", "127.0.0.1", node_dicom]}, workdir=root / "pacs"
    ) as pacs:
        web = f"{pacs.url}/dicom-web"
        config = {
            "node": {"dicom_port": node_dicom, "http_port": node_http},
            "completion": {"series_quiet_seconds": 3600, "poll_seconds": 0.2},
            "dicomweb": {"tokens": [{"name": "ris", "token": TOKEN}]},
            "sources": {"pacs": {"kind": "dicomweb", "url": web, "ae_title": pacs.aet}},
            "destinations": {"pacs-web": {"kind": "dicomweb", "url": web}},
            "rules": [{
                "name": "lungs-for-worklist",
                "match": {"Modality": "CT", "SeriesDescription": {"regex": "^never$"}},
                "plugin": "ct_lungs",
                "send_to": ["pacs-web"],
            }],
            "worklist": {"tasks": {"99AINODE^LUNGS": "lungs-for-worklist"},
                         "poll_seconds": 0.2},
        }  # fmt: skip
        with NodeProcess(config, workdir=root / "node") as node:
            yield Stack(pacs, node)


def ct_in_pacs(
    stack: Stack, tmp_path: Path, seed: int, size: dict[str, int] = CT_SIZE
) -> pydicom.Dataset:
    datasets, _ = make_chest_ct(**size, seed=seed, series_description=f"Chest {seed}")
    upload_many(stack.pacs.client, write_series(datasets, tmp_path / f"ct-{seed}"))
    return datasets[0]


def workitem(study: str, series: str, *, code: str = "LUNGS", ae: str | None = None,
             url: str | None = None, start: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    source: dict[str, Any] = {
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "0040E020": {"vr": "CS", "Value": ["DICOM"]},
    }
    if ae:
        source["0040E021"] = {"vr": "SQ", "Value": [{"00080054": {"vr": "AE", "Value": [ae]}}]}
    if url:
        source["0040E025"] = {"vr": "SQ", "Value": [{"00081190": {"vr": "UR", "Value": [url]}}]}
    body: dict[str, Any] = {
        STATE: {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["AI lung segmentation"]},
        "00404018": {"vr": "SQ", "Value": [{
            "00080100": {"vr": "SH", "Value": [code]},
            "00080102": {"vr": "SH", "Value": ["99AINODE"]},
            "00080104": {"vr": "LO", "Value": ["Lung segmentation"]},
        }]},
        "00404021": {"vr": "SQ", "Value": [source]},
    }  # fmt: skip
    if start:
        body["00404005"] = {"vr": "DT", "Value": [start]}
    return [body]


def value(dataset: dict[str, Any], tag: str) -> Any:
    return (dataset.get(tag, {}).get("Value") or [None])[0]


def rows(stack: Stack) -> list[dict[str, Any]]:
    """The node's workitem rows, read from its state database."""
    with sqlite3.connect(stack.node.data_dir / "state.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM workitems ORDER BY uid")]


async def collect_events(
    stack: Stack, ae: str, timeout: float, ready: asyncio.Event
) -> list[dict[str, Any]]:
    """Event reports on the channel until a state report of a final state."""
    url = f"ws://127.0.0.1:{stack.node.http_port}/dicomweb/subscribers/{ae}"
    found: list[dict[str, Any]] = []
    async with connect(url, additional_headers=AUTH, open_timeout=30) as channel:
        ready.set()
        async with asyncio.timeout(timeout):
            while True:
                (report,) = json.loads(await channel.recv())
                found.append(report)
                if value(report, EVENT) == 1 and value(report, STATE) in ("COMPLETED", "CANCELED"):
                    return found


def wait_state(stack: Stack, uid: str, state: str, timeout: float = 120) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        answer = httpx.get(f"{stack.base}/workitems/{uid}", headers=AUTH, timeout=30)
        assert answer.status_code == 200, answer.text
        (found,) = answer.json()
        return found if value(found, STATE) == state else None

    return wait_until(reached, timeout, interval=0.3, message=f"workitem {uid} {state}")


def study_jobs(stack: Stack, study_uid: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.node.url}/api/studies/{study_uid}/status", headers=AUTH)
    assert answer.status_code == 200, answer.text
    jobs: list[dict[str, Any]] = answer.json()["jobs"]
    return jobs


def instance_file(stack: Stack, sop_uid: str, out: Path) -> Path:
    """Download an instance from Orthanc by its SOP Instance UID."""
    found = httpx.post(f"{stack.pacs.url}/tools/lookup", content=sop_uid, timeout=30).json()
    (entry,) = [e for e in found if e["Type"] == "Instance"]
    data = httpx.get(f"{stack.pacs.url}/instances/{entry['ID']}/file", timeout=30).content
    out.write_bytes(data)
    return out


def test_a_workitem_for_a_study_only_orthanc_holds_completes(stack, tmp_path):
    started = time.monotonic()
    first = ct_in_pacs(stack, tmp_path, 61)
    uid = "1.2.826.0.1.3680043.10.1001.61"
    ready = asyncio.Event()

    async def scenario() -> list[dict[str, Any]]:
        watcher = asyncio.create_task(collect_events(stack, "RIS", 300, ready))
        await asyncio.wait_for(ready.wait(), 30)
        async with httpx.AsyncClient(base_url=stack.base, headers=AUTH, timeout=60) as http:
            answer = await http.post(f"/workitems/{GLOBAL}/subscribers/RIS")
            assert answer.status_code == 201, answer.text
            body = workitem(first.StudyInstanceUID, first.SeriesInstanceUID, ae=stack.pacs.aet)
            created = await http.post(
                f"/workitems?{uid}", json=body, headers={"Content-Type": "application/dicom+json"}
            )
            assert created.status_code == 201, created.text
            assert created.headers["location"].endswith(f"/dicomweb/workitems/{uid}")
        return await watcher

    events = asyncio.run(scenario())
    states = [value(e, STATE) for e in events if value(e, EVENT) == 1]
    assert states == ["SCHEDULED", "IN PROGRESS", "COMPLETED"], states
    progress = [
        value(e["00741002"]["Value"][0], "00741004") for e in events if value(e, EVENT) == 3
    ]
    assert progress == sorted(progress) and progress[-1] == 100 and len(progress) >= 3
    assert all(value(e, "00001000") == uid for e in events)

    (item,) = httpx.get(f"{stack.base}/workitems/{uid}", headers=AUTH, timeout=30).json()
    assert value(item, STATE) == "COMPLETED" and TXN not in item
    (performed,) = item["00741216"]["Value"]
    outputs = performed["00404033"]["Value"]
    kinds: set[str] = set()
    for output in outputs:
        assert value(output, "0020000D") == first.StudyInstanceUID
        (where,) = output["0040E025"]["Value"]
        assert value(where, "00081190").startswith(f"{stack.pacs.url}/dicom-web/studies/")
        for ref in output["00081199"]["Value"]:
            path = instance_file(stack, value(ref, "00081155"), tmp_path / "out.dcm")
            dataset = pydicom.dcmread(path)
            assert dataset.SOPClassUID == value(ref, "00081150")
            kinds.add(dataset.Modality)
            assert dciodvfy_errors(path) == [], dataset.Modality
    assert {"SEG", "SR"} <= kinds
    (row,) = [r for r in rows(stack) if r["uid"] == uid]
    assert row["job_id"] is not None and row["performer"] == "node"
    jobs = study_jobs(stack, first.StudyInstanceUID)
    assert [(j["id"], j["state"]) for j in jobs] == [(row["job_id"], "done")]
    print(f"workitem completed in {time.monotonic() - started:.1f} s")


def test_bad_input_is_refused_and_changes_nothing(stack, tmp_path):
    with stack.http() as http:
        before = rows(stack)
        # Not JSON, not DICOM JSON, an unknown task code: 400, nothing created.
        for content, reason in (
            (b"{not json", "not JSON"),
            (json.dumps([{"00741000": {"Value": ["SCHEDULED"]}}]).encode(), "no 'vr'"),
            (json.dumps(workitem("1.2.3", "1.2.4", code="BRAIN")).encode(), "no task mapping"),
            (json.dumps(workitem("1.2.3", "1.2.4") * 2).encode(), "exactly one"),
        ):
            answer = http.post("/workitems", content=content,
                               headers={"Content-Type": "application/dicom+json"})  # fmt: skip
            assert answer.status_code == 400, answer.text
            assert reason in answer.json()["message"]
            assert answer.headers["warning"].startswith("299 ")
        assert rows(stack) == before
        assert httpx.post(f"{stack.base}/workitems", json=workitem("1.2", "1.3")).status_code == 401
        assert http.get("/workitems/1.2.3.4.5").status_code == 404
        assert http.get("/workitems?NoSuchKeyword=1").status_code == 400

        # Scheduled for 2099: the node leaves it alone, so a client can claim it.
        uid = "1.2.826.0.1.3680043.10.1001.62"
        body = workitem("1.2.3", "1.2.4", ae="PACS", start="20990101000000")
        assert http.post(f"/workitems?{uid}", json=body).status_code == 201
        assert http.post(f"/workitems?{uid}", json=body).status_code == 409  # duplicate
        mine, wrong = "1.2.826.0.1.3680043.10.1001.62.1", "1.2.826.0.1.3680043.10.1001.62.2"

        def put(state: str, txn: str | None) -> httpx.Response:
            data: dict[str, Any] = {STATE: {"vr": "CS", "Value": [state]}}
            if txn:
                data[TXN] = {"vr": "UI", "Value": [txn]}
            return http.put(f"/workitems/{uid}/state", json=[data])

        def status(answer: httpx.Response) -> tuple[int, str]:
            return answer.status_code, answer.json()["status"]

        assert status(put("COMPLETED", mine)) == (409, "0xC310")  # not IN PROGRESS yet
        assert put("IN PROGRESS", mine).status_code == 200
        claimed = rows(stack)
        assert status(put("IN PROGRESS", wrong)) == (409, "0xC302")
        assert status(put("COMPLETED", wrong)) == (409, "0xC301")
        assert status(put("CANCELED", wrong)) == (409, "0xC301")
        assert status(put("SCHEDULED", mine)) == (400, "0xC303")
        assert status(put("COMPLETED", mine)) == (409, "0xC304")  # no performed procedure
        assert put("COMPLETED", None).status_code == 400
        percent = {"00741004": {"vr": "DS", "Value": [40]}}
        progress = [{"00741002": {"vr": "SQ", "Value": [percent]}}]
        assert status(http.post(f"/workitems/{uid}?{wrong}", json=progress)) == (409, "0xC301")
        assert status(http.post(f"/workitems/{uid}", json=[{TXN: {"vr": "UI", "Value": [mine]}}])
                      ) == (400, "0x0106")  # fmt: skip
        assert rows(stack) == claimed  # none of the refusals changed the workitem
        assert http.post(f"/workitems/{uid}?{mine}", json=progress).status_code == 200
        assert put("CANCELED", mine).status_code == 200
        again = put("CANCELED", mine)
        assert (
            again.status_code == 200
            and "already in the requested state of CANCELED" in (again.headers["warning"])
        )
        refused = http.post(f"/workitems/{uid}/cancelrequest")
        assert refused.status_code == 409 and "CANCELED" in refused.headers["warning"]
        (row,) = [r for r in rows(stack) if r["uid"] == uid]
        assert (
            row["state"] == "CANCELED" and row["job_id"] is None and row["performer"] == "external"
        )
    audit = stack.node.log_text()
    assert "audit" in audit and f"workitem:{uid}" in audit


def test_a_scheduled_workitem_canceled_on_request(stack):
    uid = "1.2.826.0.1.3680043.10.1001.63"
    with stack.http() as http:
        body = workitem("1.2.3", "1.2.4", ae="PACS", start="20990101000000")
        assert http.post(f"/workitems?{uid}", json=body).status_code == 201
        reason = [{"00741238": {"vr": "LT", "Value": ["ordered by mistake"]}}]
        assert http.post(f"/workitems/{uid}/cancelrequest", json=reason).status_code == 202
        (item,) = http.get(f"/workitems/{uid}").json()
    assert value(item, STATE) == "CANCELED"
    assert value(item["00741002"]["Value"][0], "00741238") == "ordered by mistake"
    found = httpx.get(f"{stack.base}/workitems", params={"ProcedureStepState": "CANCELED",
                      "SOPInstanceUID": uid}, headers=AUTH, timeout=30)  # fmt: skip
    assert [value(d, "00080018") for d in found.json()] == [uid]


@pytest.mark.parametrize(
    ("where", "reason"),
    [({"ae": "NOWHERE"}, "no configured source serves NOWHERE"),
     ({"ae": "ORTHANC"}, "could not be retrieved")],
)  # fmt: skip
def test_inputs_that_cannot_be_retrieved_cancel_the_workitem(stack, where, reason):
    """An input no declared source serves, and one the source does not hold."""
    uid = f"1.2.826.0.1.3680043.10.1001.64.{1 if where['ae'] == 'NOWHERE' else 2}"
    body = workitem("1.2.826.0.1.3680043.10.1001.99", "1.2.826.0.1.3680043.10.1001.99.1",
                    ae=stack.pacs.aet if where["ae"] == "ORTHANC" else where["ae"])  # fmt: skip
    with stack.http() as http:
        assert http.post(f"/workitems?{uid}", json=body).status_code == 201
    item = wait_state(stack, uid, "CANCELED", timeout=120)
    assert reason in value(item["00741002"]["Value"][0], "00741238")


def test_a_failed_job_cancels_its_workitem_with_the_reason(stack, tmp_path):
    first = ct_in_pacs(stack, tmp_path, 61, TINY_CT)
    uid = "1.2.826.0.1.3680043.10.1001.65"
    body = workitem(
        first.StudyInstanceUID, first.SeriesInstanceUID, url=f"{stack.pacs.url}/dicom-web"
    )
    with stack.http() as http:
        assert http.post(f"/workitems?{uid}", json=body).status_code == 201
    item = wait_state(stack, uid, "CANCELED", timeout=300)
    reason = value(item["00741002"]["Value"][0], "00741238")
    assert "failed" in reason and "no lungs found" in reason, reason
    (row,) = [r for r in rows(stack) if r["uid"] == uid]
    jobs = study_jobs(stack, first.StudyInstanceUID)
    assert [(j["id"], j["state"]) for j in jobs] == [(row["job_id"], "failed")]
