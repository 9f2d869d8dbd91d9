"""The queue's ETA: when each queued or running job should start and finish.

From the job history (:class:`~node.state.history.JobHistory`): a worker holds a job
for ``a + b * instances`` seconds, fitted per routine and device over its recent jobs
with the Theil-Sen estimator (the median of pairwise slopes, so a few outliers do not
move it), then the export takes the median of the routine's recent exports. The queued
jobs are taken in the claim's order (priority, then id: :data:`node.state.jobs.JOB_LEASE`)
by whichever worker frees first. Pure: the caller passes the history, the active jobs,
the workers' devices and ``now``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from node.state.history import ActiveJob, RunSample

#: The most recent jobs a rate is fitted from (per routine and device).
RECENT = 30


@dataclass(frozen=True)
class Rate:
    """Seconds a worker holds a job: ``intercept + per_instance * instances`` to compute, plus
    loading the series at ``load_per_instance`` (``read_ahead_per_instance`` when the worker
    read it ahead while running the job before)."""

    intercept: float
    per_instance: float
    export_seconds: float
    basis: str
    load_per_instance: float = 0.0
    read_ahead_per_instance: float = 0.0

    def run_seconds(self, instances: int, *, read_ahead: bool = False) -> float:
        load = self.read_ahead_per_instance if read_ahead else self.load_per_instance
        return max(0.0, self.intercept + self.per_instance * instances) + load * instances


@dataclass(frozen=True)
class Eta:
    """One job's estimate (epoch seconds); ``basis`` says what it rests on."""

    estimated_start: float
    estimated_finish: float
    seconds_to_finish: float
    basis: str


def fit(samples: Sequence[RunSample]) -> tuple[float, float]:
    """``(intercept, per_instance)`` of compute seconds (the worker's time besides loading)
    against instances (Theil-Sen).

    One job, or jobs all of one size, give a pure per-instance rate (the median)."""
    if not samples:
        raise ValueError("no samples to fit")
    slopes = [
        (b.compute_seconds - a.compute_seconds) / (b.instances - a.instances)
        for a, b in combinations(samples, 2)
        if b.instances != a.instances
    ]
    if not slopes:
        sized = [s for s in samples if s.instances > 0]
        if not sized:
            return statistics.median(s.compute_seconds for s in samples), 0.0
        return 0.0, statistics.median(s.compute_seconds / s.instances for s in sized)
    slope = max(0.0, statistics.median(slopes))
    intercept = statistics.median(s.compute_seconds - slope * s.instances for s in samples)
    if intercept < 0.0:  # a line through the origin fits better than a negative start-up
        return 0.0, statistics.median(s.compute_seconds / max(1, s.instances) for s in samples)
    return intercept, slope


def rate(history: Sequence[RunSample], plugin: str, device: str) -> Rate | None:
    """The rate of ``plugin`` on ``device``, falling back to its jobs on other devices;
    None when the routine never finished a job here. ``history``: newest first."""
    same = [s for s in history if s.plugin == plugin]
    here = [s for s in same if s.device == device]
    chosen, where = (here, f"on {device}") if here else (same, "on other devices")
    if not chosen:
        return None
    recent = chosen[:RECENT]
    intercept, per_instance = fit(recent)
    cold = _load_rate(s for s in recent if not s.prefetched)
    ahead = _load_rate(s for s in recent if s.prefetched)
    cold, ahead = (
        (cold if cold is not None else ahead or 0.0),
        (ahead if ahead is not None else cold or 0.0),
    )
    export = statistics.median(s.export_seconds for s in same[:RECENT])
    count = len(recent)
    quality = "few jobs, rough" if count < 3 else "fitted"
    basis = (
        f"{plugin} {where}: {count} earlier job{'s' if count != 1 else ''} ({quality}),"
        f" {intercept:.2f} s + {per_instance * 1000:.2f} ms/instance, load"
        f" {cold * 1000:.2f} ms/instance ({ahead * 1000:.2f} read ahead), export {export:.2f} s"
    )
    return Rate(intercept, per_instance, export, basis, cold, ahead)


def _load_rate(samples: Iterable[RunSample]) -> float | None:
    """The median load seconds per instance; None without samples."""
    rates = [s.load_seconds / s.instances for s in samples if s.instances > 0]
    return statistics.median(rates) if rates else None


def estimate(
    history: Sequence[RunSample],
    active: Sequence[ActiveJob],
    workers: Sequence[str],
    now: float,
) -> dict[int, Eta | None]:
    """Every active job's estimate (None: no routine history to go on).

    ``workers``: the device of each worker (one worker per device on a node). A running
    job holds its device's worker until its estimated finish (now, when overdue); queued
    jobs then go, in the claim's order, to whichever worker frees first. A queued job
    behind one without an estimate cannot be placed either.
    """
    rates: dict[tuple[str, str], Rate | None] = {}

    def rate_of(plugin: str, device: str) -> Rate | None:
        if (plugin, device) not in rates:
            rates[plugin, device] = rate(history, plugin, device)
        return rates[plugin, device]

    devices = list(workers) or ["cpu"]
    free_at = [now] * len(devices)
    unknown = [False] * len(devices)
    taken = [False] * len(devices)
    result: dict[int, Eta | None] = {}
    for job in sorted((j for j in active if j.state != "queued"), key=lambda j: j.job_id):
        found = rate_of(job.plugin, job.device or devices[0])
        if job.state == "exporting":
            result[job.job_id] = _exporting(job, found, now)
            continue
        slot = next(
            (i for i, d in enumerate(devices) if d == job.device and not taken[i]),
            next((i for i in range(len(devices)) if not taken[i]), None),
        )
        start = job.started_at if job.started_at is not None else now
        if found is None:
            result[job.job_id] = None
            if slot is not None:
                taken[slot], unknown[slot] = True, True
            continue
        run_end = start + found.run_seconds(job.instances)
        basis = found.basis
        if run_end < now:
            basis = f"overdue by {now - run_end:.0f} s; {basis}"
            run_end = now
        if slot is not None:
            taken[slot], free_at[slot] = True, run_end
        finish = run_end + found.export_seconds
        result[job.job_id] = Eta(start, finish, max(0.0, finish - now), basis)
    queued = (j for j in active if j.state == "queued")
    for job in sorted(queued, key=lambda j: (j.priority, j.job_id)):
        slot = min(range(len(devices)), key=lambda i: (unknown[i], free_at[i], i))
        found = rate_of(job.plugin, devices[slot])
        if unknown[slot] or found is None:
            result[job.job_id] = None
            unknown[slot] = True  # what follows on this worker cannot be placed
            continue
        start = free_at[slot]
        # Behind another job, the worker reads this one's series ahead while that one runs.
        free_at[slot] = start + found.run_seconds(job.instances, read_ahead=start > now)
        finish = free_at[slot] + found.export_seconds
        result[job.job_id] = Eta(start, finish, finish - now, found.basis)
    return result


def _exporting(job: ActiveJob, found: Rate | None, now: float) -> Eta | None:
    if job.started_at is None or job.written_at is None:
        return None
    export = found.export_seconds if found is not None else 0.0
    finish = job.written_at + export
    basis = "exporting" + (f"; {found.basis}" if found is not None else "")
    if finish < now:
        basis = f"overdue by {now - finish:.0f} s; {basis}"
        finish = now
    return Eta(job.started_at, finish, finish - now, basis)


def describe(start: float, finish: float, state: str) -> str:
    """``starts ~14:02, done ~14:03`` in local time (``started 14:01, ...`` once running)."""
    begun = "starts ~" if state == "queued" else "started "
    return f"{begun}{_clock(start)}, done ~{_clock(finish)}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M", time.localtime(at))


def no_estimate_reason(plugin: str) -> str:
    """Why a job has no ETA (shown with it)."""
    return f"no finished job of {plugin} (or of a job ahead of it) to estimate from"
