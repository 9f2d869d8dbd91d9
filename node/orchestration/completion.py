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

Marking a series complete and queueing its jobs (``on_complete``) is one
transaction: a crash between the two leaves the series receiving, to complete
again after restart. Several nodes may share one state and poll the same series:
completion is a conditional update of the series row (only one node's applies) and
so is the dispatch, so a series whose instances arrived on two nodes completes once
and its jobs are queued once. Should dispatch itself fail, completion is kept and the
series is dispatched again by a later poll (and at start-up), with a log line.

A series whose sender was cut off (an aborted association, or the node
restarted while it was receiving) is *held* (see :meth:`SeriesStore.hold`):
it waits for the grace period instead of the quiet period, unless the
sender's count says it is whole or a later association ends normally.

Two bounds keep a misbehaving sender from starving or flooding the queue:
a series still receiving ``max_receiving_seconds`` after its generation's
first instance (a sender that trickles) completes anyway, and a series
completes at most ``max_generations`` times per ``generation_window`` seconds
(instances that keep arriving after completion): beyond that the next
generation waits until the window allows it. Either way the series' jobs get
a ``completion`` event saying why.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from node.faults import fault_point
from node.polling import PollingThread
from node.state.series import SeriesRow, SeriesStore

log = logging.getLogger(__name__)

#: The part of the quiet period after which a quiet series is read ahead
#: (``on_quieting``): 0.25 of the default 2 s leaves 1.5 s to read it, while senders'
#: gaps inside a series (milliseconds) are far shorter, so a read rarely starts early.
#: (0.1 was tried: a PACS sending 1000 slices under load pauses for 0.2-2 s now and then,
#: and reads of the partial series then competed with the receive and delayed the whole
#: read; see benchmarks/README.md.)
READ_AHEAD_FRACTION = 0.25

#: Seconds between two dispatch attempts of a complete series whose dispatch failed.
REDISPATCH_SECONDS = 60.0


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
        max_receiving_seconds: float = math.inf,
        max_generations: int = 0,
        generation_window: float = 3600.0,
        on_quieting: Callable[[list[SeriesRow]], object] | None = None,
    ) -> None:
        self._series = series
        self._quiet_seconds = quiet_seconds
        self._clock = clock
        self._on_complete = on_complete
        self._counted = counted
        self._max_age = max_receiving_seconds
        self._max_generations = max_generations  # 0: unbounded
        self._window = generation_window
        self._undispatched_check_at = 0.0  # the first poll looks for undispatched series
        #: Called each poll with the series still receiving but quiet for
        #: ``READ_AHEAD_FRACTION`` of the period, nearest deadline first (read-ahead).
        self._on_quieting = on_quieting

    def poll(self) -> list[SeriesRow]:
        """Complete every series that holds its expected count or is quiet now; return them."""
        now = self._clock()
        self._redispatch(now)
        completed = []
        for series_uid in self._counted():
            if self._rate_limited(series_uid, now):
                continue
            with self._series.atomically():
                row = self._series.force_complete(series_uid, now)
                if row is not None:
                    log.info(
                        "series holds the sender's instance count series_uid=%s instances=%d",
                        series_uid,
                        row.instance_count,
                    )
                    self._hand_on(row)
                    completed.append(row)
        if math.isfinite(self._max_age):
            for candidate in self._series.overdue_series(now, self._max_age):
                if self._rate_limited(candidate.series_uid, now):
                    continue
                with self._series.atomically():
                    self._series.note_completion(
                        candidate.series_uid,
                        f"completed after the maximum receiving time ({self._max_age:g} s)"
                        " while instances were still arriving",
                    )
                    row = self._series.force_complete(candidate.series_uid, now)
                    if row is not None:
                        log.warning(
                            "series still receiving after the maximum receiving time:"
                            " completing it series_uid=%s instances=%d max_receiving_seconds=%g",
                            row.series_uid,
                            row.instance_count,
                            self._max_age,
                        )
                        self._hand_on(row)
                        completed.append(row)
        for candidate in self._series.quiet_series(now, self._quiet_seconds):
            if self._rate_limited(candidate.series_uid, now):
                continue
            with self._series.atomically():
                row = self._series.mark_complete(candidate.series_uid, now, self._quiet_seconds)
                if row is not None:
                    self._hand_on(row)
                    completed.append(row)
        if self._on_quieting is not None:
            quieting = self._series.quiet_series(now, self._quiet_seconds * READ_AHEAD_FRACTION)
            try:
                self._on_quieting(quieting)
            except Exception:  # a read-ahead is an optimisation: never stop completion
                log.exception("read-ahead of quiet series failed")
        return completed

    def next_quiet_at(self) -> float | None:
        """When the next receiving series turns quiet (None: none is receiving); with a
        read-ahead, when it has been quiet for ``READ_AHEAD_FRACTION`` of the period first."""
        due = self._series.next_quiet_at(self._quiet_seconds)
        if self._on_quieting is None or due is None:
            return due
        early = due - self._quiet_seconds * (1.0 - READ_AHEAD_FRACTION)
        return early if early > self._clock() else due

    def force(self, series_uid: str) -> SeriesRow | None:
        """Complete a series now, whatever its quiet time or hold (admin action)."""
        with self._series.atomically():
            row = self._series.force_complete(series_uid, self._clock())
            if row is not None:
                self._hand_on(row)
        return row

    def _rate_limited(self, series_uid: str, now: float) -> bool:
        """True while ``series_uid`` has completed ``max_generations`` times in the window;
        the first time, log it and note why the generation waits."""
        if self._max_generations <= 0:
            return False
        recent = self._series.completions_since(series_uid, now - self._window)
        if len(recent) < self._max_generations:
            return False
        allowed_at = recent[-self._max_generations] + self._window
        note = (
            f"waited {allowed_at - now:.0f} s: {len(recent)} generations completed in the last"
            f" {self._window:g} s (at most {self._max_generations})"
        )
        if self._series.note_completion(series_uid, note):
            log.warning(
                "series completion delayed by the generation bound series_uid=%s"
                " generations=%d window_seconds=%g wait_seconds=%.0f",
                series_uid,
                len(recent),
                self._window,
                allowed_at - now,
            )
        return True

    def _redispatch(self, now: float) -> None:
        """Dispatch complete series whose generation has no jobs (a failed dispatch, or a
        database written by an older node that crashed between completion and dispatch).

        Looked for at the first poll (start-up) and after a failed dispatch, every
        ``REDISPATCH_SECONDS`` while any is left.
        """
        if self._undispatched_check_at > now:
            return
        rows = self._series.undispatched()
        self._undispatched_check_at = now + REDISPATCH_SECONDS if rows else math.inf
        for row in rows:
            log.warning(
                "complete series has no jobs for its generation: dispatching it again"
                " series_uid=%s generation=%d",
                row.series_uid,
                row.generation,
            )
            self._dispatch(row)

    def _hand_on(self, row: SeriesRow) -> None:
        """Log the completion and dispatch ``row`` (in the transaction that completed it)."""
        log.info(
            "series complete series_uid=%s instances=%d generation=%d quiet_for=%.1fs",
            row.series_uid,
            row.instance_count,
            row.generation,
            (row.completed_at or row.last_received) - row.last_received,
        )
        fault_point("series_completed_before_dispatch")
        self._dispatch(row)

    def _dispatch(self, row: SeriesRow) -> None:
        """Queue the jobs of ``row`` and record it dispatched, together or not at all.

        The dispatch is claimed first (a conditional update of the series row), so when
        several nodes share the state exactly one of them queues a generation's jobs, also
        when they retry an undispatched series at the same time.
        """
        try:
            with self._series.atomically():  # a savepoint: a failure keeps the completion
                if not self._series.claim_dispatch(row.series_uid, row.generation):
                    log.info(
                        "series generation dispatched already (by another node) or"
                        " superseded series_uid=%s generation=%d",
                        row.series_uid,
                        row.generation,
                    )
                    return
                self._on_complete(row)
        except Exception:
            self._undispatched_check_at = min(
                self._undispatched_check_at, self._clock() + REDISPATCH_SECONDS
            )
            log.exception(
                "dispatch failed (retried later) series_uid=%s generation=%d",
                row.series_uid,
                row.generation,
            )


class CompletionLoop(PollingThread):
    """Runs :meth:`CompletionMonitor.poll` every ``poll_seconds`` and also the moment the
    next series turns quiet, so a series completes (and its jobs start) within
    milliseconds of its quiet period rather than up to a poll interval later."""

    def __init__(
        self, monitor: CompletionMonitor, *, poll_seconds: float, clock: Callable[[], float]
    ) -> None:
        super().__init__("completion")
        self._monitor = monitor
        self._clock = clock
        self.idle_seconds = poll_seconds
        self._polled_at = 0.0

    def run_once(self) -> bool:
        self._polled_at = self._clock()
        self._monitor.poll()
        return False

    def next_wait(self) -> float:
        """Until the next series turns quiet, at most ``poll_seconds``; one already due
        after the poll (held back by a bound, or its dispatch failed) waits the interval."""
        due = self._monitor.next_quiet_at()
        if due is None or due <= self._polled_at:
            return self.idle_seconds
        return min(self.idle_seconds, max(0.0, due - self._clock()))
