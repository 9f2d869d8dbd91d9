"""The counts ``/metrics`` derives from the state database (they survive restarts).

Events are selected by :class:`~node.state.events.EventCode`, never by their wording.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from node.state.connection import Connection
from node.state.events import EXPORT_FAILURE_CODES, EventCode


@dataclass(frozen=True)
class JobDurations:
    """Finished (done) jobs of one plugin: count, summed seconds, cumulative bucket counts."""

    plugin: str
    count: int
    total_seconds: float
    #: ``(upper bound, jobs that took at most that long)`` per bucket, in bucket order.
    buckets: tuple[tuple[float, int], ...]


@dataclass(frozen=True)
class QualitySkips:
    """Jobs of one plugin the input-quality gate skipped for one failed check."""

    plugin: str
    check: str
    count: int


class MetricsQueries:
    """Read-only aggregates over series, jobs and job events."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def series_completions(self) -> int:
        """Series completions ever (each generation counts)."""
        return int(self._db.query("SELECT COALESCE(SUM(generation), 0) AS n FROM series")[0]["n"])

    def job_durations(self, buckets: Sequence[float]) -> list[JobDurations]:
        """Start-to-done time of finished jobs per plugin, as histogram buckets."""
        cases = ", ".join(
            f"SUM(CASE WHEN finished_at - started_at <= ? THEN 1 ELSE 0 END) AS b{i}"
            for i in range(len(buckets))
        )
        rows = self._db.query(
            f"SELECT plugin, COUNT(*) AS n, SUM(finished_at - started_at) AS total, {cases}"
            " FROM jobs WHERE state = 'done' AND started_at IS NOT NULL"
            " AND finished_at IS NOT NULL GROUP BY plugin ORDER BY plugin",
            tuple(buckets),
        )
        return [
            JobDurations(
                plugin=str(row["plugin"]),
                count=int(row["n"]),
                total_seconds=float(row["total"] or 0.0),
                buckets=tuple((bound, int(row[f"b{i}"])) for i, bound in enumerate(buckets)),
            )
            for row in rows
        ]

    def export_failures(self) -> int:
        """Failed export attempts: each retry scheduled and each export given up."""
        marks = ", ".join("?" * len(EXPORT_FAILURE_CODES))
        rows = self._db.query(
            f"SELECT COUNT(*) AS n FROM job_events WHERE code IN ({marks})",
            tuple(code.value for code in EXPORT_FAILURE_CODES),
        )
        return int(rows[0]["n"])

    def quality_skips(self) -> list[QualitySkips]:
        """Quality-gate skips per plugin and failed check (from the skipped events' JSON)."""
        rows = self._db.query(
            "SELECT j.plugin AS plugin, e.detail AS detail FROM job_events e"
            " JOIN jobs j ON j.id = e.job_id WHERE e.code = ?",
            (EventCode.JOB_SKIPPED.value,),
        )
        counts: Counter[tuple[str, str]] = Counter()
        for row in rows:
            try:
                detail = json.loads(row["detail"])
            except ValueError:
                continue
            if not isinstance(detail, dict) or detail.get("source") != "quality":
                continue
            for check in detail.get("checks") or []:
                counts[(str(row["plugin"]), str(check.get("check")))] += 1
        return [QualitySkips(plugin, check, n) for (plugin, check), n in sorted(counts.items())]
