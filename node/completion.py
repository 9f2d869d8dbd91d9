"""Series completion: a series is complete once it has been quiet long enough.

DICOM has no "end of series" message, so completion is inferred: when no
instance of a series has arrived for ``series_quiet_seconds`` it is
declared complete and handed on. The decision is a database query with an
explicit ``now`` (from an injected clock), so tests need not sleep and a
restart loses nothing. An instance arriving after completion re-opens the
series; when it goes quiet again it completes with the next generation and
is processed again (see ``README.md``: *Late instances*).

When the sender can be queried (a pull, or a push from a declared source),
``counted`` names series that already hold as many instances as the sender
reported: they complete at the next poll instead of after the quiet period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.state.series import SeriesRow, SeriesStore

log = logging.getLogger(__name__)


class CompletionMonitor:
    """Finds quiet series and hands each one, once per generation, to ``on_complete``."""

    def __init__(
        self,
        series: SeriesStore,
        *,
        quiet_seconds: float,
        clock: Callable[[], float],
        on_complete: Callable[[SeriesRow], object],
        counted: Callable[[], list[str]] = list,
    ) -> None:
        self._series = series
        self._quiet_seconds = quiet_seconds
        self._clock = clock
        self._on_complete = on_complete
        self._counted = counted

    def poll(self) -> list[SeriesRow]:
        """Complete every series that holds its expected count or is quiet now; return them."""
        now = self._clock()
        completed = []
        for series_uid in self._counted():
            row = self._series.force_complete(series_uid, now)
            if row is not None:
                log.info(
                    "series holds the sender's instance count series_uid=%s instances=%d",
                    series_uid,
                    row.instance_count,
                )
                self._hand_on(row)
                completed.append(row)
        for candidate in self._series.quiet_series(now, self._quiet_seconds):
            row = self._series.mark_complete(candidate.series_uid, now, self._quiet_seconds)
            if row is not None:
                self._hand_on(row)
                completed.append(row)
        return completed

    def force(self, series_uid: str) -> SeriesRow | None:
        """Complete a series now, whatever its quiet time (admin action)."""
        row = self._series.force_complete(series_uid, self._clock())
        if row is not None:
            self._hand_on(row)
        return row

    def _hand_on(self, row: SeriesRow) -> None:
        log.info(
            "series complete series_uid=%s instances=%d generation=%d quiet_for=%.1fs",
            row.series_uid,
            row.instance_count,
            row.generation,
            (row.completed_at or row.last_received) - row.last_received,
        )
        try:
            self._on_complete(row)
        except Exception:
            log.exception("dispatch failed series_uid=%s", row.series_uid)
