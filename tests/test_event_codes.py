"""Job events carry an EventCode; metrics count codes, never the wording of a detail."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import DestinationSettings
from node.export.exporter import Exporter
from node.state.db import Database
from node.state.events import EVENT_NAMES, EventCode
from node.state.jobs import JobQueue
from node.state.metrics import MetricsQueries
from tests.support.jobs import job_with_results
from tests.support.net import free_port
from tools.synthetic.chest_ct import make_chest_ct, write_series

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


def test_every_code_has_an_event_name() -> None:
    assert set(EVENT_NAMES) == set(EventCode)
    assert all(code.event for code in EventCode)


def test_an_export_failure_counts_whatever_its_wording(database: Database, clock, tmp_path) -> None:
    """The exporter gives up on a destination where nothing listens (real DIMSE): one retry
    and one final failure count. A final failure recorded with other wording still counts;
    a job failure whose text merely starts like one does not."""
    datasets, _ = make_chest_ct(n_slices=20, rows=64, columns=64, seed=5)
    results = write_series(datasets[:2], tmp_path / "results")[0].parent
    queue = JobQueue(database)
    settings = {
        "pacs": DestinationSettings(
            ae_title="PACS",
            host="127.0.0.1",
            port=free_port(),
            timeout_seconds=5,
            backoff_seconds=1,
            max_attempts=2,
        )
    }
    exporter = Exporter(queue, lambda: settings, calling_ae="AINODE", clock=clock)
    job_id = job_with_results(queue, clock, results)
    metrics = MetricsQueries(database)
    assert metrics.export_failures() == 0
    exporter.run_once()
    clock.advance(1)
    exporter.run_once()
    job = queue.get(job_id)
    assert job is not None and job.state == "failed"
    codes = [e.code for e in queue.events(job_id)]
    assert codes.count(EventCode.EXPORT_RETRY) == 1 and codes[-1] == EventCode.EXPORT_FAILED
    assert metrics.export_failures() == 2

    reworded = job_with_results(queue, clock, results)
    queue.fail(reworded, "the archive kept refusing", clock(), code=EventCode.EXPORT_FAILED)
    assert metrics.export_failures() == 3
    lookalike = job_with_results(queue, clock, results)
    queue.fail(lookalike, "export failed? no: RuntimeError in the routine", clock())
    assert metrics.export_failures() == 3


def test_every_recorded_event_has_a_code(database: Database, clock, tmp_path: Path) -> None:
    queue = JobQueue(database)
    job_id = job_with_results(queue, clock, tmp_path)
    queue.add_event(job_id, clock(), EventCode.EXPORT_SENT, "pacs")
    queue.finish(job_id, clock(), "sent to pacs")
    queue.retry(job_id, clock(), by="admin")
    queue.cancel(job_id, clock(), by="admin")
    rows = database.query("SELECT event, code FROM job_events ORDER BY id")
    assert rows and all(row["code"] for row in rows)
    assert all(EventCode(row["code"]).event == row["event"] for row in rows)
