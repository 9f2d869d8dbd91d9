"""Two node processes: W is the worklist (UPS-RS server), P performs W's workitems.

A workitem created on W for a study only a real Orthanc holds is claimed by P, whose
inference is killed (SIGKILL at ``inference_started``); restarted, P carries on with the
same Transaction UID, and the workitem ends COMPLETED on W with an Output Information
Sequence whose objects exist in Orthanc, exactly once (one SEG and one SR series).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tests.support.net import wait_until
from tools.node_process import NodeProcess
from tools.orthanc import DICOMWEB_PLUGIN, OrthancServer
from tools.orthanc_rest import find_series, upload_many
from tools.synthetic.chest_ct import make_chest_ct, write_series

pytestmark = pytest.mark.slow

TOKEN = "worklist-token-" + "0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TASK = ("99AINODE", "LUNGS", "Lung segmentation")
CHEST = {
    "name": "chest",
    "match": {"Modality": "CT"},
    "plugin": "ct_lungs",
}


def new_workitem(study_uid: str, series_uid: str, retrieve_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "HIGH"
    ds.ProcedureStepLabel = "AI"
    ds.WorklistLabel = "AI"
    code = Dataset()
    code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = TASK
    ds.ScheduledWorkitemCodeSequence = DicomSequence([code])
    source = Dataset()
    source.StudyInstanceUID = study_uid
    source.SeriesInstanceUID = series_uid
    source.TypeOfInstances = "DICOM"
    wado = Dataset()
    wado.RetrieveURL = retrieve_url
    source.WADORSRetrievalSequence = DicomSequence([wado])
    ds.InputInformationSequence = DicomSequence([source])
    return ds.to_json_dict()


def create(worklist: NodeProcess, body: dict[str, Any]) -> str:
    created = httpx.post(f"{worklist.url}/dicomweb/workitems", json=[body],
                         headers={**AUTH, "Content-Type": "application/dicom+json"},
                         timeout=30)  # fmt: skip
    assert created.status_code == 201, created.text
    return str(created.headers["Location"]).rstrip("/").rsplit("/", 1)[-1]


def workitem_state(worklist: NodeProcess, uid: str) -> Dataset:
    answer = httpx.get(f"{worklist.url}/dicomweb/workitems/{uid}", headers=AUTH, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return Dataset.from_json(body[0] if isinstance(body, list) else body)


def performed_rows(node: NodeProcess) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        return list(db.execute("SELECT workitem_uid, transaction_uid, state FROM"
                               " performed_workitems ORDER BY id"))  # fmt: skip


def test_a_performer_killed_mid_task_completes_the_workitem_once(tmp_path: Path) -> None:
    datasets, _ = make_chest_ct(n_slices=30, rows=96, columns=96, seed=61,
                                series_description="Chest worklist")  # fmt: skip
    files = write_series(datasets, tmp_path / "ct")
    study_uid, series_uid = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    with OrthancServer(workdir=tmp_path / "pacs", plugins=(DICOMWEB_PLUGIN,)) as pacs:
        upload_many(pacs.client, files)
        web = f"{pacs.url}/dicom-web"
        worklist_config = {
            "dicomweb": {"tokens": [{"name": "performer", "token": TOKEN}]},
            "rules": [{**CHEST, "send_to": []}],
            "worklist": {
                "tasks": {f"{TASK[0]}^{TASK[1]}": "chest", "99AINODE^ORGANS": "chest"},
                "perform": False,
            },
        }
        with NodeProcess(worklist_config, workdir=tmp_path / "w",
                         wait_for_routines=False) as worklist:  # fmt: skip
            performer_config = {
                "node": {"ae_title": "PERFORMER"},
                "completion": {"series_quiet_seconds": 3600, "poll_seconds": 0.2},
                "sources": {
                    "pacs": {"kind": "dicomweb", "url": web},
                    "w": {
                        "kind": "dicomweb",
                        "url": f"{worklist.url}/dicomweb",
                        "auth": {"type": "bearer", "token": TOKEN},
                        "worklist": {"label": "AI", "poll_seconds": 0.5,
                                     "tasks": {f"{TASK[0]}^{TASK[1]}": "chest"}},
                    },
                },
                "destinations": {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1",
                                          "port": pacs.dicom_port}},
                "rules": [{**CHEST, "send_to": ["pacs"]}],
            }  # fmt: skip
            # P maps no rule to ORGANS, and no source of P serves the second one's input:
            # neither is claimed. The third names a study Orthanc does not hold: claimed, and
            # canceled with the reason. Then the workitem P can do.
            organs = new_workitem(study_uid, series_uid, f"{web}/studies/{study_uid}")
            organs["00404018"]["Value"][0]["00080100"]["Value"] = ["ORGANS"]
            unservable = new_workitem(study_uid, series_uid, "http://127.0.0.1:9/elsewhere")
            missing = new_workitem("1.2.3.999", "1.2.3.999.1", f"{web}/studies/1.2.3.999")
            wanted = new_workitem(study_uid, series_uid, f"{web}/studies/{study_uid}")
            organs_uid, unservable_uid, missing_uid, uid = (
                create(worklist, item) for item in (organs, unservable, missing, wanted)
            )

            node_dir = tmp_path / "p"
            armed = NodeProcess(performer_config, workdir=node_dir,
                                env={"AINODE_FAULT": "inference_started"})  # fmt: skip
            with armed:
                wait_until(lambda: not armed.running(), 300, message="P killed mid-task")
                assert "point=inference_started" in armed.log_text()
            killed = performed_rows(armed)
            # The kill comes at the job's inference_started: the performer's own poll may or
            # may not have moved its claim from fetching to running by then (load decides).
            assert [(w, s) for w, _, s in killed] == [(missing_uid, "canceled"),
                                                     (uid, killed[1][2])]  # fmt: skip
            assert killed[1][2] in {"fetching", "running"}
            assert workitem_state(worklist, uid).ProcedureStepState == "IN PROGRESS"
            assert not find_series(pacs.client, study_uid, "SEG")

            with NodeProcess(performer_config, workdir=node_dir) as performer:
                done = wait_until(
                    lambda: (
                        (item := workitem_state(worklist, uid)).ProcedureStepState == "COMPLETED"
                        and item
                    ),
                    300,
                    message="workitem COMPLETED on W",
                )
                rows = performed_rows(performer)
            # Same claim, same Transaction UID, resumed.
            assert rows == [killed[0], (uid, killed[1][1], "completed")]
            for never_claimed in (organs_uid, unservable_uid):
                assert workitem_state(worklist, never_claimed).ProcedureStepState == "SCHEDULED"
            canceled = workitem_state(worklist, missing_uid)
            assert canceled.ProcedureStepState == "CANCELED"
            (reason,) = canceled.ProcedureStepProgressInformationSequence
            assert "inputs cannot be retrieved" in reason.ReasonForCancellation
            assert "no series for study 1.2.3.999" in reason.ReasonForCancellation
            (performed,) = done.UnifiedProcedureStepPerformedProcedureSequence
            outputs = performed.OutputInformationSequence
            assert {o.StudyInstanceUID for o in outputs} == {study_uid}
            in_pacs = {
                s["MainDicomTags"]["SeriesInstanceUID"]: s
                for m in ("SEG", "SR")
                for s in find_series(pacs.client, study_uid, m)
            }
            # Exactly once: one SEG series and one SR series, the ones referenced.
            assert len(find_series(pacs.client, study_uid, "SEG")) == 1
            assert len(find_series(pacs.client, study_uid, "SR")) == 1
            assert {o.SeriesInstanceUID for o in outputs} == set(in_pacs)
            for output in outputs:
                assert output.DICOMRetrievalSequence[0].RetrieveAETitle == pacs.aet
                wanted = {r.ReferencedSOPInstanceUID for r in output.ReferencedSOPSequence}
                found = set()
                for instance in in_pacs[output.SeriesInstanceUID]["Instances"]:
                    tags = pacs.client.get_instances_id_simplified_tags(instance)
                    found.add(tags["SOPInstanceUID"])
                assert wanted == found
