"""The catalog's tables: cached descriptive fields per series (``series_info``) and the
console's searches over series and jobs joined with them.

Header reading lives in :class:`node.admin.catalog.SeriesCatalog`, which fills the cache
through :meth:`CatalogStore.save_info`.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.state.connection import Connection
from node.state.jobs import Job, _job
from node.state.series import SeriesRow, _series

INFO_FIELDS = {
    "study_date": "StudyDate",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "accession_number": "AccessionNumber",
    "body_part": "BodyPartExamined",
    "series_number": "SeriesNumber",
}


@dataclass(frozen=True)
class SeriesView:
    series: SeriesRow
    info: dict[str, str]
    jobs: dict[str, int]


def normalise_date(text: str) -> str:
    """``2024-05-01`` or ``20240501`` → ``20240501`` (DICOM DA)."""
    digits = text.replace("-", "").strip()
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)")
    return digits


class CatalogStore:
    """``series_info`` rows and the searches that join them."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def save_info(self, series_uid: str, info: dict[str, str]) -> None:
        """Cache the descriptive fields read from a series' header."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "DELETE FROM series_info WHERE series_uid = ?",
                (series_uid,),
            )
            cursor.execute(
                "INSERT INTO series_info (series_uid, study_date, study_description,"
                " series_description, accession_number, body_part, series_number)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (series_uid, *(info[f] for f in INFO_FIELDS)),
            )

    def series_without_info(self) -> list[str]:
        rows = self._db.query(
            "SELECT s.series_uid FROM series s LEFT JOIN series_info i"
            " ON i.series_uid = s.series_uid WHERE i.series_uid IS NULL"
        )
        return [str(row["series_uid"]) for row in rows]

    def stored_info(self, series_uid: str) -> dict[str, str] | None:
        rows = self._db.query("SELECT * FROM series_info WHERE series_uid = ?", (series_uid,))
        return {f: rows[0][f] for f in INFO_FIELDS} if rows else None

    def series_views(
        self, *, limit: int = 500, text: str = "", state: str = "", since: float | None = None
    ) -> list[SeriesView]:
        clauses: list[str] = []
        parameters: list[object] = []
        if state:
            clauses.append("s.state = ?")
            parameters.append(state)
        if since is not None:
            clauses.append("s.last_received >= ?")
            parameters.append(since)
        if text:
            like = f"%{text}%"
            clauses.append(
                "(s.series_uid LIKE ? OR s.study_uid LIKE ? OR i.series_description LIKE ?"
                " OR i.study_description LIKE ? OR i.accession_number LIKE ? OR s.modality LIKE ?)"
            )
            parameters.extend([like] * 6)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(
            "SELECT s.*, i.study_date, i.study_description, i.series_description,"
            " i.accession_number, i.body_part, i.series_number FROM series s"
            f" LEFT JOIN series_info i ON i.series_uid = s.series_uid{where}"
            " ORDER BY s.last_received DESC LIMIT ?",
            (*parameters, limit),
        )
        counts: dict[str, dict[str, int]] = {}
        for row in self._db.query(
            "SELECT series_uid, state, COUNT(*) AS n FROM jobs GROUP BY series_uid, state"
        ):
            counts.setdefault(row["series_uid"], {})[row["state"]] = int(row["n"])
        views = []
        for row in rows:
            data = dict(row)
            info = {f: data.pop(f) or "" for f in INFO_FIELDS}
            views.append(SeriesView(_series(data), info, counts.get(data["series_uid"], {})))
        return views

    def finished_since(self, since: float) -> list[tuple[str, float]]:
        """``(state, finished_at)`` of the jobs finished (done, failed, skipped) after ``since``."""
        rows = self._db.query(
            "SELECT state, finished_at FROM jobs"
            " WHERE state IN ('done', 'failed', 'skipped') AND finished_at > ?",
            (since,),
        )
        return [(str(r["state"]), float(r["finished_at"])) for r in rows]

    def search_jobs(
        self,
        *,
        state: str = "",
        rule: str = "",
        plugin: str = "",
        study_date_from: str = "",
        study_date_to: str = "",
        text: str = "",
        series_uid: str = "",
        limit: int = 200,
        mode: str = "",
        before_id: int | None = None,
    ) -> list[tuple[Job, dict[str, str]]]:
        """Jobs newest first, with the descriptive fields of their series.

        ``mode`` ``shadow`` keeps only shadow-mode jobs, ``live`` only the others.
        ``before_id`` pages: only jobs older than that one (pass the last id of a page
        to get the next; new jobs arriving meanwhile do not shift the pages).
        """
        clauses: list[str] = []
        parameters: list[object] = []
        for column, value in (
            ("j.state", state),
            ("j.rule", rule),
            ("j.plugin", plugin),
            ("j.series_uid", series_uid),
        ):
            if value:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        if mode in ("shadow", "live"):
            clauses.append("j.shadow = ?")
            parameters.append(int(mode == "shadow"))
        if before_id is not None:
            clauses.append("j.id < ?")
            parameters.append(before_id)
        if study_date_from:
            clauses.append("i.study_date >= ?")
            parameters.append(normalise_date(study_date_from))
        if study_date_to:
            clauses.append("i.study_date <= ?")
            parameters.append(normalise_date(study_date_to))
        if text:
            like = f"%{text}%"
            clauses.append(
                "(j.series_uid LIKE ? OR j.study_uid LIKE ? OR j.error LIKE ? OR j.rule LIKE ?"
                " OR i.series_description LIKE ? OR i.study_description LIKE ?"
                " OR i.accession_number LIKE ? OR CAST(j.id AS TEXT) = ?)"
            )
            parameters.extend([like] * 7 + [text.strip()])
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.query(
            "SELECT j.*, i.study_date AS i_study_date,"
            " i.series_description AS i_series_description,"
            " i.accession_number AS i_accession_number FROM jobs j"
            f" LEFT JOIN series_info i ON i.series_uid = j.series_uid{where}"
            " ORDER BY j.id DESC LIMIT ?",
            (*parameters, limit),
        )
        results = []
        for row in rows:
            data = dict(row)
            info = {
                "study_date": data.pop("i_study_date") or "",
                "series_description": data.pop("i_series_description") or "",
                "accession_number": data.pop("i_accession_number") or "",
            }
            results.append((_job(data), info))
        return results
