"""Issue 11 item 13: a destination that is down is retried for hours, and one that comes
back releases the jobs waiting for it at once (a probe answers, or it accepts a send)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from node.config import DestinationSettings, DicomWebDestinationSettings, settings_from_mapping
from node.export.exporter import Exporter, RecoveryProbe, retry_delay
from node.state.destinations import DestinationStore
from node.state.jobs import JobQueue
from tests.support.dcmtk import StoreSCP, storescu
from tests.support.jobs import job_with_results
from tests.support.net import free_port, free_ports, wait_until
from tools.net import LOCALHOST
from tools.node_process import NodeProcess
from tools.orthanc import OrthancServer
from tools.orthanc_rest import wait_for_series
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

HOUR = 3600.0


@pytest.fixture(scope="module")
def result_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, seed=5)
    return write_series(datasets[:2], tmp_path_factory.mktemp("results"))


def pacs(port: int, **values: object) -> DestinationSettings:
    return DestinationSettings.model_validate(
        {"ae_title": "PACS", "host": LOCALHOST, "port": port, "timeout_seconds": 5, **values}
    )


def test_default_retry_budget_is_a_day() -> None:
    for destination in (
        pacs(104),
        DicomWebDestinationSettings.model_validate({"kind": "dicomweb", "url": "http://p/"}),
        settings_from_mapping(
            {"destinations": {"p": {"ae_title": "P", "host": "h", "port": 104}}}, environ={}
        ).destinations["p"],
    ):
        assert destination.max_attempts is None
        assert destination.give_up_after_seconds == 24 * HOUR
        assert retry_delay(destination, 1) == 2
        assert retry_delay(destination, 30) == 600  # ten minutes apart at most
        assert destination.probe_seconds == 30


@pytest.mark.slow  # ~150 refused associations: ~15 s
def test_default_destination_down_is_retried_for_a_day_then_fails(
    database, clock, result_files
) -> None:
    """Real refused connections, the default settings, a clock moved to each retry: the
    job still waits after the old ~30 s budget and after 23 h, and fails near 24 h."""
    queue = JobQueue(database)
    settings = {"pacs": pacs(free_port())}
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent)
    start = clock()
    checked: set[float] = set()
    while (job := queue.get(job_id)).state == "exporting":
        assert job.next_attempt_at is not None
        clock.advance(max(0.0, job.next_attempt_at - clock()))
        assert exporter.run_once()
        waited = clock() - start
        for mark in (31.0, 23 * HOUR):
            if waited > mark and mark not in checked and queue.get(job_id).state == "exporting":
                checked.add(mark)
    assert checked == {31.0, 23 * HOUR}
    assert job.state == "failed"
    assert 23.8 * HOUR < clock() - start <= 24 * HOUR
    assert re.search(r"export failed after \d+ attempts in 2[34]\.\d h: pacs: ", job.error)
    waiting = [e.detail for e in queue.events(job_id) if e.event == "export_retry_scheduled"]
    assert waiting[0].startswith("waiting for pacs: pacs: association with PACS@")
    assert "attempt 1 failed, next attempt in 2 s" in waiting[0]
    assert "next attempt in 10 min" in waiting[-1]


def test_old_stored_default_retry_settings_get_the_day_budget(database, clock) -> None:
    """Definitions are stored with every field, so destinations saved by an older node hold
    its 5-attempt default; start-up gives them the day. Chosen values stay."""
    old = {"max_attempts": 5, "backoff_seconds": 2.0, "max_backoff_seconds": 300.0}
    chosen = {"max_attempts": 3, "backoff_seconds": 2.0, "max_backoff_seconds": 300.0}
    with database.transaction() as cursor:
        for name, retry in (("old", old), ("chosen", chosen)):
            definition = {"ae_title": "P", "host": "h", "port": 104, "results": ["seg"], **retry}
            cursor.execute(
                "INSERT INTO destinations (name, definition, updated_at, updated_by)"
                " VALUES (?, ?, 0, 'config')",
                (name, json.dumps(definition)),
            )
    store = DestinationStore(database)
    assert store.upgrade_retry_defaults(clock()) == ["old"]
    assert store.upgrade_retry_defaults(clock()) == []  # once
    upgraded, kept = store.get("old"), store.get("chosen")
    assert upgraded.max_attempts is None and upgraded.give_up_after_seconds == 24 * HOUR
    assert upgraded.max_backoff_seconds == 600 and upgraded.results == ["seg"]
    assert kept.max_attempts == 3 and kept.max_backoff_seconds == 300


def waiting_job(queue: JobQueue, exporter: Exporter, clock, result_dir: Path, series: str) -> int:
    job_id = job_with_results(queue, clock, result_dir, series_uid=series)
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "exporting" and job.next_attempt_at == clock() + 60
    return job_id


def test_a_send_that_succeeds_releases_the_jobs_waiting_for_that_destination(
    database, clock, tmp_path, result_files
) -> None:
    port = free_port()
    settings = {"pacs": pacs(port, backoff_seconds=60)}
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    directory = result_files[0].parent
    first = waiting_job(queue, exporter, clock, directory, "1.2.3.1")
    second = waiting_job(queue, exporter, clock, directory, "1.2.3.2")
    scp = StoreSCP(port, tmp_path / "received")
    try:
        third = job_with_results(queue, clock, directory, series_uid="1.2.3.3")
        assert exporter.run_once()  # the third job is due and delivered ...
        assert queue.get(third).state == "done"
        for job_id in (first, second):  # ... and the waiting ones are due now
            assert queue.get(job_id).next_attempt_at == clock()
            released = [e.detail for e in queue.events(job_id) if e.event == "export_released"]
            assert released == [f"pacs accepted job {third}'s results"]
        assert exporter.run_once() and exporter.run_once()
        assert {queue.get(first).state, queue.get(second).state} == {"done"}
        assert len(scp.received()) == len(result_files)  # the same instances, three times
    finally:
        scp.stop()


def test_a_probe_that_answers_releases_the_waiting_jobs(
    database, clock, tmp_path, result_files
) -> None:
    port = free_port()
    settings = {"pacs": pacs(port, backoff_seconds=60, probe_seconds=5)}
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    monotonic = [0.0]
    woken = []
    probe = RecoveryProbe(
        queue,
        lambda: settings,
        calling_ae="AINODE",
        clock=clock,
        on_release=lambda: woken.append(True),
        monotonic=lambda: monotonic[0],
    )
    job_id = waiting_job(queue, exporter, clock, result_files[0].parent, "1.2.3.1")
    probe.run_once()  # down: nothing released
    assert queue.get(job_id).next_attempt_at == clock() + 60 and not woken
    scp = StoreSCP(port, tmp_path / "received")
    try:
        monotonic[0] = 4.0
        probe.run_once()  # up, but probed 4 s ago: not yet
        assert queue.get(job_id).next_attempt_at == clock() + 60
        monotonic[0] = 5.0
        probe.run_once()
        assert queue.get(job_id).next_attempt_at == clock() and woken
        assert exporter.run_once()
        assert queue.get(job_id).state == "done"
        assert len(scp.received()) == len(result_files)
    finally:
        scp.stop()
    events = [(e.event, e.detail) for e in queue.events(job_id)]
    assert ("export_released", "pacs answered the probe") in events


def job_rows(node: NodeProcess) -> list[sqlite3.Row]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute("SELECT * FROM jobs ORDER BY id"))


def job_event_rows(node: NodeProcess, job_id: int) -> list[tuple[str, str, float]]:
    with sqlite3.connect(node.data_dir / "state.sqlite3") as db:
        query = "SELECT event, detail, at FROM job_events WHERE job_id = ? ORDER BY id"
        return list(db.execute(query, (job_id,)))


@pytest.mark.slow
def test_pacs_down_longer_than_the_old_budget_gets_the_results_when_it_returns(
    tmp_path: Path,
) -> None:
    """A real node with the default retry settings (probe every second instead of 30)
    and a real Orthanc that is down: the job waits past the old ~30 s budget, saying why
    and when it tries next; Orthanc starts, and the results are there within seconds,
    long before the next backoff attempt."""
    http_port, dicom_port = free_ports(2)
    config = {
        "completion": {"series_quiet_seconds": 1.0, "poll_seconds": 0.2},
        "destinations": {
            "pacs": {
                "ae_title": "ORTHANC",
                "host": LOCALHOST,
                "port": dicom_port,
                "probe_seconds": 1,
                "timeout_seconds": 5,
            },
        },
        "rules": [
            {
                "name": "chest",
                "match": {"Modality": "CT"},
                "plugin": "ct_lungs",
                "send_to": ["pacs"],
            },
        ],
    }
    datasets, _ = make_chest_ct(n_slices=24, rows=128, columns=128, pixel_spacing_mm=3.0, seed=7)
    files = write_series(datasets, tmp_path / "series")
    with NodeProcess(config, workdir=tmp_path / "node") as node:
        storescu(node.dicom_port, files, called_ae=node.ae_title)
        wait_until(
            lambda: bool(rows := job_rows(node)) and rows[0]["export_attempts"] >= 1,
            120,
            message="first export attempt",
        )
        (job,) = job_rows(node)
        written = next(
            at for event, _, at in job_event_rows(node, job["id"]) if event == "results_written"
        )
        # Past the old budget (5 attempts from 2 s: failed after ~30 s).
        wait_until(lambda: time.time() > written + 34, 60, message="old budget over")
        (job,) = job_rows(node)
        assert job["state"] == "exporting", job["error"]
        assert job["export_attempts"] >= 5 and "association with ORTHANC@" in job["error"]
        scheduled = [d for e, d, _ in job_event_rows(node, job["id"]) if e.startswith("export_r")]
        assert scheduled[-1].startswith("waiting for pacs: pacs: association with ORTHANC@")
        assert "next attempt in 32 s" in scheduled[-1]
        next_attempt = job["next_attempt_at"]
        starting = time.time()
        with OrthancServer(
            http_port=http_port, dicom_port=dicom_port, workdir=tmp_path / "orthanc"
        ) as orthanc:
            up = time.time()
            wait_until(lambda: job_rows(node)[0]["state"] == "done", 30, message="job done")
            done = job_rows(node)[0]["finished_at"]
            found = wait_for_series(
                orthanc.client, str(datasets[0].StudyInstanceUID), ["SEG", "SR"], 10
            )
        assert set(found) == {"SEG", "SR"}
        # The probe, not the next backoff attempt, sent the results: released once Orthanc
        # answered (its DICOM port opens just before its HTTP one), before that attempt.
        # Done seconds later on an idle machine; 9.8 s was seen at load 15.
        (released,) = [
            at for e, d, at in job_event_rows(node, job["id"])
            if (e, d) == ("export_released", "pacs answered the probe")
        ]  # fmt: skip
        timeline = (starting, up, released, done, next_attempt)
        assert starting < released < next_attempt and done - up < 20, timeline
