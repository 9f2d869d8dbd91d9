"""Finished jobs written into a state database the way the worker and exporter write
them (claim by a worker of a device, timed events, results written, done)."""

from __future__ import annotations

from pathlib import Path

from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.series import InstanceRecord, SeriesStore
from tests.conftest import FakeClock
from tests.support.jobs import enqueue_job

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def receive_series(series: SeriesStore, clock: FakeClock, series_uid: str, instances: int) -> None:
    """Record ``instances`` instances of ``series_uid``, one per second, and complete it."""
    for number in range(instances):
        if number:
            clock.advance(1.0)
        record = InstanceRecord(
            f"{series_uid}.{number}", series_uid, "1.2.3", CT_IMAGE, EXPLICIT_LE, Path("/x"), 1
        )
        series.record_instance(record, clock())
    series.force_complete(series_uid, clock())


def finished_job(
    queue: JobQueue,
    series: SeriesStore,
    clock: FakeClock,
    *,
    series_uid: str,
    instances: int,
    run_seconds: float,
    export_seconds: float = 0.0,
    plugin: str = "ct_lungs",
    device: str = "cpu",
    wait_seconds: float = 0.0,
    prefetched: bool = False,
) -> int:
    """A job that waited, ran for ``run_seconds`` on a worker of ``device`` (load, infer and
    encode a third each) and exported for ``export_seconds``; return its id."""
    receive_series(series, clock, series_uid, instances)
    job_id = enqueue_job(
        queue, clock(), series_uid=series_uid, plugin=plugin, destinations=["pacs"]
    )
    clock.advance(wait_seconds)
    owner = f"host:1:worker-{device}"
    claimed = queue.claim_next(clock(), owner=owner)
    assert claimed is not None and claimed.id == job_id
    third = run_seconds / 3
    clock.advance(third)
    loaded = f"slices={instances} seconds={third:.3f} prefetched={prefetched}"
    queue.add_event(job_id, clock(), EventCode.VOLUME_LOADED, loaded)
    for code in (EventCode.INFERENCE_DONE, EventCode.RESULTS_ENCODED):
        clock.advance(third)
        queue.add_event(job_id, clock(), code, f"seconds={third:.3f}")
    queue.inference_done(job_id, Path("/results") / str(job_id), clock(), owner=owner)
    clock.advance(export_seconds)
    queue.finish(job_id, clock(), "sent")
    return job_id
