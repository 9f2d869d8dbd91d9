"""Running pulls, and asking push senders how many instances a series has.

:class:`PullService` is a polling thread: it claims a queued pull, asks the
source which series (and how many instances each) it holds, records those
counts as expectations, retrieves each series through the ingestor and keeps
per-series progress on the pull row. A failed pull is retried (``attempts``,
with a delay); a pull of a series the node already processed that brings no
new instance does not re-run anything.

:class:`SenderCountChecker` gives pushed series the same count check: for a
series arriving by C-STORE from the AE title of a declared source (with
``count_check``), it queries that source once per generation and records the
count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from node.config import AnySource
from node.errors import AinodeError, NotFound
from node.orchestration.ingest import Ingestor
from node.polling import PollingThread
from node.pull.remote import SourceError, query_series, retrieve_series
from node.state.lease import owner_name
from node.state.pulls import Pull, PullStore
from node.state.series import SeriesStore

log = logging.getLogger(__name__)


class PullService(PollingThread):
    """Claims queued pulls and runs them one at a time."""

    def __init__(
        self,
        store: PullStore,
        sources: Callable[[], Mapping[str, AnySource]],
        ingestor: Ingestor,
        series: SeriesStore,
        *,
        node_ae_title: str,
        clock: Callable[[], float],
        on_received: Callable[[], None] = lambda: None,
        max_attempts: int = 3,
        retry_seconds: float = 10.0,
    ) -> None:
        super().__init__("pull")
        self._store = store
        self._sources = sources
        self._ingestor = ingestor
        self._series = series
        self._node_ae_title = node_ae_title
        self._clock = clock
        self._on_received = on_received
        self._max_attempts = max_attempts
        self._retry_seconds = retry_seconds
        self._owner = owner_name("pull", ingestor.node_name)

    def submit(
        self,
        *,
        source: str,
        study_uid: str | None,
        series_uid: str | None,
        rule: str | None,
        origin: str,
    ) -> Pull:
        """Queue a pull (or find the pending one); raise :class:`NotFound` for an unknown source."""
        return self.request(
            source=source, study_uid=study_uid, series_uid=series_uid, rule=rule, origin=origin
        )[0]

    def request(
        self,
        *,
        source: str,
        study_uid: str | None,
        series_uid: str | None,
        rule: str | None,
        origin: str,
    ) -> tuple[Pull, bool]:
        """Queue a pull unless the same one is queued or running; return it and whether it
        is new. Raise :class:`NotFound` for an unknown source."""
        if source not in self._sources():
            known = ", ".join(sorted(self._sources())) or "none configured"
            raise NotFound(f"no source named {source!r} (known: {known})")
        pull, created = self._store.request(
            source=source,
            study_uid=study_uid or "",
            series_uid=series_uid,
            rule=rule,
            origin=origin,
            now=self._clock(),
        )
        log.info(
            "pull %s pull_id=%d source=%s study_uid=%s series_uid=%s rule=%s origin=%s",
            "queued" if created else f"already {pull.state}",
            pull.id,
            source,
            study_uid or "-",
            series_uid or "-",
            rule or "-",
            origin,
        )
        if created:
            self.wake()
        return pull, created

    def run_once(self) -> bool:
        pull = self._store.claim(self._clock(), self._owner)
        if pull is None:
            return False
        try:
            with self._store.keep_lease(pull, self._clock).held():
                self._run(pull)
        except (AinodeError, OSError, ValueError) as exc:
            now = self._clock()
            if pull.attempts < self._max_attempts:
                log.warning(
                    "pull failed, will retry pull_id=%d attempt=%d error=%s",
                    pull.id,
                    pull.attempts,
                    exc,
                )
                self._store.update(
                    pull.id,
                    now,
                    state="queued",
                    error=str(exc),
                    not_before=now + self._retry_seconds,
                )
            else:
                log.warning(
                    "pull failed pull_id=%d attempts=%d error=%s", pull.id, pull.attempts, exc
                )
                self._store.update(pull.id, now, state="failed", error=str(exc))
        return True

    def _run(self, pull: Pull) -> None:
        source = self._sources().get(pull.source)
        if source is None:
            raise NotFound(f"source {pull.source!r} is no longer configured")
        remote = query_series(
            source, pull.study_uid or None, pull.series_uid, calling_ae=self._node_ae_title
        )
        if not remote:
            raise SourceError(
                f"source {pull.source!r} has no series for study {pull.study_uid or '-'}"
                f" series {pull.series_uid or '-'}"
            )
        if not pull.study_uid:
            self._store.update(pull.id, self._clock(), study_uid=remote[0].study_uid)
        progress: list[dict[str, Any]] = []
        for series in remote:
            before = self._series.series(series.series_uid)
            self._store.expect(
                series_uid=series.series_uid,
                study_uid=series.study_uid,
                expected_count=series.instance_count or None,
                source=pull.source,
                rule=pull.rule,
                now=self._clock(),
            )
            counts = retrieve_series(
                source, series, self._ingestor, node_ae_title=self._node_ae_title
            )
            entry: dict[str, Any] = {
                "series_uid": series.series_uid,
                "modality": series.modality,
                "expected": series.instance_count,
                **counts.as_json(),
            }
            if counts.stored == 0 and before is not None and before.state == "complete":
                entry["note"] = "already received and processed; nothing new to process"
            progress.append(entry)
            self._store.update(pull.id, self._clock(), series=progress)
            self._on_received()
            log.info(
                "series pulled pull_id=%d series_uid=%s expected=%d stored=%d duplicates=%d"
                " failed=%d",
                pull.id,
                series.series_uid,
                series.instance_count,
                counts.stored,
                counts.duplicates,
                counts.failed,
            )
        failed = sum(entry["failed"] for entry in progress)
        error = f"{failed} instance(s) could not be stored" if failed else None
        self._store.update(pull.id, self._clock(), state="done", error=error)


class SenderCountChecker(PollingThread):
    """Queries push senders that are declared sources for their series' instance counts."""

    idle_seconds = 0.25

    def __init__(
        self,
        store: PullStore,
        sources: Callable[[], Mapping[str, AnySource]],
        *,
        node_ae_title: str,
        clock: Callable[[], float],
    ) -> None:
        super().__init__("sender-counts")
        self._store = store
        self._sources = sources
        self._node_ae_title = node_ae_title
        self._clock = clock
        self._asked: set[tuple[str, int]] = set()

    def _by_ae(self) -> dict[str, tuple[str, AnySource]]:
        return {
            source.ae_title: (name, source)
            for name, source in self._sources().items()
            if source.ae_title and source.count_check
        }

    def run_once(self) -> bool:
        by_ae = self._by_ae()
        pending = [
            row
            for row in self._store.unqueried_receiving(set(by_ae))
            if (row[0], row[2]) not in self._asked
        ]
        for series_uid, study_uid, generation, calling_ae in pending:
            self._asked.add((series_uid, generation))
            name, source = by_ae[calling_ae]
            try:
                found = query_series(source, study_uid, series_uid, calling_ae=self._node_ae_title)
            except (AinodeError, OSError, ValueError) as exc:
                log.warning(
                    "count query failed series_uid=%s source=%s error=%s", series_uid, name, exc
                )
                continue
            count = next((s.instance_count for s in found if s.series_uid == series_uid), 0)
            if count <= 0:
                continue
            self._store.expect(
                series_uid=series_uid,
                study_uid=study_uid,
                expected_count=count,
                source=name,
                rule=None,
                now=self._clock(),
            )
            log.info(
                "sender count recorded series_uid=%s source=%s expected=%d", series_uid, name, count
            )
        return bool(pending)
