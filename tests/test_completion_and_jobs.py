import logging
import threading
import time
from pathlib import Path

import pytest

from node.orchestration.completion import CompletionLoop, CompletionMonitor
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore
from tests.support.jobs import enqueue_job

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends


def record(sop: str, series: str = "1.2.3.1", study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(
        sop_uid=sop,
        series_uid=series,
        study_uid=study,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1",
        path=Path(f"/spool/{sop}.dcm"),
        size=10,
        modality="CT",
        calling_ae="SCANNER",
        called_ae="AINODE",
    )


def monitor(store, clock, completed, quiet=10.0):
    return CompletionMonitor(store, quiet_seconds=quiet, clock=clock, on_complete=completed.append)


def test_series_completes_after_quiet_period(database, clock, caplog):
    caplog.set_level(logging.INFO, logger="node.orchestration.completion")
    store, completed = SeriesStore(database), []
    mon = monitor(store, clock, completed)
    for i in range(3):
        store.record_instance(record(f"1.9.{i}"), clock())
        clock.advance(4)
    assert mon.poll() == []  # last instance 4 s ago
    clock.advance(6)
    rows = mon.poll()
    assert [r.series_uid for r in rows] == ["1.2.3.1"]
    assert rows[0].instance_count == 3 and rows[0].generation == 1
    assert completed == rows
    (line,) = [r.getMessage() for r in caplog.records if "series complete" in r.getMessage()]
    assert "series_uid=1.2.3.1 instances=3 generation=1 quiet_for=10.0s" in line
    clock.advance(100)
    assert mon.poll() == []  # completed once per generation


def test_duplicate_instance_is_stored_once(database, clock):
    store = SeriesStore(database)
    assert store.record_instance(record("1.9.1"), clock()) == (True, False)
    assert store.record_instance(record("1.9.1"), clock()) == (False, False)
    assert store.series("1.2.3.1").instance_count == 1


def test_late_instance_reopens_and_completes_next_generation(database, clock):
    store, completed = SeriesStore(database), []
    mon = monitor(store, clock, completed)
    store.record_instance(record("1.9.1"), clock())
    clock.advance(11)
    mon.poll()
    clock.advance(1)
    assert store.record_instance(record("1.9.2"), clock()) == (True, True)
    assert store.series("1.2.3.1").state == "receiving"
    clock.advance(11)
    (row,) = mon.poll()
    assert row.generation == 2 and row.instance_count == 2
    assert len(completed) == 2


def test_force_complete(database, clock):
    store, completed = SeriesStore(database), []
    mon = monitor(store, clock, completed)
    store.record_instance(record("1.9.1"), clock())
    assert mon.force("1.2.3.1").generation == 1
    assert mon.force("1.2.3.1") is None


def enqueue(queue, clock, rule="chest", destinations=("pacs",), priority=5):
    return enqueue_job(queue, clock(), rule=rule, destinations=destinations, priority=priority)


def test_job_lifecycle_and_timeline(database, clock, tmp_path):
    queue = JobQueue(database)
    job_id = enqueue(queue, clock)
    job = queue.claim_next(clock())
    assert job.id == job_id and job.state == "running" and job.attempts == 1
    assert queue.claim_next(clock()) is None
    job = queue.inference_done(job_id, tmp_path, clock())
    assert job.state == "exporting" and job.pending_destinations == ("pacs",)
    exporting = queue.claim_export(clock())
    assert exporting.export_attempts == 1
    assert queue.claim_export(clock()) is None  # leased
    queue.finish(job_id, clock())
    assert queue.get(job_id).state == "done"
    events = [e.event for e in queue.events(job_id)]
    assert events == ["queued", "started", "results_written", "done"]


def test_job_without_destinations_is_done_after_results(database, clock, tmp_path):
    queue = JobQueue(database)
    job_id = enqueue(queue, clock, destinations=())
    queue.claim_next(clock())
    assert queue.inference_done(job_id, tmp_path, clock()).state == "done"


def test_priority_orders_the_queue(database, clock):
    queue = JobQueue(database)
    low = enqueue(queue, clock, rule="low", priority=7)
    high = enqueue(queue, clock, rule="high", priority=1)
    assert queue.claim_next(clock()).id == high
    assert queue.claim_next(clock()).id == low


def test_failed_job_keeps_its_reason(database, clock):
    queue = JobQueue(database)
    job_id = enqueue(queue, clock)
    queue.claim_next(clock())
    queue.fail(job_id, "InputRejected: only 10 slices", clock())
    job = queue.get(job_id)
    assert job.state == "failed" and job.error == "InputRejected: only 10 slices"
    assert queue.depth()["failed"] == 1


def test_running_jobs_are_requeued_on_restart(database, clock):
    queue = JobQueue(database)
    job_id = enqueue(queue, clock)
    queue.claim_next(clock())
    assert queue.requeue_interrupted(clock()) == [job_id]
    job = queue.claim_next(clock())
    assert job.id == job_id and job.attempts == 2
    assert "requeued" in [e.event for e in queue.events(job_id)]


def test_the_loop_wakes_when_the_next_series_turns_quiet(database, clock):
    """The completion loop sleeps until the first receiving series is due, never longer
    than the poll interval; a series still due after a poll (held back by a bound) and
    an empty store wait the interval."""
    store, completed = SeriesStore(database), []
    loop = CompletionLoop(
        monitor(store, clock, completed, quiet=2.0), poll_seconds=30.0, clock=clock
    )
    loop.run_once()
    assert loop.next_wait() == 30.0  # nothing receiving
    store.record_instance(record("1.9.1"), clock())
    clock.advance(0.5)
    loop.run_once()
    assert loop.next_wait() == 1.5
    store.record_instance(record("1.9.2", series="1.2.3.2"), clock())
    store.hold(["1.2.3.2"], clock() + 10.0, "sender cut off")
    clock.advance(1.5)
    loop.run_once()
    assert [row.series_uid for row in completed] == ["1.2.3.1"]
    assert loop.next_wait() == 8.5  # the held series: its hold ends 10 s after it began


def test_a_series_completes_at_its_quiet_time_not_the_next_poll(database):
    """Real clock, a 60 s poll interval: the series is handed on right after its 0.3 s
    quiet period (a wake-up at the deadline), not a minute later."""
    store = SeriesStore(database)
    done = threading.Event()
    mon = CompletionMonitor(
        store, quiet_seconds=0.3, clock=time.time, on_complete=lambda row: done.set()
    )
    loop = CompletionLoop(mon, poll_seconds=60.0, clock=time.time)
    store.record_instance(record("1.9.1"), time.time())
    loop.start()  # its first poll finds the series not yet quiet
    try:
        assert done.wait(20.0)
    finally:
        loop.stop()


def test_a_job_being_sent_is_not_taken_for_one_waiting_in_backoff(database, clock, tmp_path):
    """The export lease is not a backoff: a probe of the destination must not 'release' a
    job whose first send is in progress (nor let a second attempt start beside it)."""
    queue = JobQueue(database)
    job_id = enqueue(queue, clock)
    queue.claim_next(clock())
    queue.inference_done(job_id, tmp_path, clock())
    assert queue.claim_export(clock()) is not None  # the send is in progress
    assert queue.waiting_destinations(clock()) == set()
    assert queue.release_waiting("pacs", clock(), "pacs answered the probe") == []
    assert queue.claim_export(clock()) is None
    # A failed attempt puts the job in backoff: now it waits for the destination.
    queue.export_progress(job_id, ["pacs"], clock(), retry_at=clock() + 60, error="refused")
    assert queue.waiting_destinations(clock()) == {"pacs"}
    assert queue.release_waiting("pacs", clock(), "pacs answered the probe") == [job_id]
    assert queue.claim_export(clock()) is not None
    events = [e.event for e in queue.events(job_id)]
    assert events.count("export_released") == 1
