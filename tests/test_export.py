"""Export to real peers, with retries driven by an injected clock: DIMSE to dcmtk's
storescp, STOW-RS to a real Orthanc (one that is down at first, one that requires HTTP
basic authentication)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import DestinationSettings, DicomWebDestinationSettings
from node.contract.kinds import file_name
from node.errors import ExportError
from node.export.dimse import echo, send_files
from node.export.exporter import Exporter, retry_delay
from node.state.jobs import JobQueue
from tests.support.dcmtk import StoreSCP
from tests.support.jobs import job_with_results
from tests.support.net import free_port, free_ports
from tools.orthanc import OrthancServer
from tools.orthanc_rest import lookup_study
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


@pytest.fixture(scope="module")
def result_files(tmp_path_factory) -> list[Path]:
    datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, seed=5)
    return write_series(datasets[:3], tmp_path_factory.mktemp("results"))


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def storescp_factory(tmp_path) -> Iterator:
    started: list[StoreSCP] = []

    def start(port: int) -> StoreSCP:
        started.append(StoreSCP(port, tmp_path / f"received-{len(started)}"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def destination(port: int, **overrides) -> DestinationSettings:
    values = {"ae_title": "PACS", "host": "127.0.0.1", "port": port, "timeout_seconds": 5}
    values.update(overrides)
    return DestinationSettings(**values)


def test_send_files_and_echo(port, storescp_factory, result_files):
    scp = storescp_factory(port)
    assert echo(destination(port), calling_ae="AINODE") == 0
    send_files(destination(port), result_files, calling_ae="AINODE")
    assert len(scp.received()) == len(result_files)


def test_unreachable_destination_raises_export_error(port, result_files):
    with pytest.raises(ExportError, match=f"PACS@127.0.0.1:{port}"):
        send_files(destination(port), result_files, calling_ae="AINODE")


def test_down_destination_is_retried_with_backoff_then_delivered(
    database, clock, port, storescp_factory, result_files
):
    queue = JobQueue(database)
    settings = {"pacs": destination(port, backoff_seconds=2, max_attempts=5)}
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent)

    assert exporter.run_once()  # attempt 1: nobody listens
    job = queue.get(job_id)
    assert job.state == "exporting" and job.next_attempt_at == clock() + 2
    assert "PACS@127.0.0.1" in job.error
    assert not exporter.run_once()  # not due yet
    clock.advance(2)
    assert exporter.run_once()  # attempt 2 fails too: the delay doubles
    assert queue.get(job_id).next_attempt_at == clock() + 4

    scp = storescp_factory(port)
    clock.advance(4)
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "done" and job.error is None
    assert len(scp.received()) == len(result_files)
    events = [e.event for e in queue.events(job_id)]
    assert events.count("export_retry_scheduled") == 2 and events[-2:] == ["sent", "done"]


def test_attempts_are_bounded_and_results_stay_on_disk(database, clock, port, result_files):
    queue = JobQueue(database)
    settings = {"pacs": destination(port, backoff_seconds=1, max_attempts=2)}
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent)
    exporter.run_once()
    clock.advance(1)
    exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "failed"
    assert "after 2 attempts" in job.error and str(result_files[0].parent) in job.error
    assert all(path.exists() for path in result_files)


def test_a_destination_sent_nothing_fails_the_job_with_the_reason(
    database, clock, port, storescp_factory, result_files, tmp_path
):
    """Issue 11 item 4: a destination whose profile's kinds were all skipped (here: it takes
    SEGs, the routine made only an SR) got 'sent archive (nothing to send)' and a done job.
    The other destination still gets its results; the job fails naming the one that got
    nothing, and keeps it pending (an administrator's retry is for it)."""
    result_dir = tmp_path / "job-1"
    result_dir.mkdir()
    sr_file = result_dir / file_name("sr", "1.2.826.0.1.3680043.8.498.1")
    sr_file.write_bytes(result_files[0].read_bytes())
    scp = storescp_factory(port)
    settings = {
        "viewer": destination(port, results=["sr"]),
        "archive": destination(free_port(), results=["seg"]),
    }
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_dir, destinations=("archive", "viewer"))
    assert exporter.run_once()
    job = queue.get(job_id)
    assert job.state == "failed", job
    assert job.error.startswith("nothing sent to archive (archive: none of the result kinds")
    assert "(seg)" in job.error and job.error.endswith("; sent to viewer")
    assert job.pending_destinations == ("archive",)
    assert len(scp.received()) == 1
    events = [(e.event, e.detail) for e in queue.events(job_id)]
    assert ("sent", "viewer") in events
    assert not any(event == "sent" and "archive" in detail for event, detail in events)
    assert any(event == "not_sent" and detail.startswith("archive:") for event, detail in events)
    assert events[-1][0] == "failed"


def test_retry_delay_is_capped():
    settings = destination(1, backoff_seconds=2, max_backoff_seconds=10)
    assert [retry_delay(settings, n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def web_destination(url: str, **values: Any) -> DicomWebDestinationSettings:
    settings = {"kind": "dicomweb", "url": url, "timeout_seconds": 10, "backoff_seconds": 2}
    return DicomWebDestinationSettings.model_validate({**settings, **values})


def stored_in(pacs: OrthancServer, files: list[Path]) -> int:
    """How many of ``files`` (one study) Orthanc holds."""
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    study_id = lookup_study(pacs.client, study_uid)
    if study_id is None:
        return 0
    return sum(
        len(pacs.client.get_series_id_instances(s["ID"]))
        for s in pacs.client.get_studies_id_series(study_id)
    )


@pytest.mark.slow
def test_down_dicomweb_destination_is_retried_with_backoff_then_delivered(
    database, clock, tmp_path, result_files
):
    """STOW-RS to an Orthanc that is not started yet: each attempt fails at once (no
    hidden client retries), the node's backoff doubles, and once Orthanc runs on that
    port the next attempt delivers."""
    http_port, dicom_port = free_ports(2)
    web = web_destination(f"http://127.0.0.1:{http_port}/dicom-web", max_attempts=5)
    queue = JobQueue(database)
    exporter = Exporter(queue, lambda: {"pacs": web}, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, result_files[0].parent)

    started = time.monotonic()
    assert exporter.run_once()  # attempt 1: connection refused
    assert time.monotonic() - started < 15  # at once: no hidden client retries
    job = queue.get(job_id)
    assert job.state == "exporting" and job.next_attempt_at == clock() + 2
    assert f"STOW-RS to http://127.0.0.1:{http_port}/dicom-web failed" in job.error
    assert not exporter.run_once()  # not due yet
    clock.advance(2)
    assert exporter.run_once()  # attempt 2 fails too: the delay doubles
    assert queue.get(job_id).next_attempt_at == clock() + 4

    with OrthancServer(
        http_port=http_port, dicom_port=dicom_port, workdir=tmp_path / "orthanc"
    ) as pacs:
        clock.advance(4)
        assert exporter.run_once()
        job = queue.get(job_id)
        assert job.state == "done" and job.error is None, job.error
        assert stored_in(pacs, result_files) == len(result_files)
    events = [e.event for e in queue.events(job_id)]
    assert events.count("export_retry_scheduled") == 2 and events[-2:] == ["sent", "done"]


@pytest.mark.slow
def test_dicomweb_destination_with_basic_auth(database, clock, tmp_path, result_files):
    """Orthanc with AuthenticationEnabled: a wrong password fails the attempt with a reason
    that names the refused credentials and schedules a retry; once the destination has
    the right password the retry delivers."""
    with OrthancServer(workdir=tmp_path / "orthanc", credentials=("user", "pass")) as pacs:
        url = f"{pacs.url}/dicom-web"
        wrong = web_destination(url, auth={"type": "basic", "username": "user",
                                           "password": "wrong"})  # fmt: skip
        right = web_destination(url, auth={"type": "basic", "username": "user",
                                           "password": "pass"})  # fmt: skip
        configured = {"pacs": wrong}
        queue = JobQueue(database)
        exporter = Exporter(queue, lambda: configured, calling_ae="AINODE", clock=clock)
        job_id = job_with_results(queue, clock, result_files[0].parent)

        assert exporter.run_once()
        job = queue.get(job_id)
        assert job.state == "exporting" and job.next_attempt_at == clock() + 2
        assert "answered HTTP 401" in job.error
        assert "refused the basic credentials for user 'user'" in job.error
        assert stored_in(pacs, result_files) == 0

        configured["pacs"] = right  # the operator corrects the password
        clock.advance(2)
        assert exporter.run_once()
        job = queue.get(job_id)
        assert job.state == "done" and job.error is None, job.error
        assert stored_in(pacs, result_files) == len(result_files)
        events = [e.event for e in queue.events(job_id)]
        assert events.count("export_retry_scheduled") == 1 and events[-2:] == ["sent", "done"]
