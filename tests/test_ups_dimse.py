"""The worklist over DIMSE: pynetdicom as a third-party UPS SCU against a real node process.

The SCU creates (UPS Push N-CREATE), reads (N-GET), claims, updates and cancels (UPS Pull
N-ACTION / N-SET), queries (C-FIND) and subscribes (UPS Watch N-ACTION); its own SCP,
``WATCHER`` (a DIMSE destination of the node, so the node can address it), receives the
N-EVENT-REPORTs. Every refusal carries the PS3.4 Annex CC status and changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    UnifiedProcedureStepEvent,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    UnifiedProcedureStepWatch,
)

from tests.support.net import free_port, wait_until
from tests.support.scu import associate
from tools.node_process import NodeProcess

pytestmark = pytest.mark.slow

GLOBAL = "1.2.840.10008.5.1.4.34.5"
TASK = ("99AINODE", "LUNGS", "Lung segmentation")


@dataclass
class Watcher:
    """The subscriber's own SCP: the N-EVENT-REPORTs it received."""

    port: int
    reports: list[tuple[str, int, Dataset]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_report(self, event: Any) -> tuple[int, None]:
        with self.lock:
            self.reports.append(
                (
                    str(event.request.AffectedSOPInstanceUID),
                    int(event.event_type),
                    event.event_information,
                )
            )
        return 0x0000, None

    def of(self, uid: str, event_type: int) -> list[Dataset]:
        with self.lock:
            return [ds for u, t, ds in self.reports if u == uid and t == event_type]

    def states(self, uid: str) -> list[str]:
        return [str(ds.get("ProcedureStepState", "")) for ds in self.of(uid, 1)]


@dataclass
class Stack:
    node: NodeProcess
    watcher: Watcher
    assoc: Association


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ups-dimse")
    watcher = Watcher(free_port())
    watcher_ae = AE(ae_title="WATCHER")
    watcher_ae.add_supported_context(UnifiedProcedureStepEvent)
    server = watcher_ae.start_server(
        ("127.0.0.1", watcher.port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, watcher.on_report)],
    )
    config = {
        "destinations": {"watcher": {"ae_title": "WATCHER", "host": "127.0.0.1",
                                     "port": watcher.port}},
        "rules": [{"name": "chest", "match": {"Modality": "CT"}, "plugin": "ct_lungs",
                   "send_to": []}],
        "worklist": {"tasks": {f"{TASK[0]}^{TASK[1]}": "chest"}},
    }  # fmt: skip
    try:
        with NodeProcess(config, workdir=root / "node", wait_for_routines=False) as node:
            scu = AE(ae_title="RIS")
            for context in (UnifiedProcedureStepPush, UnifiedProcedureStepPull,
                            UnifiedProcedureStepWatch):  # fmt: skip
                scu.add_requested_context(context)
            assoc = associate(scu, "127.0.0.1", node.dicom_port, ae_title=node.ae_title)
            assert assoc.is_established
            try:
                yield Stack(node, watcher, assoc)
            finally:
                assoc.release()
    finally:
        server.shutdown()


def workitem(task: tuple[str, str, str] = TASK) -> Dataset:
    """A SCHEDULED workitem due in a day (the node does not perform it itself meanwhile)."""
    ds = Dataset()
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "AI"
    ds.WorklistLabel = "AI"
    ds.ScheduledProcedureStepStartDateTime = time.strftime(
        "%Y%m%d%H%M%S", time.localtime(time.time() + 86400)
    )
    code = Dataset()
    code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = task
    ds.ScheduledWorkitemCodeSequence = DicomSequence([code])
    source = Dataset()
    source.StudyInstanceUID = generate_uid()
    source.SeriesInstanceUID = generate_uid()
    source.TypeOfInstances = "DICOM"
    ds.InputInformationSequence = DicomSequence([source])
    return ds


def create(assoc: Association, ds: Dataset | None = None) -> tuple[int, str]:
    uid = generate_uid()
    status, _ = assoc.send_n_create(ds or workitem(), UnifiedProcedureStepPush, uid)
    return int(status.Status), uid


def get(assoc: Association, uid: str) -> tuple[int, Dataset | None]:
    status, found = assoc.send_n_get([], UnifiedProcedureStepPull, uid)
    return int(status.Status), found


def state_of(assoc: Association, uid: str) -> str:
    code, found = get(assoc, uid)
    assert code == 0x0000 and found is not None
    return str(found.ProcedureStepState)


def action(
    assoc: Association, uid: str, action_type: int, sop_class: Any = UnifiedProcedureStepPull,
    **attributes: Any,
) -> int:  # fmt: skip
    info = Dataset()
    for keyword, value in attributes.items():
        setattr(info, keyword, value)
    # No attributes: no Action Information at all (an empty data set never arrives whole).
    status, _ = assoc.send_n_action(info or None, action_type, sop_class, uid)
    return int(status.Status)


def change_state(assoc: Association, uid: str, state: str, transaction: str) -> int:
    return action(assoc, uid, 1, ProcedureStepState=state, TransactionUID=transaction)


def progress(percent: int, text: str) -> Dataset:
    item = Dataset()
    item.ProcedureStepProgress = percent
    item.ProcedureStepProgressDescription = text
    changes = Dataset()
    changes.ProcedureStepProgressInformationSequence = DicomSequence([item])
    return changes


def n_set(assoc: Association, uid: str, changes: Dataset, transaction: str | None) -> int:
    if transaction is not None:
        changes.TransactionUID = transaction
    status, _ = assoc.send_n_set(changes, UnifiedProcedureStepPull, uid)
    return int(status.Status)


def test_a_ups_scu_creates_claims_updates_and_cancels_with_event_reports(stack: Stack) -> None:
    assoc, watcher = stack.assoc, stack.watcher
    # A global subscription for an AE title the node cannot address is refused (0xC308).
    assert action(assoc, GLOBAL, 3, UnifiedProcedureStepWatch, ReceivingAE="NOBODY",
                  DeletionLock="FALSE") == 0xC308  # fmt: skip
    assert action(assoc, GLOBAL, 3, UnifiedProcedureStepWatch, ReceivingAE="WATCHER",
                  DeletionLock="FALSE") == 0x0000  # fmt: skip

    code, uid = create(assoc)
    assert code == 0x0000
    assert state_of(assoc, uid) == "SCHEDULED"
    wait_until(lambda: watcher.states(uid) == ["SCHEDULED"], 30, message="SCHEDULED report")

    # Claim: IN PROGRESS with the SCU's Transaction UID; a second claim is refused.
    transaction = generate_uid()
    assert change_state(assoc, uid, "IN PROGRESS", transaction) == 0x0000
    assert change_state(assoc, uid, "IN PROGRESS", generate_uid()) == 0xC302
    wait_until(lambda: "IN PROGRESS" in watcher.states(uid), 30, message="IN PROGRESS report")
    code, found = get(assoc, uid)
    assert code == 0x0000 and found is not None
    assert found.ProcedureStepState == "IN PROGRESS"
    assert "TransactionUID" not in found  # never revealed

    # The wrong Transaction UID changes nothing (0xC301), by N-SET or N-ACTION.
    assert n_set(assoc, uid, progress(50, "halfway"), generate_uid()) == 0xC301
    assert n_set(assoc, uid, progress(50, "halfway"), None) == 0xC301
    assert change_state(assoc, uid, "COMPLETED", generate_uid()) == 0xC301
    assert change_state(assoc, uid, "CANCELED", generate_uid()) == 0xC301
    _, found = get(assoc, uid)
    assert found is not None and found.ProcedureStepState == "IN PROGRESS"
    assert "halfway" not in str(found.get("ProcedureStepProgressInformationSequence", ""))

    # The right one: progress (a Progress Report event), then COMPLETED is refused until the
    # final state requirements are met (0xC304); CANCELED is allowed.
    assert n_set(assoc, uid, progress(50, "halfway"), transaction) == 0x0000
    wait_until(lambda: watcher.of(uid, 3), 30, message="progress report")
    _, found = get(assoc, uid)
    assert found is not None
    assert found.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50
    assert change_state(assoc, uid, "COMPLETED", transaction) == 0xC304
    assert change_state(assoc, uid, "SCHEDULED", transaction) == 0xC303
    assert change_state(assoc, uid, "CANCELED", transaction) == 0x0000
    assert change_state(assoc, uid, "CANCELED", transaction) == 0xB304  # a warning
    assert change_state(assoc, uid, "COMPLETED", transaction) == 0xC300
    assert n_set(assoc, uid, progress(60, "late"), transaction) == 0xC300
    wait_until(lambda: "CANCELED" in watcher.states(uid), 30, message="CANCELED report")
    assert state_of(assoc, uid) == "CANCELED"

    # C-FIND on UPS Pull matches by state and UID and returns the requested keys.
    query = Dataset()
    query.SOPInstanceUID = uid
    query.ProcedureStepState = "CANCELED"
    query.ProcedureStepLabel = ""
    answers = [
        (int(status.Status), found)
        for status, found in assoc.send_c_find(query, UnifiedProcedureStepPull)
    ]
    matches = [found for code, found in answers if code == 0xFF00]
    assert answers[-1][0] == 0x0000
    assert [(m.SOPInstanceUID, m.ProcedureStepLabel) for m in matches] == [(uid, "AI")]
    # Sequence matching and wildcards, as UPS-RS search does (here on UPS Watch).
    query.ProcedureStepLabel = "A*"
    code = Dataset()
    code.CodeValue = "LUNGS"
    query.ScheduledWorkitemCodeSequence = DicomSequence([code])
    found = [f for s, f in assoc.send_c_find(query, UnifiedProcedureStepWatch) if f is not None]
    assert [(f.SOPInstanceUID, f.ScheduledWorkitemCodeSequence[0].CodeValue) for f in found] == [
        (uid, "LUNGS")
    ]
    code.CodeValue = "ORGANS"
    assert [int(s.Status) for s, _ in assoc.send_c_find(query, UnifiedProcedureStepWatch)] == [0]
    query.ProcedureStepState = "SCHEDULED"
    del query.ScheduledWorkitemCodeSequence
    assert [int(s.Status) for s, _ in assoc.send_c_find(query, UnifiedProcedureStepPull)] == [0]


def test_cancel_requests_and_unknown_workitems(stack: Stack) -> None:
    assoc, watcher = stack.assoc, stack.watcher
    # Its own subscription, so that it also passes alone (or on another xdist worker).
    assert action(assoc, GLOBAL, 3, UnifiedProcedureStepWatch, ReceivingAE="WATCHER",
                  DeletionLock="FALSE") == 0x0000  # fmt: skip
    # Request Cancel (UPS Push N-ACTION 2) on a SCHEDULED workitem cancels it at once.
    code, uid = create(assoc)
    assert code == 0x0000
    assert action(assoc, uid, 2, UnifiedProcedureStepPush,
                  ReasonForCancellation="ordered by mistake") == 0x0000  # fmt: skip
    assert state_of(assoc, uid) == "CANCELED"
    assert action(assoc, uid, 2, UnifiedProcedureStepPush) == 0xB304
    wait_until(lambda: "CANCELED" in watcher.states(uid), 30, message="CANCELED report")

    # An IN PROGRESS one stays with its performer, who gets a Cancel Requested event.
    code, claimed = create(assoc)
    transaction = generate_uid()
    assert change_state(assoc, claimed, "IN PROGRESS", transaction) == 0x0000
    assert action(assoc, claimed, 2, UnifiedProcedureStepPush,
                  ReasonForCancellation="not needed") == 0x0000  # fmt: skip
    assert state_of(assoc, claimed) == "IN PROGRESS"
    wait_until(lambda: watcher.of(claimed, 2), 30, message="cancel requested report")

    # Unsubscribed: later changes send no report to WATCHER.
    assert action(assoc, GLOBAL, 4, UnifiedProcedureStepWatch, ReceivingAE="WATCHER") == 0
    assert action(assoc, claimed, 4, UnifiedProcedureStepWatch, ReceivingAE="WATCHER") == 0
    assert change_state(assoc, claimed, "CANCELED", transaction) == 0x0000
    code, later = create(assoc)
    assert code == 0x0000
    time.sleep(1.0)
    assert "CANCELED" not in watcher.states(claimed)
    assert watcher.of(later, 1) == []

    # A filtered global subscription (the request's other attributes are the filter)
    # reports only the workitems it matches; suspending applies to the global UID only.
    filtered = "1.2.840.10008.5.1.4.34.5.1"
    high = {"ScheduledProcedureStepPriority": "HIGH"}
    assert action(assoc, filtered, 3, UnifiedProcedureStepWatch, ReceivingAE="WATCHER",
                  DeletionLock="FALSE", **high) == 0x0000  # fmt: skip
    urgent_item = workitem()
    urgent_item.ScheduledProcedureStepPriority = "HIGH"
    code, routine = create(assoc)
    code, urgent = create(assoc, urgent_item)
    assert code == 0x0000
    wait_until(lambda: watcher.states(urgent) == ["SCHEDULED"], 30, message="filtered report")
    assert watcher.of(routine, 1) == []
    assert action(assoc, later, 5, UnifiedProcedureStepWatch, ReceivingAE="WATCHER") == 0x0106
    assert action(assoc, GLOBAL, 5, UnifiedProcedureStepWatch, ReceivingAE="WATCHER") == 0x0000

    # Unknown workitems: 0xC307 everywhere, and a create refused creates nothing.
    unknown = generate_uid()
    assert get(assoc, unknown)[0] == 0xC307
    assert change_state(assoc, unknown, "IN PROGRESS", generate_uid()) == 0xC307
    assert n_set(assoc, unknown, progress(5, "x"), generate_uid()) == 0xC307
    code, refused = create(assoc, workitem(("99AINODE", "NOSUCHTASK", "unknown")))
    assert code not in (0x0000, 0xB300)
    assert get(assoc, refused)[0] == 0xC307
    in_progress = workitem()
    in_progress.ProcedureStepState = "IN PROGRESS"
    code, refused = create(assoc, in_progress)
    assert code == 0xC309
    assert get(assoc, refused)[0] == 0xC307
    # Nothing was logged with patient data; each refusal is logged with its status.
    assert "status=0xC309" in stack.node.log_text()
