"""The UPS core without a network: the PS3.4 CC.1.1 state table, the store, the service's
refusals (nothing changed), matching, subscriptions and events."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from node.state.audit import AuditLog
from node.state.workitems import FILTERED_GLOBAL, GLOBAL, WorkitemStore
from node.worklist import dataset as ds
from node.worklist import states
from node.worklist.events import EventBus, EventType, UpsEvent
from node.worklist.service import WorklistService
from node.worklist.states import UpsError, UpsWarning

# The workitem store runs on both backends (tests/conftest.py).
pytestmark = pytest.mark.state_backends

S, P, X, C = "SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED"
RIGHT, WRONG = "1.2.3.9", "1.2.3.8"


# -- the state table (PS3.4 Table CC.1.1-2), every cell -----------------------------------

# (event, state) -> new state, a warning status, or an error status
TABLE: dict[tuple[str, str], str | int] = {
    ("claim", S): P, ("claim", P): 0xC302, ("claim", X): 0xC300, ("claim", C): 0xC300,
    ("schedule", S): 0xC303, ("schedule", P): 0xC303, ("schedule", X): 0xC303,
    ("schedule", C): 0xC303,
    ("complete-right", S): 0xC310, ("complete-right", P): C, ("complete-right", X): 0xC300,
    ("complete-right", C): 0xB306,
    ("complete-wrong", S): 0xC310, ("complete-wrong", P): 0xC301,
    ("complete-wrong", X): 0xC300, ("complete-wrong", C): 0xC300,
    ("cancel-right", S): 0xC310, ("cancel-right", P): X, ("cancel-right", X): 0xB304,
    ("cancel-right", C): 0xC311,
    ("cancel-wrong", S): 0xC310, ("cancel-wrong", P): 0xC301, ("cancel-wrong", X): 0xC300,
    ("cancel-wrong", C): 0xC311,
    ("request-cancel", S): X, ("request-cancel", P): "event", ("request-cancel", X): 0xB304,
    ("request-cancel", C): 0xC311,
    ("update-right", S): 0xC301, ("update-right", P): "ok", ("update-right", X): 0xC300,
    ("update-right", C): 0xC300,
    ("update-none", S): "ok", ("update-none", P): 0xC301, ("update-none", X): 0xC300,
    ("update-none", C): 0xC300,
}  # fmt: skip


def apply(event: str, state: str) -> str | int:
    try:
        if event == "claim":
            outcome: Any = states.change_state(state, P, stored_uid=None, given_uid=RIGHT)
        elif event == "schedule":
            outcome = states.change_state(state, S, stored_uid=RIGHT, given_uid=RIGHT)
        elif event.startswith(("complete", "cancel-")):
            target = C if event.startswith("complete") else X
            given = RIGHT if event.endswith("right") else WRONG
            outcome = states.change_state(state, target, stored_uid=RIGHT, given_uid=given)
        elif event == "request-cancel":
            outcome = states.request_cancel(state)
            outcome = "event" if outcome is None else outcome
        else:
            given = RIGHT if event == "update-right" else None
            states.update(state, stored_uid=RIGHT, given_uid=given)
            outcome = "ok"
    except UpsError as exc:
        return exc.status
    if isinstance(outcome, UpsWarning):
        return outcome.status
    return str(outcome)


@pytest.mark.parametrize(("event", "state"), sorted(TABLE))
def test_state_table(event, state):
    assert apply(event, state) == TABLE[(event, state)]


def test_failures_map_to_ps318_http_statuses():
    assert UpsError(states.WRONG_TRANSACTION_UID).http == 409
    assert UpsError(states.ALREADY_IN_PROGRESS).http == 409
    assert UpsError(states.NO_SUCH_UPS).http == 404
    assert UpsError(states.INVALID_ATTRIBUTE_VALUE).http == 400
    assert UpsError(states.NOT_CREATED_SCHEDULED).http == 400
    assert "Transaction UID" in UpsError(states.WRONG_TRANSACTION_UID).reason
    with pytest.raises(UpsError) as missing:
        states.change_state(P, C, stored_uid=RIGHT, given_uid=None)
    assert missing.value.status == states.MISSING_ATTRIBUTE
    with pytest.raises(UpsError) as unmet:
        states.change_state(P, C, stored_uid=RIGHT, given_uid=RIGHT, final_requirements_met=False)
    assert unmet.value.status == states.FINAL_STATE_NOT_MET


# -- the service ---------------------------------------------------------------------------


def workitem(code: str = "lungs", series: str = "1.2.826.0.1.2", **extra: Any) -> dict:
    body = {
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["HIGH"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00404005": {"vr": "DT", "Value": ["20260102120000"]},
        "00404018": {"vr": "SQ", "Value": [{
            "00080100": {"vr": "SH", "Value": [code]},
            "00080102": {"vr": "SH", "Value": ["99AI"]},
            "00080104": {"vr": "LO", "Value": ["Lung segmentation"]},
        }]},
        "00404021": {"vr": "SQ", "Value": [{
            "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.1"]},
            "0020000E": {"vr": "UI", "Value": [series]},
            "00080054": {"vr": "AE", "Value": ["PACS"]},
        }]},
    }  # fmt: skip
    body.update(extra)
    return body


class Recorder:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[UpsEvent] = []
        bus.listen(self.events.append)

    def types(self, ae: str) -> list[tuple[EventType, str | None]]:
        return [
            (e.event_type, ds.value(e.attributes, ds.PROCEDURE_STEP_STATE))
            for e in self.events
            if ae in e.subscribers
        ]


@pytest.fixture
def service(database, clock):
    bus = EventBus()
    svc = WorklistService(
        WorkitemStore(database),
        AuditLog(database),
        bus,
        tasks=lambda: {"99AI^lungs": "chest", "organs": "ct_organs", "ghost": "nowhere"},
        known_routine=lambda name: name in {"chest", "ct_organs"},
        clock=clock,
    )
    svc.recorder = Recorder(bus)  # type: ignore[attr-defined]
    return svc


def refused(call: Any, status: int) -> UpsError:
    with pytest.raises(UpsError) as caught:
        call()
    assert caught.value.status == status, caught.value
    return caught.value


def test_create_maps_the_task_and_refuses_what_it_cannot_serve(service, database):
    item = service.create(workitem(), uid="1.2.3.4", actor="tests")
    assert (item.state, item.task, item.routine, item.priority) == (
        S,
        "99AI^lungs",
        "chest",
        "HIGH",
    )
    assert ds.value(service.retrieve("1.2.3.4"), ds.SOP_CLASS_UID) == ds.UPS_PUSH_SOP_CLASS
    by_code = service.create(workitem(code="organs"), uid=None, actor="tests")
    assert by_code.routine == "ct_organs"
    count = len(service.store.all())
    refused(lambda: service.create(workitem(code="brain"), uid="1.2.3.5", actor="t"), 0xC000)
    refused(lambda: service.create(workitem(code="ghost"), uid="1.2.3.5", actor="t"), 0xC000)
    refused(lambda: service.create(workitem(), uid="1.2.3.4", actor="t"), 0x0111)
    state = dict(workitem(), **{"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}})
    refused(lambda: service.create(state, uid="1.2.3.6", actor="t"), 0xC309)
    refused(lambda: service.create({"0074100": {"vr": "CS"}}, uid=None, actor="t"), 0x0106)
    refused(lambda: service.create({"00741000": {"Value": ["x"]}}, uid=None, actor="t"), 0x0106)
    refused(lambda: service.create([workitem(), workitem()], uid=None, actor="t"), 0x0106)
    no_input = {k: v for k, v in workitem().items() if k != "00404021"}
    refused(lambda: service.create(no_input, uid=None, actor="t"), 0x0120)
    two_series = workitem()
    two_series["00404021"]["Value"].append(
        {"0020000D": {"vr": "UI", "Value": ["1.2"]}, "0020000E": {"vr": "UI", "Value": ["1.3"]}}
    )
    refused(lambda: service.create(two_series, uid=None, actor="t"), 0x0106)
    refused(lambda: service.create(workitem(), uid="not a uid", actor="t"), 0x0106)
    assert len(service.store.all()) == count  # nothing created by a refusal
    audit = AuditLog(database).entries(action="workitem.create")
    assert {entry.target for entry in audit} == {"workitem:1.2.3.4", f"workitem:{by_code.uid}"}


def test_claim_update_complete_with_transaction_uid(service):
    service.create(workitem(), uid="1.2.3.4", actor="tests")
    service.subscribe("WATCHER", "1.2.3.4", deletion_lock=False, actor="tests")
    claim = {"00741000": {"vr": "CS", "Value": [P]}, "00081195": {"vr": "UI", "Value": [RIGHT]}}
    item, warning = service.change_state("1.2.3.4", claim, actor="perf")
    assert (item.state, item.transaction_uid, warning) == (P, RIGHT, None)
    assert "00081195" not in service.retrieve("1.2.3.4")  # never shown
    refused(lambda: service.change_state("1.2.3.4", claim, actor="other"), 0xC302)
    progress = {ds.PROGRESS_INFORMATION: ds.sequence({ds.PROGRESS: ds.element("DS", 50)})}
    before = service.store.get("1.2.3.4")
    refused(lambda: service.update("1.2.3.4", progress, transaction_uid=WRONG, actor="x"), 0xC301)
    refused(lambda: service.update("1.2.3.4", progress, transaction_uid=None, actor="x"), 0xC301)
    wrong = dict(claim, **{"00741000": {"vr": "CS", "Value": [C]},
                           "00081195": {"vr": "UI", "Value": [WRONG]}})  # fmt: skip
    refused(lambda: service.change_state("1.2.3.4", wrong, actor="x"), 0xC301)
    assert service.store.get("1.2.3.4") == before  # nothing changed
    service.update("1.2.3.4", progress, transaction_uid=RIGHT, actor="perf")
    complete = dict(wrong, **{"00081195": {"vr": "UI", "Value": [RIGHT]}})
    refused(lambda: service.change_state("1.2.3.4", complete, actor="perf"), 0xC304)
    done = ds.with_performed({}, started_at=1.0, ended_at=2.0, outputs=[])
    service.update("1.2.3.4", done, transaction_uid=RIGHT, actor="perf")
    item, warning = service.change_state("1.2.3.4", complete, actor="perf")
    assert item.state == C and warning is None
    _, again = service.change_state("1.2.3.4", complete, actor="perf")
    assert again is not None and again.status == 0xB306
    assert service.recorder.types("WATCHER") == [
        (EventType.STATE_REPORT, S),  # the initial report on subscribing
        (EventType.STATE_REPORT, P),
        (EventType.PROGRESS_REPORT, None),
        (EventType.STATE_REPORT, C),
    ]


def test_request_cancel_scheduled_and_in_progress(service):
    service.create(workitem(), uid="1.2.3.4", actor="t")
    service.create(workitem(), uid="1.2.3.5", actor="t")
    service.subscribe("W", GLOBAL, deletion_lock=True, actor="t")
    reason = {ds.REASON_FOR_CANCELLATION: ds.element("LT", "patient left")}
    item, _ = service.request_cancel("1.2.3.4", reason, actor="t")
    assert item.state == X
    entry = ds.items(item.dataset, ds.PROGRESS_INFORMATION)[0]
    assert ds.value(entry, ds.REASON_FOR_CANCELLATION) == "patient left"
    _, warning = service.request_cancel("1.2.3.4", None, actor="t")
    assert warning is not None and warning.status == 0xB304
    claimed = service.claim_for_node("1.2.3.5")
    assert claimed is not None and claimed.performer == "node"
    item, _ = service.request_cancel("1.2.3.5", None, actor="t")
    assert item.state == P and item.cancel_requested  # the performer decides
    assert (EventType.CANCEL_REQUESTED, None) in service.recorder.types("W")
    service.cancel_for_node("1.2.3.5", "cancellation requested")
    assert service.store.get("1.2.3.5").state == X
    refused(lambda: service.request_cancel("9.9.9", None, actor="t"), 0xC307)


def test_node_completion_carries_the_output_information(service):
    service.create(workitem(), uid="1.2.3.4", actor="t")
    assert service.claim_for_node("1.2.3.4") is not None
    assert service.claim_for_node("1.2.3.4") is None  # already IN PROGRESS
    service.report_progress("1.2.3.4", 60, "inference done")
    assert ds.progress_of(service.store.get("1.2.3.4").dataset) == (60.0, "inference done")
    url = "http://pacs/dicom-web/studies/1.2/series/1.2.5"
    seg = "1.2.840.10008.5.1.4.1.1.66.4"
    output = ds.OutputReference("1.2", "1.2.5", seg, "1.2.5.1", retrieve_url=url)
    item = service.complete_for_node("1.2.3.4", started_at=1.0, outputs=[output])
    assert item.state == C
    performed = ds.items(item.dataset, ds.PERFORMED_PROCEDURE)[0]
    (out,) = ds.items(performed, ds.OUTPUT_INFORMATION)
    assert ds.value(out, ds.SERIES_UID) == "1.2.5"
    assert ds.value(ds.items(out, ds.REFERENCED_SOPS)[0], ds.REFERENCED_INSTANCE) == "1.2.5.1"
    assert ds.value(ds.items(out, ds.WADO_RS_RETRIEVAL)[0], ds.RETRIEVE_URL).endswith("1.2.5")


def test_search_matching(service):
    service.create(workitem(), uid="1.2.3.4", actor="t")
    service.create(workitem(code="organs", series="1.2.9"), uid="1.2.3.5", actor="t")
    service.claim_for_node("1.2.3.5")

    def uids(*query: tuple[str, str]) -> list[str]:
        return [ds.value(d, ds.SOP_INSTANCE_UID) for d in service.search(query)]

    assert uids() == ["1.2.3.4", "1.2.3.5"]
    assert uids(("ProcedureStepState", "SCHEDULED")) == ["1.2.3.4"]
    assert uids(("00741000", "IN PROGRESS")) == ["1.2.3.5"]
    assert uids(("SOPInstanceUID", "1.2.3.5,1.2.3.7")) == ["1.2.3.5"]
    assert uids(("PatientName", "Doe*")) == ["1.2.3.4", "1.2.3.5"]
    assert uids(("PatientName", "Roe*")) == []
    assert uids(("ScheduledProcedureStepStartDateTime", "20260101-20260103")) == [
        "1.2.3.4", "1.2.3.5"]  # fmt: skip
    assert uids(("ScheduledProcedureStepStartDateTime", "20260103-")) == []
    assert uids(("ScheduledWorkitemCodeSequence.CodeValue", "organs")) == ["1.2.3.5"]
    assert uids(("InputInformationSequence.SeriesInstanceUID", "1.2.9")) == ["1.2.3.5"]
    assert uids(("limit", "1"), ("offset", "1")) == ["1.2.3.5"]
    refused(lambda: uids(("NoSuchKeyword", "x")), 0x0106)
    refused(lambda: uids(("limit", "x")), 0x0106)


def test_subscriptions_global_filtered_suspend_unsubscribe(service, database):
    service.create(workitem(), uid="1.2.3.4", actor="t")
    service.subscribe("ALL", GLOBAL, deletion_lock=False, actor="t")
    service.subscribe("ORGANS", FILTERED_GLOBAL, deletion_lock=False,
                      filter_query=[("ScheduledWorkitemCodeSequence.CodeValue", "organs")],
                      actor="t")  # fmt: skip
    refused(lambda: service.subscribe("X", FILTERED_GLOBAL, deletion_lock=False, actor="t"),
            0x0120)  # fmt: skip
    refused(lambda: service.subscribe("X", "9.9.9", deletion_lock=False, actor="t"), 0xC307)
    refused(lambda: service.subscribe("", "1.2.3.4", deletion_lock=False, actor="t"), 0x0106)
    service.create(workitem(code="organs", series="1.2.9"), uid="1.2.3.5", actor="t")
    assert service.subscribers("1.2.3.4") == ("ALL",)
    assert service.subscribers("1.2.3.5") == ("ALL", "ORGANS")
    service.suspend("ALL", actor="t")
    service.create(workitem(), uid="1.2.3.6", actor="t")
    assert service.subscribers("1.2.3.6") == ()
    assert service.subscribers("1.2.3.4") == ("ALL",)  # existing ones keep reporting
    service.unsubscribe("ORGANS", GLOBAL, actor="t")
    assert service.subscribers("1.2.3.5") == ("ALL",)
    service.unsubscribe("ALL", "1.2.3.4", actor="t")
    assert service.subscribers("1.2.3.4") == ()
    assert AuditLog(database).entries(action="workitem.subscribe")


def test_the_store_survives_a_reopen(tmp_path):
    from node.state.db import Database

    db = Database(tmp_path / "s.sqlite3")
    store = WorkitemStore(db)
    data = copy.deepcopy(workitem())
    store.add(uid="1.2", dataset=data, task="t", routine="r", priority="LOW", scheduled_at=None,
              created_by="x", now=1.0)  # fmt: skip
    db.close()
    db = Database(tmp_path / "s.sqlite3")
    assert WorkitemStore(db).get("1.2").dataset == data
    db.close()


def test_update_of_a_scheduled_workitem_reports_assignment_and_checks_the_task(service):
    service.create(workitem(), uid="1.2.3.4", actor="t")
    service.subscribe("W", "1.2.3.4", deletion_lock=False, actor="t")
    station = {"00404025": ds.sequence({ds.CODE_VALUE: ds.element("SH", "AI1"),
                                        ds.CODING_SCHEME: ds.element("SH", "99AI")})}  # fmt: skip
    service.update("1.2.3.4", station, transaction_uid=None, actor="ris")
    assert (EventType.ASSIGNED, None) in service.recorder.types("W")
    assert "00404025" in service.retrieve("1.2.3.4")
    organs = {"00404018": ds.sequence({ds.CODE_VALUE: ds.element("SH", "organs")})}
    moved = {"00404005": ds.element("DT", "20990101000000")}
    service.update("1.2.3.4", {**organs, **moved}, transaction_uid=None, actor="ris")
    assert service.store.get("1.2.3.4").routine == "ct_organs"  # the performer runs the new task
    assert service.store.get("1.2.3.4").scheduled_at == ds.parse_datetime("20990101000000")
    before = service.store.get("1.2.3.4")
    unknown = {"00404018": ds.sequence({ds.CODE_VALUE: ds.element("SH", "brain")})}
    refused(lambda: service.update("1.2.3.4", unknown, transaction_uid=None, actor="t"), 0xC000)
    state = {"00741000": ds.element("CS", "COMPLETED")}
    refused(lambda: service.update("1.2.3.4", state, transaction_uid=None, actor="t"), 0x0106)
    assert service.store.get("1.2.3.4") == before
