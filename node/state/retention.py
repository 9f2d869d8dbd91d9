"""Retention's SQL: per-series usage rows, instance paths, and purge marks.

A purged series keeps its ``series`` and ``jobs`` rows (the history); its
``instances`` rows go and ``series_purges`` records what was deleted, so a
re-run can be refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.retention import SeriesUsage
from node.state.connection import Connection

PURGES_TABLE = """
CREATE TABLE IF NOT EXISTS series_purges (
    series_uid          TEXT PRIMARY KEY,
    spool_purged_at     REAL,
    results_purged_at   REAL
)
"""

_USAGE = """
SELECT s.series_uid, s.study_uid, s.state, s.completed_at, s.instance_count,
    (SELECT COALESCE(SUM(i.size), 0) FROM instances i
        WHERE i.series_uid = s.series_uid) AS spool_bytes,
    (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS instances,
    (SELECT COUNT(*) FROM jobs j WHERE j.series_uid = s.series_uid
        AND j.state IN ('queued', 'running', 'exporting')) AS active,
    (SELECT COUNT(*) FROM jobs j WHERE j.series_uid = s.series_uid) AS jobs,
    (SELECT MAX(j.finished_at) FROM jobs j WHERE j.series_uid = s.series_uid) AS finished,
    (SELECT j.state FROM jobs j WHERE j.series_uid = s.series_uid
        ORDER BY j.finished_at DESC, j.id DESC LIMIT 1) AS last_state,
    (SELECT MAX(j.shadow) FROM jobs j WHERE j.series_uid = s.series_uid) AS shadow,
    p.spool_purged_at, p.results_purged_at
FROM series s LEFT JOIN series_purges p ON p.series_uid = s.series_uid
"""


@dataclass(frozen=True)
class PurgeMark:
    spool_purged_at: float | None
    results_purged_at: float | None


class RetentionStore:
    """Reads usage for the policy and records what retention deleted."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        with db.transaction() as cursor:
            cursor.execute(PURGES_TABLE)

    def usage(self) -> list[tuple[SeriesUsage, list[Path]]]:
        """Every series' usage (result bytes 0: the caller sizes files) and result dirs."""
        out = []
        for row in self._db.query(_USAGE):
            finished = row["finished"] if row["jobs"] else row["completed_at"]
            dirs = [
                Path(r["result_dir"])
                for r in self._db.query(
                    "SELECT DISTINCT result_dir FROM jobs WHERE series_uid = ?"
                    " AND result_dir IS NOT NULL",
                    (row["series_uid"],),
                )
            ]
            out.append(
                (
                    SeriesUsage(
                        series_uid=row["series_uid"],
                        study_uid=row["study_uid"],
                        complete=row["state"] == "complete",
                        last_finished=None if finished is None else float(finished),
                        active_jobs=int(row["active"]),
                        last_job_failed=row["last_state"] == "failed",
                        shadow=bool(row["shadow"]),
                        instance_count=int(row["instances"]),
                        spool_bytes=int(row["spool_bytes"]),
                        result_bytes=0,
                        spool_purged=row["spool_purged_at"] is not None,
                        results_purged=row["results_purged_at"] is not None,
                    ),
                    dirs,
                )
            )
        return out

    def spool_bytes(self) -> int:
        rows = self._db.query("SELECT COALESCE(SUM(size), 0) AS n FROM instances")
        return int(rows[0]["n"])

    def instance_paths(self, series_uid: str) -> list[Path]:
        rows = self._db.query("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))
        return [Path(r["path"]) for r in rows]

    def mark_purged(self, series_uid: str, *, spool: bool, results: bool, now: float) -> None:
        """Drop the series' instance rows (when its spool went) and record the purge."""
        with self._db.transaction() as cursor:
            if spool:
                cursor.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            cursor.execute(
                "INSERT INTO series_purges (series_uid, spool_purged_at, results_purged_at)"
                " VALUES (?, ?, ?) ON CONFLICT (series_uid) DO UPDATE SET"
                " spool_purged_at = COALESCE(series_purges.spool_purged_at,"
                " excluded.spool_purged_at), results_purged_at ="
                " COALESCE(series_purges.results_purged_at, excluded.results_purged_at)",
                (series_uid, now if spool else None, now if results else None),
            )

    def purge_mark(self, series_uid: str) -> PurgeMark | None:
        rows = self._db.query(
            "SELECT spool_purged_at, results_purged_at FROM series_purges WHERE series_uid = ?",
            (series_uid,),
        )
        if not rows:
            return None
        return PurgeMark(rows[0]["spool_purged_at"], rows[0]["results_purged_at"])
