"""The worker holds its running job under a lease it renews, and ends it with the outcome."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from node.contract.plugin import Accepts, InferencePlugin, Prediction, RunContext
from node.contract.volume import Volume
from node.state.db import Database
from node.state.events import EventCode
from node.state.jobs import JobQueue
from tests.support.jobs import enqueue_series
from tests.support.spool import spool_series
from tests.support.worker import cpu_worker
from tools.synthetic.chest_ct import make_chest_ct

# Every store test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.state_backends

LEASE_SECONDS = 0.3


class SlowWatcher(InferencePlugin):
    """Runs for five lease lengths; meanwhile another owner tries to take the job."""

    name = "slow_watcher"
    version = "1.0"
    template = "ct_lungs"
    accepts = Accepts(min_slices=10)
    queue: ClassVar[JobQueue]
    seen: ClassVar[list[tuple[str | None, float | None, bool]]] = []

    def load(self, device: torch.device) -> None:
        pass

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        ends = time.time() + 5 * LEASE_SECONDS
        while time.time() < ends:
            (job,) = self.queue.jobs(state="running")
            taken = self.queue.claim_next(time.time(), "another-process") is not None
            self.seen.append((job.owner, job.lease_expires_at, taken))
            time.sleep(LEASE_SECONDS / 4)
        return Prediction(label_map=(volume.array > 0).astype(np.uint8))


def test_a_running_job_keeps_its_lease_until_recorded(database: Database, tmp_path: Path) -> None:
    series, queue, worker = cpu_worker(
        database, [SlowWatcher], results_dir=tmp_path / "results", clock=time.time, prefetch=False
    )
    queue.lease_seconds = LEASE_SECONDS
    SlowWatcher.queue, SlowWatcher.seen = queue, []
    datasets, _ = make_chest_ct(n_slices=12, rows=32, columns=32, pixel_spacing_mm=8.0)
    spool_series(series, datasets, tmp_path / "spool", time.time())
    job_id = enqueue_series(queue, datasets, rule="r", plugin=SlowWatcher.name, now=time.time())

    started = time.time()
    assert worker.run_once()

    owners = {owner for owner, _, _ in SlowWatcher.seen}
    assert owners == {worker.owner} and worker.owner.endswith(":worker-cpu")
    assert not any(taken for _, _, taken in SlowWatcher.seen)  # never taken over
    leases = [lease for _, lease, _ in SlowWatcher.seen]
    assert leases[-1] is not None and leases[-1] > started + 3 * LEASE_SECONDS  # renewed
    job = queue.get(job_id)
    assert job is not None and job.state == "done", job
    assert job.owner is None and job.lease_expires_at is None
    codes = [e.code for e in queue.events(job_id)]
    assert EventCode.JOB_LEASE_EXPIRED not in codes


class Overtaken(InferencePlugin):
    """While it runs, its lease lapses and another node takes the job and starts writing
    into the job's result directory (a result file and a temporary file)."""

    name = "overtaken"
    version = "1.0"
    template = "ct_lungs"
    accepts = Accepts(min_slices=10)
    database: ClassVar[Database]
    queue: ClassVar[JobQueue]
    result_dir: ClassVar[Path]
    ran_on: ClassVar[list[bool]] = []

    def load(self, device: torch.device) -> None:
        pass

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        with self.database.transaction() as cursor:  # the holder is slow: its lease lapses
            cursor.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (context.job_id,))
        taken = self.queue.claim_next(time.time(), "other-node")
        assert taken is not None and taken.id == context.job_id
        self.result_dir.mkdir(parents=True)
        (self.result_dir / "SEG_other.dcm").write_bytes(b"the new holder's")
        (self.result_dir / ".SR_other.dcm.tmp").write_bytes(b"being written")
        time.sleep(4 * LEASE_SECONDS)  # the old holder's keeper finds the lease lost
        self.ran_on.append(True)
        return Prediction(label_map=(volume.array > 0).astype(np.uint8))


def test_a_worker_that_lost_its_lease_stops_and_records_nothing(
    database: Database, tmp_path: Path
) -> None:
    series, queue, worker = cpu_worker(
        database, [Overtaken], results_dir=tmp_path / "results", clock=time.time, prefetch=False
    )
    queue.lease_seconds = LEASE_SECONDS
    datasets, _ = make_chest_ct(n_slices=12, rows=32, columns=32, pixel_spacing_mm=8.0)
    spool_series(series, datasets, tmp_path / "spool", time.time())
    job_id = enqueue_series(queue, datasets, rule="r", plugin=Overtaken.name, now=time.time())
    result_dir = (
        tmp_path / "results" / datasets[0].StudyInstanceUID / datasets[0].SeriesInstanceUID
    ) / f"job-{job_id}"
    Overtaken.database, Overtaken.queue, Overtaken.result_dir = database, queue, result_dir
    Overtaken.ran_on = []

    assert worker.run_once()

    assert Overtaken.ran_on == [True]
    job = queue.get(job_id)  # still the new holder's, running
    assert job is not None and job.state == "running" and job.owner == "other-node", job
    codes = [e.code for e in queue.events(job_id)]
    started = codes.index(EventCode.JOB_LEASE_EXPIRED)  # the new holder's claim
    assert codes[started + 1 :] == [EventCode.JOB_STARTED, EventCode.JOB_LEASE_LOST], codes
    assert EventCode.INFERENCE_DONE not in codes and EventCode.RESULTS_ENCODED not in codes
    # The new holder's files are untouched; the old holder left nothing behind.
    assert sorted(p.name for p in result_dir.iterdir()) == [".SR_other.dcm.tmp", "SEG_other.dcm"]
    assert (result_dir / "SEG_other.dcm").read_bytes() == b"the new holder's"
    assert sorted(p.name for p in result_dir.parent.iterdir()) == [f"job-{job_id}"]
