"""Jobs put into a node's queue by hand, the way the completion monitor and the worker would."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.state.jobs import JobQueue


def enqueue_job(
    queue: JobQueue,
    now: float,
    *,
    series_uid: str = "1.2.3.1",
    study_uid: str = "1.2.3",
    rule: str = "chest",
    plugin: str = "ct_lungs",
    destinations: Sequence[str] = (),
    priority: int = 5,
    shadow: bool = False,
) -> int:
    """Queue a job for generation 1 of a series; return its id."""
    return queue.enqueue(
        series_uid=series_uid,
        study_uid=study_uid,
        generation=1,
        rule=rule,
        plugin=plugin,
        destinations=list(destinations),
        priority=priority,
        now=now,
        shadow=shadow,
    )


def enqueue_series(
    queue: JobQueue,
    datasets: Sequence[Dataset],
    *,
    rule: str,
    plugin: str,
    now: float,
    destinations: Sequence[str] = (),
) -> int:
    """Queue a job (generation 1, priority 5) for the series of ``datasets``; return its id."""
    return enqueue_job(
        queue,
        now,
        series_uid=str(datasets[0].SeriesInstanceUID),
        study_uid=str(datasets[0].StudyInstanceUID),
        rule=rule,
        plugin=plugin,
        destinations=destinations,
    )


def job_with_results(
    queue: JobQueue,
    clock: Callable[[], float],
    result_dir: Path,
    *,
    destinations: Sequence[str] = ("pacs",),
    **job: Any,
) -> int:
    """Queue a job (``job``: what :func:`enqueue_job` takes), claim it and record its results
    as written to ``result_dir``, as the worker does; return its id."""
    job_id = enqueue_job(queue, clock(), destinations=destinations, **job)
    queue.claim_next(clock())
    queue.inference_done(job_id, result_dir, clock())
    return job_id
