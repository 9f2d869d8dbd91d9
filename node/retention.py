"""Retention policy: which series lose their spooled instances and results, and why.

Pure list logic over :class:`SeriesUsage` rows; the store
(:mod:`node.state.retention`) gathers them and the plumbing
(:func:`node.orchestration.retention_run.run_pass`) deletes what :func:`plan` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.config import RetentionSettings

DAY = 86400.0


@dataclass(frozen=True)
class SeriesUsage:
    """One series as retention sees it."""

    series_uid: str
    study_uid: str
    complete: bool
    #: When its last job finished (or it completed, when no rule matched); None: never.
    last_finished: float | None
    #: Jobs queued, running or exporting.
    active_jobs: int
    last_job_failed: bool
    shadow: bool
    instance_count: int
    spool_bytes: int
    result_bytes: int
    spool_purged: bool = False
    results_purged: bool = False


@dataclass(frozen=True)
class Deletion:
    """What to delete of one series and why (``age`` or ``watermark``)."""

    usage: SeriesUsage
    spool: bool
    results: bool
    reason: str

    @property
    def bytes(self) -> int:
        return (self.usage.spool_bytes if self.spool else 0) + (
            self.usage.result_bytes if self.results else 0
        )


def protected(usage: SeriesUsage, settings: RetentionSettings) -> str | None:
    """Why a series must not be touched at all, or None."""
    if not usage.complete:
        return "still receiving"
    if usage.active_jobs:
        return "job queued, running or exporting"
    if usage.last_finished is None:
        return "no finished job"
    if usage.shadow and settings.keep_shadow:
        return "shadow comparison"
    return None


def plan(
    series: list[SeriesUsage],
    *,
    now: float,
    settings: RetentionSettings,
    free_bytes: int | None = None,
) -> list[Deletion]:
    """The deletions due: by age first, then oldest-first until free space is back above
    the high watermark (series whose last job failed last among those)."""
    deletions: dict[str, Deletion] = {}
    eligible = [s for s in series if protected(s, settings) is None]
    for usage in eligible:
        assert usage.last_finished is not None
        age = (now - usage.last_finished) / DAY
        spool_days = settings.failed_days if usage.last_job_failed else settings.spool_days
        results_days = max(settings.results_days, spool_days)
        spool = not usage.spool_purged and age >= spool_days
        results = not usage.results_purged and age >= results_days
        if spool or results:
            deletions[usage.series_uid] = Deletion(usage, spool, results, "age")
    high = settings.high_watermark_mb * 1024 * 1024
    if free_bytes is not None and free_bytes < high:
        needed = high - free_bytes - sum(d.bytes for d in deletions.values())
        order = sorted(eligible, key=lambda s: (s.last_job_failed, s.last_finished or 0.0))
        for usage in order:
            if needed <= 0:
                break
            if usage.spool_purged and usage.results_purged:
                continue
            before = deletions.get(usage.series_uid)
            whole = Deletion(usage, not usage.spool_purged, not usage.results_purged, "watermark")
            if (
                before is not None
                and before.spool == whole.spool
                and before.results == whole.results
            ):
                continue
            needed -= whole.bytes - (before.bytes if before else 0)
            deletions[usage.series_uid] = whole
    return sorted(deletions.values(), key=lambda d: d.usage.last_finished or 0.0)
