"""What the job history says about the node's speed: the durations of finished jobs
(for the queue's ETA), the jobs still to finish, and each finished job's per-stage
seconds (for the dashboard's timeline). One query each; nothing here estimates.

A job's device is its worker's: the ``job.started`` event records the claiming owner
(``host:pid:worker-<device>``, see :func:`node.state.lease.owner_name`). Per-stage
seconds come from the events that time them (``seconds=`` in their detail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.state.connection import Connection
from node.state.events import EventCode

_SECONDS = re.compile(r"(?:^|\s)seconds=([0-9.]+)")
_WORKER = ":worker-"

#: The dashboard's stages, in the order a job goes through them.
STAGES = ("receive", "wait", "load", "infer", "encode", "export")
#: The event that times each stage measured inside the worker.
_TIMED = {
    EventCode.VOLUME_LOADED.value: "load",
    EventCode.INFERENCE_DONE.value: "infer",
    EventCode.RESULTS_ENCODED.value: "encode",
}


def device_of(started_detail: str | None) -> str:
    """The device in a ``job.started`` detail (``owner=host:pid:worker-cuda:0``, with
    ``@node`` after it when the node has a name); '' if none."""
    if not started_detail or _WORKER not in started_detail:
        return ""
    return started_detail.rsplit(_WORKER, 1)[1].split()[0].partition("@")[0]


def seconds_of(detail: str | None) -> float | None:
    """The ``seconds=`` value of a timed event's detail."""
    match = _SECONDS.search(detail or "")
    return float(match.group(1)) if match else None


@dataclass(frozen=True)
class RunSample:
    """One finished job: how long its worker held it and how long its export took."""

    job_id: int
    plugin: str
    device: str
    instances: int
    #: ``job.started`` → ``results.written`` (the worker's time).
    run_seconds: float
    #: ``results.written`` → ``job.done`` (0 with nowhere to send).
    export_seconds: float
    finished_at: float
    #: Of ``run_seconds``, the series' load, and whether it had been read ahead.
    load_seconds: float = 0.0
    prefetched: bool = False

    @property
    def compute_seconds(self) -> float:
        """The worker's time besides loading the series."""
        return max(0.0, self.run_seconds - self.load_seconds)


@dataclass(frozen=True)
class ActiveJob:
    """A job not ended yet, with what its estimate needs."""

    job_id: int
    plugin: str
    state: str
    priority: int
    instances: int
    started_at: float | None
    #: The device of the worker running it (running and exporting jobs).
    device: str
    #: When its results were written (exporting jobs).
    written_at: float | None


@dataclass(frozen=True)
class StageSample:
    """One finished job's seconds per stage (a stage not measured is absent)."""

    job_id: int
    finished_at: float
    seconds: dict[str, float]


def _last(code: EventCode, column: str) -> str:
    return (
        f"(SELECT e.{column} FROM job_events e WHERE e.job_id = j.id AND e.code = '{code.value}'"
        " ORDER BY e.id DESC LIMIT 1)"
    )


class JobHistory:
    """Read-only queries over ``jobs``, ``job_events`` and ``series``."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def run_samples(self, limit: int = 500) -> list[RunSample]:
        """The newest ``limit`` jobs that ended ``done`` with results, newest first."""
        rows = self._db.query(
            "SELECT j.id, j.plugin, j.finished_at, COALESCE(s.instance_count, 0) AS instances,"
            f" {_last(EventCode.JOB_STARTED, 'at')} AS started_at,"
            f" {_last(EventCode.JOB_STARTED, 'detail')} AS started_detail,"
            f" {_last(EventCode.RESULTS_WRITTEN, 'at')} AS written_at,"
            f" {_last(EventCode.VOLUME_LOADED, 'detail')} AS loaded_detail"
            " FROM jobs j LEFT JOIN series s ON s.series_uid = j.series_uid"
            " WHERE j.state = 'done' AND j.finished_at IS NOT NULL"
            " ORDER BY j.finished_at DESC LIMIT ?",
            (limit,),
        )
        samples = []
        for row in rows:
            started, written = row["started_at"], row["written_at"]
            if started is None or written is None or written < started:
                continue  # finished without a run of its own on record (an old node's row)
            samples.append(
                RunSample(
                    job_id=int(row["id"]),
                    plugin=str(row["plugin"]),
                    device=device_of(row["started_detail"]),
                    instances=int(row["instances"]),
                    run_seconds=float(written) - float(started),
                    export_seconds=max(0.0, float(row["finished_at"]) - float(written)),
                    finished_at=float(row["finished_at"]),
                    load_seconds=seconds_of(row["loaded_detail"]) or 0.0,
                    prefetched="prefetched=True" in (row["loaded_detail"] or ""),
                )
            )
        return samples

    def active_jobs(self) -> list[ActiveJob]:
        """Every queued, running and exporting job."""
        rows = self._db.query(
            "SELECT j.id, j.plugin, j.state, j.priority, j.started_at,"
            " COALESCE(s.instance_count, 0) AS instances,"
            f" {_last(EventCode.JOB_STARTED, 'detail')} AS started_detail,"
            f" {_last(EventCode.RESULTS_WRITTEN, 'at')} AS written_at"
            " FROM jobs j LEFT JOIN series s ON s.series_uid = j.series_uid"
            " WHERE j.state IN ('queued', 'running', 'exporting')"
        )
        return [
            ActiveJob(
                job_id=int(row["id"]),
                plugin=str(row["plugin"]),
                state=str(row["state"]),
                priority=int(row["priority"]),
                instances=int(row["instances"]),
                started_at=None if row["started_at"] is None else float(row["started_at"]),
                device=device_of(row["started_detail"]) if row["state"] != "queued" else "",
                written_at=None if row["written_at"] is None else float(row["written_at"]),
            )
            for row in rows
        ]

    def stage_samples(self, since: float) -> list[StageSample]:
        """Per-stage seconds of the jobs that ended ``done`` at or after ``since``.

        receive: the series generation's first to last instance (only when the job is of
        the series' current generation: older ones' receive times are not kept); wait:
        queued → started; load, infer, encode: the worker's timings; export: results
        written → done.
        """
        codes = (
            EventCode.JOB_QUEUED.value,
            EventCode.JOB_STARTED.value,
            EventCode.RESULTS_WRITTEN.value,
            *_TIMED,
        )
        marks = ", ".join("?" for _ in codes)
        rows = self._db.query(
            "SELECT j.id, j.finished_at, j.generation AS job_generation,"
            " s.generation AS series_generation,"
            " COALESCE(s.generation_started, s.first_received) AS first_at,"
            " s.last_received AS last_at, e.code, e.at, e.detail"
            " FROM jobs j JOIN job_events e ON e.job_id = j.id"
            " LEFT JOIN series s ON s.series_uid = j.series_uid"
            f" WHERE j.state = 'done' AND j.finished_at >= ? AND e.code IN ({marks})"
            " ORDER BY j.id, e.id",
            (since, *codes),
        )
        jobs: dict[int, tuple[float, dict[str, float], dict[str, float]]] = {}
        for row in rows:
            job_id = int(row["id"])
            if job_id not in jobs:
                seconds: dict[str, float] = {}
                if (
                    row["series_generation"] == row["job_generation"]
                    and row["first_at"] is not None
                    and row["last_at"] is not None
                ):
                    seconds["receive"] = max(0.0, float(row["last_at"]) - float(row["first_at"]))
                jobs[job_id] = (float(row["finished_at"]), seconds, {})
            _, seconds, marks_at = jobs[job_id]
            code = str(row["code"])
            if code in _TIMED:
                value = seconds_of(row["detail"])
                if value is not None:
                    seconds[_TIMED[code]] = value
            elif code == EventCode.JOB_QUEUED.value:
                marks_at.setdefault("queued", float(row["at"]))  # the first: when it was queued
            else:
                marks_at[code] = float(row["at"])  # the last start, the last write
        samples = []
        for job_id, (finished_at, seconds, marks_at) in jobs.items():
            started = marks_at.get(EventCode.JOB_STARTED.value)
            written = marks_at.get(EventCode.RESULTS_WRITTEN.value)
            if "queued" in marks_at and started is not None:
                seconds["wait"] = max(0.0, started - marks_at["queued"])
            if written is not None:
                seconds["export"] = max(0.0, finished_at - written)
            samples.append(StageSample(job_id, finished_at, seconds))
        return samples
