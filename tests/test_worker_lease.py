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
