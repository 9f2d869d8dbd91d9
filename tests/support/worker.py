"""The node's job worker on the CPU, set up by hand for tests that run a routine as a job."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydicom.dataset import Dataset

from node.contract.plugin import InferencePlugin
from node.orchestration.registry import PluginRegistry
from node.orchestration.worker import InferenceWorker
from node.state.db import Database
from node.state.jobs import Job, JobQueue
from node.state.series import SeriesStore
from tests.support.jobs import enqueue_series
from tests.support.spool import spool_series


def cpu_worker(
    database: Database,
    plugins: Iterable[type[InferencePlugin]],
    *,
    results_dir: Path,
    clock: Callable[[], float],
    templates_dir: Path | None = None,
    **options: Any,
) -> tuple[SeriesStore, JobQueue, InferenceWorker]:
    """The series table, the job queue and a worker (not started) that runs only ``plugins``;
    ``options`` go to :class:`InferenceWorker` (``prefetch``, ``destinations``, ...)."""
    series = SeriesStore(database)
    queue = JobQueue(database)
    registry = PluginRegistry()
    for plugin in plugins:
        registry.register(plugin)
    worker = InferenceWorker(
        queue,
        series,
        registry,
        device=torch.device("cpu"),
        results_dir=results_dir,
        templates_dir=templates_dir,
        clock=clock,
        **options,
    )
    return series, queue, worker


def run_one_job(
    database: Database,
    clock: Callable[[], float],
    tmp_path: Path,
    datasets: Sequence[Dataset],
    plugin: type[InferencePlugin],
    *,
    rule: str,
    templates_dir: Path | None = None,
) -> Job:
    """Spool ``datasets`` under ``tmp_path``, run ``plugin`` on them as one job without
    destinations (results kept under ``tmp_path / "results"``) and return the job, done."""
    series, queue, worker = cpu_worker(
        database,
        [plugin],
        results_dir=tmp_path / "results",
        clock=clock,
        templates_dir=templates_dir,
        prefetch=False,
    )
    spool_series(series, datasets, tmp_path / "spool", clock())
    job_id = enqueue_series(queue, datasets, rule=rule, plugin=plugin.name, now=clock())
    assert worker.run_once()
    job = queue.get(job_id)
    assert job is not None and job.state == "done", job
    assert job.result_dir is not None
    return job
