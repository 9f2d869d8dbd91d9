"""A claim whose answer the performer never recorded (killed between the worklist's
answer and its own note) is settled on restart by its Transaction UID: an update the
worklist accepts means the workitem is the node's (carried on), a refused one means it is
not (dropped as ``lost``). The worklist is a real node served over HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from node.config import settings_from_mapping
from node.orchestration.ingest import Ingestor
from node.pull.service import PullService
from node.pull.worklist import RemoteWorklistPerformer
from node.spool import Spool
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.performed import PerformedStore
from node.state.pulls import PullStore
from node.state.series import SeriesStore
from tests.support.admin import served_node

TASK = {"99AINODE^LUNGS": "chest"}
JSON = {"Content-Type": "application/dicom+json"}
RULE = {"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs"}


def _workitem() -> dict[str, Any]:
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ProcedureStepLabel = "AI"
    code = Dataset()
    code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = "99AINODE", "LUNGS", "x"
    ds.ScheduledWorkitemCodeSequence = DicomSequence([code])
    source = Dataset()
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.InputInformationSequence = DicomSequence([source])
    return ds.to_json_dict()


def test_an_unrecorded_claim_is_settled_by_its_transaction_uid(tmp_path: Path) -> None:
    worklist_config = {"rules": [RULE], "worklist": {"tasks": TASK, "perform": False}}
    with served_node(tmp_path / "w", worklist_config) as worklist:
        with worklist.client(worklist.admin_token) as client:
            held, other = generate_uid(), generate_uid()
            uids = []
            for _ in range(3):
                answer = client.post("/dicomweb/workitems", json=[_workitem()], headers=JSON)
                assert answer.status_code == 201, answer.text
                uids.append(answer.headers["Location"].rsplit("/", 1)[-1])
            # All claimed on the worklist: the first with the Transaction UID the performer
            # noted, the others by another performer.
            for uid, transaction in zip(uids, (held, other, other), strict=True):
                claim = Dataset()
                claim.ProcedureStepState = "IN PROGRESS"
                claim.TransactionUID = transaction
                answer = client.put(f"/dicomweb/workitems/{uid}/state",
                                    json=[claim.to_json_dict()], headers=JSON)  # fmt: skip
                assert answer.status_code == 200, answer.text

        settings = settings_from_mapping(
            {
                "node": {"data_dir": str(tmp_path / "p")},
                "rules": [{**RULE, "send_to": []}],
                "sources": {
                    "w": {"kind": "dicomweb", "url": f"{worklist.url}/dicomweb",
                          "auth": {"type": "bearer", "token": worklist.admin_token},
                          "worklist": {"tasks": TASK}},
                },
            },
            environ={},
        )  # fmt: skip
        settings.node.data_dir.mkdir(parents=True)
        db = Database(settings.database_path)
        try:
            store, pulls, series = PerformedStore(db), PullStore(db), SeriesStore(db)
            puller = PullService(
                pulls,
                lambda: settings.sources,
                Ingestor(Spool(settings.spool_dir), series, clock=time.time),
                series,
                node_ae_title="PERFORMER",
                clock=time.time,
            )
            performer = RemoteWorklistPerformer(
                store,
                lambda: settings.sources,
                puller,
                pulls,
                JobQueue(db),
                series,
                lambda: settings.rules,
                lambda: settings.destinations,
                node_ae_title="PERFORMER",
                clock=time.time,
            )
            # What a performer killed after sending each claim left behind.
            for uid, transaction in ((uids[0], held), (uids[1], generate_uid())):
                store.add(source="w", workitem_uid=uid, transaction_uid=transaction,
                          rule="chest", workitem=_workitem(), now=time.time())  # fmt: skip
            # A claim the node believed it held whose Transaction UID the worklist refuses
            # (a 4xx): canceling is refused too, so it is given up, not retried forever.
            stale = store.add(source="w", workitem_uid=uids[2], transaction_uid=generate_uid(),
                              rule="chest", workitem=_workitem(), now=time.time())  # fmt: skip
            store.update(stale.id, time.time(), state="fetching")
            assert performer.run_once()
            mine, lost, given_up = store.recent()[::-1]
            assert (mine.workitem_uid, mine.state, mine.progress) == (uids[0], "fetching", 0)
            assert (lost.workitem_uid, lost.state) == (uids[1], "lost")
            assert "409" in (lost.reason or "")
            assert (given_up.workitem_uid, given_up.state) == (uids[2], "lost")
            assert "409" in (given_up.reason or "")
            performer.run_once()  # the held one goes on (its pull); the others stay given up
            assert [c.state for c in store.recent()[::-1]][1:] == ["lost", "lost"]
            # The worklist saw the update of the held one only.
            with worklist.client(worklist.admin_token) as client:
                first, second, third = (
                    Dataset.from_json(client.get(f"/dicomweb/workitems/{uid}").json()[0])
                    for uid in uids
                )
            assert third.ProcedureStepState == "IN PROGRESS"
            progress = first.ProcedureStepProgressInformationSequence[0]
            assert progress.ProcedureStepProgressDescription == "fetching inputs"
            for theirs in (second, third):
                assert "fetching" not in str(theirs.get("ProcedureStepProgressInformationSequence"))
                assert "claimed" not in str(theirs.get("ProcedureStepProgressInformationSequence"))
        finally:
            db.close()
