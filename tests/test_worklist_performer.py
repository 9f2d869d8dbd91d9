"""The node performing its own workitems, on real state stores with a hand-moved clock:
inputs it holds, pulls it waits for, progress from job events, completion only when the
job is done, cancellation of queued and running jobs, failed jobs and pulls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.config import RuleSettings, settings_from_mapping
from node.state.audit import AuditLog
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.pulls import PullStore
from node.state.series import InstanceRecord, SeriesStore
from node.state.workitems import WorkitemStore
from node.worklist import dataset as ds
from node.worklist.events import EventBus
from node.worklist.performer import WorklistPerformer
from node.worklist.service import WorklistService
from tools.synthetic.chest_ct import make_chest_ct

# The workitem store runs on both backends (tests/conftest.py).
pytestmark = pytest.mark.state_backends

STUDY, SERIES = "1.2.826.0.1.9", "1.2.826.0.1.9.1"
WEB = "http://pacs.example/dicom-web"


def workitem(ae: str = "PACS") -> dict[str, Any]:
    return {
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00404018": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["LUNGS"]},
                                            "00080102": {"vr": "SH", "Value": ["99AI"]}}]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [STUDY]},
                                            "0020000E": {"vr": "UI", "Value": [SERIES]},
                                            "00080054": {"vr": "AE", "Value": [ae]}}]},
    }  # fmt: skip


class Harness:
    def __init__(self, database: Any, clock: Any) -> None:
        settings = settings_from_mapping(
            {
                "sources": {"pacs": {"kind": "dicomweb", "url": WEB, "ae_title": "PACS"}},
                "destinations": {"web": {"kind": "dicomweb", "url": WEB}},
            },
            environ={},
        )
        self.clock = clock
        self.series = SeriesStore(database)
        self.queue = JobQueue(database)
        self.pulls = PullStore(database)
        self.service = WorklistService(
            WorkitemStore(database), AuditLog(database), EventBus(),
            tasks=lambda: {"99AI^LUNGS": "chest"}, known_routine=lambda n: n == "chest",
            clock=clock,
        )  # fmt: skip
        self.submitted: list[tuple[str, str, str | None, str, str]] = []
        rule = RuleSettings(name="chest", plugin="ct_lungs", send_to=["web"], priority=4)
        self.performer = WorklistPerformer(
            self.service, self.queue, self.series, self.pulls,
            submit_pull=self.submit, sources=lambda: settings.sources, rules=lambda: [rule],
            destinations=lambda: settings.destinations, clock=clock,
        )  # fmt: skip

    def submit(self, source: str, study: str, series: str | None, rule: str, origin: str) -> int:
        self.submitted.append((source, study, series, rule, origin))
        pull = self.pulls.add(source=source, study_uid=study, series_uid=series, rule=rule,
                              origin=origin, now=self.clock())  # fmt: skip
        return pull.id

    def hold_series(self, tmp_path: Path) -> None:
        record = InstanceRecord(SERIES + ".1", SERIES, STUDY, "1.2.840.10008.5.1.4.1.1.2",
                                "1.2.840.10008.1.2.1", tmp_path / "x.dcm", 10, "CT")  # fmt: skip
        self.series.record_instance(record, self.clock())
        assert self.series.force_complete(SERIES, self.clock()) is not None

    def item(self, uid: str) -> Any:
        return self.service.store.get(uid)


@pytest.fixture
def harness(database, clock) -> Harness:
    return Harness(database, clock)


def test_held_input_runs_at_once_and_completes_only_when_done(harness, tmp_path):
    harness.hold_series(tmp_path)
    harness.service.create(workitem(), uid="1.2.5", actor="t")
    harness.performer.run_once()
    item = harness.item("1.2.5")
    assert item.state == "IN PROGRESS" and item.job_id is not None and not harness.submitted
    job = harness.queue.get(item.job_id)
    assert (job.rule, job.plugin, job.destinations, job.priority) == ("chest", "ct_lungs",
                                                                      ("web",), 4)  # fmt: skip
    harness.performer.run_once()  # a second pass queues no second job
    assert len(harness.queue.jobs(series_uid=SERIES)) == 1
    claimed = harness.queue.claim_next(harness.clock())
    harness.queue.add_event(claimed.id, harness.clock(), EventCode.INFERENCE_DONE)
    harness.performer.run_once()
    assert ds.progress_of(harness.item("1.2.5").dataset) == (60.0, "inference done")
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    (source,), _ = make_chest_ct(n_slices=1, rows=16, columns=16, seed=1)
    source.save_as(result_dir / "seg_1.2.6.dcm", enforce_file_format=True)
    harness.queue.inference_done(claimed.id, result_dir, harness.clock())
    harness.performer.run_once()
    assert harness.item("1.2.5").state == "IN PROGRESS"  # exporting: not yet COMPLETED
    harness.queue.finish(claimed.id, harness.clock())
    harness.performer.run_once()
    item = harness.item("1.2.5")
    assert item.state == "COMPLETED"
    (output,) = ds.items(ds.items(item.dataset, ds.PERFORMED_PROCEDURE)[0], ds.OUTPUT_INFORMATION)
    url = ds.value(ds.items(output, ds.WADO_RS_RETRIEVAL)[0], ds.RETRIEVE_URL)
    assert url == f"{WEB}/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
    ref = ds.items(output, ds.REFERENCED_SOPS)[0]
    assert ds.value(ref, ds.REFERENCED_INSTANCE) == source.SOPInstanceUID


def test_missing_input_is_pulled_from_the_source_with_that_ae_title(harness, tmp_path):
    harness.service.create(workitem(), uid="1.2.5", actor="t")
    harness.performer.run_once()
    assert harness.submitted == [("pacs", STUDY, SERIES, "workitem:1.2.5", "workitem:1.2.5")]
    item = harness.item("1.2.5")
    assert item.pull_id is not None and item.job_id is None
    harness.performer.run_once()
    assert harness.item("1.2.5").job_id is None  # the pull is still queued
    harness.hold_series(tmp_path)
    harness.pulls.update(item.pull_id, harness.clock(), state="done")
    harness.performer.run_once()
    assert harness.item("1.2.5").job_id is not None


def test_failed_pull_and_unknown_source_cancel_with_the_reason(harness):
    harness.service.create(workitem(ae="ELSEWHERE"), uid="1.2.5", actor="t")
    harness.service.create(workitem(), uid="1.2.6", actor="t")
    harness.performer.run_once()
    reason = ds.items(harness.item("1.2.5").dataset, ds.PROGRESS_INFORMATION)[0]
    assert "no configured source serves ELSEWHERE" in ds.value(reason, ds.REASON_FOR_CANCELLATION)
    assert harness.item("1.2.5").state == "CANCELED"
    harness.pulls.update(harness.item("1.2.6").pull_id, harness.clock(), state="failed",
                         error="source 'pacs' has no series")  # fmt: skip
    harness.performer.run_once()
    item = harness.item("1.2.6")
    reason = ds.value(ds.items(item.dataset, ds.PROGRESS_INFORMATION)[0],
                      ds.REASON_FOR_CANCELLATION)  # fmt: skip
    assert item.state == "CANCELED" and "could not be retrieved: source 'pacs' has no" in reason


@pytest.mark.parametrize("running", [False, True])
def test_cancel_request_cancels_the_job(harness, tmp_path, running):
    harness.hold_series(tmp_path)
    harness.service.create(workitem(), uid="1.2.5", actor="t")
    harness.performer.run_once()
    job_id = harness.item("1.2.5").job_id
    if running:
        assert harness.queue.claim_next(harness.clock()).id == job_id
    harness.service.request_cancel("1.2.5", None, actor="ris")
    assert harness.item("1.2.5").state == "IN PROGRESS"  # the performer acts on it
    harness.performer.run_once()
    assert harness.queue.get(job_id).state == "cancelled"
    assert harness.queue.claim_next(harness.clock()) is None  # a queued job never runs
    harness.performer.run_once()
    item = harness.item("1.2.5")
    reason = ds.value(ds.items(item.dataset, ds.PROGRESS_INFORMATION)[0],
                      ds.REASON_FOR_CANCELLATION)  # fmt: skip
    assert item.state == "CANCELED" and "cancellation requested" in reason


def test_failed_job_cancels_and_future_start_waits(harness, tmp_path):
    harness.hold_series(tmp_path)
    later = dict(workitem(), **{"00404005": {"vr": "DT", "Value": ["20991231000000"]}})
    harness.service.create(later, uid="1.2.7", actor="t")
    harness.service.create(workitem(), uid="1.2.5", actor="t")
    harness.performer.run_once()
    assert harness.item("1.2.7").state == "SCHEDULED"
    job = harness.queue.claim_next(harness.clock())
    harness.queue.fail(job.id, "PluginError: out of memory", harness.clock())
    harness.performer.run_once()
    item = harness.item("1.2.5")
    reason = ds.value(ds.items(item.dataset, ds.PROGRESS_INFORMATION)[0],
                      ds.REASON_FOR_CANCELLATION)  # fmt: skip
    assert item.state == "CANCELED" and "failed" in reason and "out of memory" in reason
