"""What the node has seen: studies and series with a few descriptive header fields.

The ingest path records only identifiers; the descriptive fields the console
shows and filters on (study date, descriptions, accession number) are read
from the first instance of a series the first time they are needed and
cached in ``series_info``. Patient names and IDs are not copied.
"""

from __future__ import annotations

import logging
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.state.catalog import INFO_FIELDS, CatalogStore, SeriesView
from node.state.connection import Connection
from node.state.jobs import Job
from node.state.series import SeriesStore

log = logging.getLogger(__name__)


class SeriesCatalog:
    def __init__(self, db: Connection, series: SeriesStore) -> None:
        self._store = CatalogStore(db)
        self._series = series

    def header(self, series_uid: str) -> Dataset | None:
        """The first readable header of a stored series (no pixel data)."""
        for path in self._series.instance_paths(series_uid):
            try:
                return pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                log.warning("unreadable header skipped path=%s error=%s", path, exc)
        return None

    def _fill(self, series_uid: str) -> dict[str, str]:
        header = self.header(series_uid)
        info = {
            field: str(header.get(keyword, "") or "").strip() if header is not None else ""
            for field, keyword in INFO_FIELDS.items()
        }
        self._store.save_info(series_uid, info)
        return info

    def fill_missing(self) -> None:
        for series_uid in self._store.series_without_info():
            self._fill(series_uid)

    def info(self, series_uid: str) -> dict[str, str]:
        stored = self._store.stored_info(series_uid)
        return stored if stored is not None else self._fill(series_uid)

    def series_views(self, **filters: Any) -> list[SeriesView]:
        """Series newest first with their fields and job counts (see
        :meth:`CatalogStore.series_views` for the filters)."""
        self.fill_missing()
        return self._store.series_views(**filters)

    def studies(self, **filters: Any) -> list[dict[str, Any]]:
        """Series grouped by study, newest study first."""
        grouped: dict[str, dict[str, Any]] = {}
        for view in self.series_views(**filters):
            study = grouped.setdefault(
                view.series.study_uid,
                {
                    "study_uid": view.series.study_uid,
                    "study_date": view.info["study_date"],
                    "study_description": view.info["study_description"],
                    "accession_number": view.info["accession_number"],
                    "last_received": view.series.last_received,
                    "series": [],
                },
            )
            study["series"].append(view)
        return list(grouped.values())

    def finished_since(self, since: float) -> list[tuple[str, float]]:
        return self._store.finished_since(since)

    def search_jobs(self, **filters: Any) -> list[tuple[Job, dict[str, str]]]:
        """Jobs newest first, with their series' fields (see :meth:`CatalogStore.search_jobs`)."""
        self.fill_missing()
        return self._store.search_jobs(**filters)
