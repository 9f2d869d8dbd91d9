"""Claim-with-lease (node/state/lease.py) over a real SQLite file, across processes."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.state.db import Database
from node.state.events import EventCode
from node.state.jobs import JOB_LEASE, JobQueue
from node.state.lease import candidates_sql
from node.state.pulls import PullStore

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

T0 = 1_700_000_000.0

# A claimer in its own process: claims until the table is empty, prints what it got.
CLAIMER = """
import json, sys, time
from pathlib import Path
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.pulls import PullStore

path, table, owner, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
db = Database(Path(path))
store = JobQueue(db, lease_seconds=3600) if table == "jobs" else PullStore(db, lease_seconds=3600)
while time.time() < start:  # both processes begin together
    time.sleep(0.001)
claimed = []
while True:
    row = store.claim_next(0.0 + 1_700_000_000, owner) if table == "jobs" else store.claim(
        1_700_000_000.0, owner)
    if row is None:
        break
    assert row.owner == owner
    claimed.append(row.id)
    time.sleep(0.002)  # a little work, so the two claimers interleave
print(json.dumps(claimed))
"""

# A worker that claims one job, renews its lease for a while, then sleeps (killed by the test).
HOLDER = """
import sys, time
from pathlib import Path
from node.state.db import Database
from node.state.jobs import JobQueue
from node.state.lease import owner_name

db = Database(Path(sys.argv[1]))
queue = JobQueue(db, lease_seconds=float(sys.argv[2]))
job = queue.claim_next(time.time(), owner_name("held"))  # this host, this (live) pid
print(job.id, flush=True)
with queue.keep_lease(job, time.time).held():
    time.sleep(600)
"""


def _enqueue(queue: JobQueue, n: int, now: float = T0) -> list[int]:
    return [
        queue.enqueue(
            series_uid=f"1.2.{i}",
            study_uid="1.2",
            generation=1,
            rule="r",
            plugin="p",
            destinations=[],
            priority=i % 3,
            now=now,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("table", ["jobs", "pulls"])
def test_two_processes_claim_every_row_exactly_once(tmp_path: Path, table: str) -> None:
    path = tmp_path / "state.sqlite3"
    db = Database(path)
    if table == "jobs":
        ids = _enqueue(JobQueue(db), 60)
    else:
        pulls = PullStore(db)
        ids = [
            pulls.add(
                source="pacs", study_uid=f"1.{i}", series_uid=None, rule=None, origin="api", now=T0
            ).id
            for i in range(60)
        ]
    db.close()
    start = time.time() + 1.5
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), table, f"owner-{n}", str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in claimers]
    assert all(p.returncode == 0 for p in claimers)
    assert all(results)  # both took part
    claimed = results[0] + results[1]
    assert sorted(claimed) == sorted(ids)  # every row once: none twice, none missed
    assert len(set(claimed)) == len(claimed)


def test_an_expired_lease_is_reclaimed_by_another_owner(database: Database) -> None:
    queue = JobQueue(database, lease_seconds=60)
    (job_id,) = _enqueue(queue, 1)
    first = queue.claim_next(T0, "host-a:1:worker-cpu")
    assert first is not None and first.owner == "host-a:1:worker-cpu"
    assert first.lease_expires_at == T0 + 60
    assert queue.claim_next(T0 + 59, "host-b:2:worker-cpu") is None  # still held
    taken = queue.claim_next(T0 + 61, "host-b:2:worker-cpu")
    assert taken is not None and taken.id == job_id
    assert taken.owner == "host-b:2:worker-cpu" and taken.attempts == 2
    events = queue.events(job_id)
    assert [e.code for e in events][-2:] == [EventCode.JOB_LEASE_EXPIRED, EventCode.JOB_STARTED]
    assert "host-a:1:worker-cpu" in events[-2].detail
    # The first owner has lost it: its renewal fails and does not extend the new lease.
    assert not queue.renew_lease(job_id, "host-a:1:worker-cpu", T0 + 62)
    assert queue.get(job_id).lease_expires_at == T0 + 61 + 60  # type: ignore[union-attr]


def test_a_claim_never_starts_a_job_before_it_was_queued(database: Database) -> None:
    """A worker reads its clock, then waits for the database while the dispatcher queues a
    job: the job's start is the moment it was queued, not the earlier reading."""
    queue = JobQueue(database, lease_seconds=60)
    (job_id,) = _enqueue(queue, 1, now=T0 + 5)
    job = queue.claim_next(T0, "late-reader")
    assert job is not None and job.started_at == T0 + 5 and job.updated_at == T0 + 5
    events = [(e.code, e.at) for e in queue.events(job_id)]
    assert events == [(EventCode.JOB_QUEUED, T0 + 5), (EventCode.JOB_STARTED, T0 + 5)]
    (later_id,) = _enqueue(queue, 1, now=T0 + 6)
    later = queue.claim_next(T0 + 7, "on-time")  # a reading after the queueing is kept
    assert later is not None and later.id == later_id and later.started_at == T0 + 7
    assert queue.events(later_id)[-1].at == T0 + 7


def test_a_renewing_owner_keeps_its_job(database: Database) -> None:
    queue = JobQueue(database, lease_seconds=60)
    (job_id,) = _enqueue(queue, 1)
    queue.claim_next(T0, "a")
    for minute in range(1, 6):  # renewed every 50 s, for five minutes
        assert queue.renew_lease(job_id, "a", T0 + minute * 50)
        assert queue.claim_next(T0 + minute * 50 + 30, "b") is None
    job = queue.get(job_id)
    assert job is not None and job.owner == "a" and job.state == "running"


def test_recording_the_outcome_ends_the_lease(database: Database, tmp_path: Path) -> None:
    queue = JobQueue(database, lease_seconds=60)
    done_id, failed_id = _enqueue(queue, 2)
    queue.claim_next(T0, "a")
    queue.claim_next(T0, "a")
    queue.inference_done(done_id, tmp_path, T0 + 1)
    queue.fail(failed_id, "RuntimeError: boom", T0 + 1)
    for job_id in (done_id, failed_id):
        job = queue.get(job_id)
        assert job is not None and job.owner is None and job.lease_expires_at is None
    # Neither comes back once the lease time has passed.
    assert queue.claim_next(T0 + 3600, "b") is None


def test_a_pull_lease_expires_and_is_taken_over(database: Database) -> None:
    pulls = PullStore(database, lease_seconds=30)
    pull = pulls.add(
        source="pacs", study_uid="1.2", series_uid=None, rule=None, origin="api", now=T0
    )
    assert pulls.claim(T0, "a") is not None
    assert pulls.claim(T0 + 10, "b") is None
    assert pulls.renew_lease(pull.id, "a", T0 + 20)
    assert pulls.claim(T0 + 45, "b") is None  # renewed until T0 + 50
    taken = pulls.claim(T0 + 51, "b")
    assert taken is not None and taken.owner == "b" and taken.attempts == 2
    pulls.update(pull.id, T0 + 52, state="done")
    assert pulls.get(pull.id).owner is None  # type: ignore[union-attr]


def _wait_for_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_dead_workers_job_comes_back_and_a_live_ones_stays(tmp_path: Path) -> None:
    """A process holds a job and renews its lease (0.6 s); while it lives no other owner
    and no start-up recovery takes the job; once it is killed the lease runs out and the
    job is claimed again."""
    path = tmp_path / "state.sqlite3"
    db = Database(path)
    queue = JobQueue(db, lease_seconds=0.6)
    (job_id,) = _enqueue(queue, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), "0.6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for_line(holder) == str(job_id)
        held = queue.get(job_id)
        assert held is not None and held.owner == f"{socket.gethostname()}:{holder.pid}:held"
        deadline = time.time() + 2.0  # more than three lease lengths
        while time.time() < deadline:
            assert queue.claim_next(time.time(), "other") is None
            time.sleep(0.05)
        # Start-up recovery of a node on this host leaves a live process's job alone.
        assert queue.requeue_interrupted(time.time()) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    time.sleep(0.7)
    taken = queue.claim_next(time.time(), "other")
    assert taken is not None and taken.id == job_id and taken.owner == "other"
    db.close()


def test_start_up_requeues_a_job_whose_process_is_gone(database: Database) -> None:
    queue = JobQueue(database, lease_seconds=3600)
    (job_id,) = _enqueue(queue, 1)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    queue.claim_next(T0, f"{socket.gethostname()}:{gone}:worker-cpu")
    assert queue.requeue_interrupted(T0 + 1) == [job_id]
    job = queue.get(job_id)
    assert job is not None and job.state == "queued" and job.owner is None


def test_a_worker_that_lost_its_lease_records_no_outcome(
    database: Database, tmp_path: Path
) -> None:
    """The first worker comes back after its lease ran out and another took the job: its
    results, failure or skip leave an event but not the state (a job never claims more
    than happened); the new holder's outcome is recorded."""
    queue = JobQueue(database, lease_seconds=60)
    (job_id,) = _enqueue(queue, 1)
    queue.claim_next(T0, "a")
    queue.claim_next(T0 + 61, "b")
    after = queue.inference_done(job_id, tmp_path / "a", T0 + 62, owner="a")
    assert after.state == "running" and after.owner == "b" and after.result_dir is None
    queue.fail(job_id, "RuntimeError: late", T0 + 63, owner="a")
    queue.skip(job_id, "late", T0 + 64, source="quality", checks=[], owner="a")
    job = queue.get(job_id)
    assert job is not None and job.state == "running" and job.owner == "b"
    lost = [e.detail for e in queue.events(job_id) if e.code == EventCode.JOB_LEASE_LOST]
    assert len(lost) == 3 and all(d.startswith("a lost its lease to b") for d in lost)
    done = queue.inference_done(job_id, tmp_path / "b", T0 + 65, owner="b")
    assert done.state == "done" and done.result_dir == tmp_path / "b" and done.owner is None


def _claim_query_steps(tmp_path: Path, queued: int) -> int:
    """SQLite VM steps of the claim query over ``queued`` waiting jobs (half urgent) and as
    many running ones under a live lease."""
    path = tmp_path / f"steps-{queued}.sqlite3"
    db = Database(path)
    queue = JobQueue(db, lease_seconds=3600)
    _enqueue(queue, 2 * queued)
    for _ in range(queued):
        queue.claim_next(T0, "holder")
    db.close()
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with sqlite3.connect(path) as connection:
        connection.set_progress_handler(count, 1)
        connection.execute(
            candidates_sql(JOB_LEASE), JOB_LEASE.claimable_parameters(T0 + 1)
        ).fetchall()
    return steps


def test_a_claim_does_not_read_every_waiting_or_running_row(tmp_path: Path) -> None:
    """Found through the (state, priority, id) and (state, lease_expires_at) indexes, the
    claim's work does not grow with the table. (One query with an OR of the waiting and
    expired conditions sorted every waiting row: 1.5-2.7 ms per claim at 2,000 jobs.)"""
    small, large = _claim_query_steps(tmp_path, 10), _claim_query_steps(tmp_path, 1000)
    assert large < 2 * small, (small, large)
