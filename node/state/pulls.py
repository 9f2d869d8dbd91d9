"""Pull requests and expected instance counts, kept in the state database.

Two tables (created by :mod:`node.state.migrations` like every other):

``pulls``
    One row per ``POST /api/pull`` or Orthanc notification: what to fetch,
    from which source, for which rule, its state and per-series progress.
``series_expectations``
    How many instances the sender holds for a series (``expected_count``)
    and the series *generation* it applies to. While the series is still in
    that generation and receiving, it completes as soon as the node holds that
    many; once it has completed, a late instance falls back to the quiet
    period (the expectation no longer applies). ``rule`` restricts dispatch
    of that completion to one rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.state import lease
from node.state.connection import Connection

log = logging.getLogger(__name__)

#: How pulls are claimed: the oldest due queued pull, or a running one whose lease ran out.
PULL_LEASE = lease.LeaseTable(
    table="pulls",
    waiting_state="queued",
    running_state="running",
    due="not_before <= ?",
    order="id",
    claim_set="attempts = attempts + 1, updated_at = ?",
)


@dataclass(frozen=True)
class Pull:
    id: int
    source: str
    study_uid: str
    series_uid: str | None
    rule: str | None
    origin: str
    state: str
    attempts: int
    not_before: float
    detail: dict[str, Any]
    error: str | None
    created_at: float
    updated_at: float
    #: Who runs the pull while it is ``running``, and until when.
    owner: str | None = None
    lease_expires_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "rule": self.rule,
            "origin": self.origin,
            "state": self.state,
            "attempts": self.attempts,
            "series": self.detail.get("series", []),
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class SeriesProgress:
    """A series of a study as received, with the count its sender reported (if asked)."""

    series_uid: str
    modality: str
    instances: int
    expected: int | None
    state: str
    generation: int


def _pull(row: Any) -> Pull:
    data = dict(row)
    data["detail"] = json.loads(data["detail"] or "{}")
    return Pull(**data)


class PullStore:
    """Pull rows and series expectations."""

    def __init__(
        self, db: Connection, *, lease_seconds: float = lease.DEFAULT_LEASE_SECONDS
    ) -> None:
        self._db = db
        self.lease_seconds = lease_seconds

    # -- pulls ------------------------------------------------------------------------
    def add(
        self,
        *,
        source: str,
        study_uid: str,
        series_uid: str | None,
        rule: str | None,
        origin: str,
        now: float,
    ) -> Pull:
        """Queue a pull, or return the queued or running one for the same request."""
        return self.request(
            source=source,
            study_uid=study_uid,
            series_uid=series_uid,
            rule=rule,
            origin=origin,
            now=now,
        )[0]

    def request(
        self,
        *,
        source: str,
        study_uid: str,
        series_uid: str | None,
        rule: str | None,
        origin: str,
        now: float,
    ) -> tuple[Pull, bool]:
        """Queue a pull unless one for the same source, study, series and rule is queued
        or running; return it and whether it is new.

        The unique index ``pulls_pending`` decides (migration 11), so two nodes asking at
        once still make one pull. A request after the earlier pull ended makes a new one
        (instances may have arrived since).
        """
        pending = (
            "SELECT * FROM pulls WHERE source = ? AND study_uid = ?"
            " AND COALESCE(series_uid, '') = ? AND COALESCE(rule, '') = ?"
            " AND state IN ('queued', 'running')"
        )
        key = (source, study_uid, series_uid or "", rule or "")
        while True:
            with self._db.transaction() as cursor:
                cursor.execute(
                    "INSERT INTO pulls (source, study_uid, series_uid, rule, origin, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (source, study_uid, series_uid, rule, origin, now, now),
                )
                if cursor.rowcount == 1:
                    pull_id = int(cursor.lastrowid or 0)
                    cursor.execute("SELECT * FROM pulls WHERE id = ?", (pull_id,))
                    return _pull(cursor.fetchone()), True
                cursor.execute(pending, key)
                row = cursor.fetchone()
                if row is not None:
                    return _pull(row), False
            # The pending pull ended between the insert and the look-up: ask again.

    def claim(self, now: float, owner: str | None = None) -> Pull | None:
        """Mark the oldest due queued pull running for ``owner`` and return it (a running
        pull whose lease expired is taken over)."""
        owner = owner or lease.owner_name("puller")
        with self._db.transaction() as cursor:
            claimed = lease.claim(cursor, PULL_LEASE, owner, now, self.lease_seconds)
            if claimed is None:
                return None
            cursor.execute("SELECT * FROM pulls WHERE id = ?", (claimed.id,))
            return _pull(cursor.fetchone())

    def renew_lease(self, pull_id: int, owner: str, now: float) -> bool:
        """Extend ``owner``'s lease on its running pull; False when it lost the pull."""
        with self._db.transaction() as cursor:
            return lease.renew(cursor, PULL_LEASE, pull_id, owner, now, self.lease_seconds)

    def update(
        self,
        pull_id: int,
        now: float,
        *,
        state: str | None = None,
        series: list[dict[str, Any]] | None = None,
        error: str | None = None,
        study_uid: str | None = None,
        not_before: float | None = None,
    ) -> None:
        with self._db.transaction() as cursor:
            if study_uid is not None:
                cursor.execute("UPDATE pulls SET study_uid = ? WHERE id = ?", (study_uid, pull_id))
            if not_before is not None:
                cursor.execute(
                    "UPDATE pulls SET not_before = ? WHERE id = ?", (not_before, pull_id)
                )
            if series is not None:
                cursor.execute(
                    "UPDATE pulls SET detail = ?, updated_at = ? WHERE id = ?",
                    (json.dumps({"series": series}), now, pull_id),
                )
            if state is not None:
                # Leaving 'running' ends the lease.
                release = "" if state == "running" else f", {lease.release_columns()}"
                cursor.execute(
                    f"UPDATE pulls SET state = ?, error = ?, updated_at = ?{release} WHERE id = ?",
                    (state, error, now, pull_id),
                )

    def keep_lease(self, pull: Pull, clock: Callable[[], float]) -> lease.LeaseKeeper:
        """A keeper renewing ``pull``'s lease every third of its length while it runs."""
        owner = pull.owner or ""
        return lease.LeaseKeeper(
            lambda: self.renew_lease(pull.id, owner, clock()), self.lease_seconds / 3
        )

    def requeue_interrupted(self, now: float) -> list[int]:
        """Pulls left running by a crash go back to the queue (retrieval is idempotent);
        one held by a live process elsewhere keeps running under its lease."""
        with self._db.transaction() as cursor:
            cursor.execute("SELECT id, owner FROM pulls WHERE state = 'running'")
            ids = [int(row["id"]) for row in cursor.fetchall() if lease.owner_is_dead(row["owner"])]
            for pull_id in ids:
                cursor.execute(
                    "UPDATE pulls SET state = 'queued', updated_at = ?,"
                    f" {lease.release_columns()} WHERE id = ?",
                    (now, pull_id),
                )
        return ids

    def get(self, pull_id: int) -> Pull | None:
        rows = self._db.query("SELECT * FROM pulls WHERE id = ?", (pull_id,))
        return _pull(rows[0]) if rows else None

    def recent(self, limit: int = 100) -> list[Pull]:
        """The newest pulls first."""
        rows = self._db.query("SELECT * FROM pulls ORDER BY id DESC LIMIT ?", (limit,))
        return [_pull(row) for row in rows]

    def for_study(self, study_uid: str) -> list[Pull]:
        rows = self._db.query("SELECT * FROM pulls WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [_pull(row) for row in rows]

    # -- expectations -----------------------------------------------------------------
    def expect(
        self,
        *,
        series_uid: str,
        study_uid: str,
        expected_count: int | None,
        source: str,
        rule: str | None,
        now: float,
    ) -> None:
        """Record the sender's count for the series' current (or first) generation."""
        with self._db.transaction() as cursor:
            cursor.execute("SELECT generation FROM series WHERE series_uid = ?", (series_uid,))
            row = cursor.fetchone()
            generation = int(row["generation"]) if row is not None else 0
            cursor.execute(
                "INSERT INTO series_expectations (series_uid, study_uid, expected_count,"
                " generation, source, rule, set_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (series_uid) DO UPDATE SET expected_count = excluded.expected_count,"
                " generation = excluded.generation, source = excluded.source,"
                " rule = excluded.rule, set_at = excluded.set_at",
                (series_uid, study_uid, expected_count, generation, source, rule, now),
            )

    def counted_series(self) -> list[str]:
        """Series still receiving that hold at least the instances their sender reported."""
        rows = self._db.query(
            "SELECT s.series_uid FROM series s JOIN series_expectations e USING (series_uid)"
            " WHERE s.state = 'receiving' AND s.generation = e.generation"
            " AND s.instance_count >= e.expected_count ORDER BY s.last_received"
        )
        return [str(row["series_uid"]) for row in rows]

    def expectation(self, series_uid: str) -> dict[str, Any] | None:
        rows = self._db.query(
            "SELECT * FROM series_expectations WHERE series_uid = ?", (series_uid,)
        )
        return dict(rows[0]) if rows else None

    def rule_for_completion(self, series_uid: str, generation: int) -> str | None:
        """The rule a pull asked for, for the completion that made ``generation``."""
        rows = self._db.query(
            "SELECT rule FROM series_expectations WHERE series_uid = ? AND generation = ?",
            (series_uid, generation - 1),
        )
        return str(rows[0]["rule"]) if rows and rows[0]["rule"] else None

    def unqueried_receiving(self, calling_aes: set[str]) -> list[tuple[str, str, int, str]]:
        """Receiving series from these senders with no expectation for their generation.

        Returns ``(series_uid, study_uid, generation, calling_ae)`` tuples.
        """
        if not calling_aes:
            return []
        marks = ",".join("?" * len(calling_aes))
        rows = self._db.query(
            "SELECT s.series_uid, s.study_uid, s.generation, s.calling_ae FROM series s"
            " LEFT JOIN series_expectations e ON e.series_uid = s.series_uid"
            f" WHERE s.state = 'receiving' AND s.calling_ae IN ({marks})"
            " AND (e.series_uid IS NULL OR e.generation != s.generation)",
            tuple(sorted(calling_aes)),
        )
        return [
            (str(r["series_uid"]), str(r["study_uid"]), int(r["generation"]), str(r["calling_ae"]))
            for r in rows
        ]

    def study_progress(self, study_uid: str) -> list[SeriesProgress]:
        """The study's series in arrival order, with their expected counts."""
        rows = self._db.query(
            "SELECT s.series_uid, s.modality, s.instance_count, s.state, s.generation,"
            " e.expected_count FROM series s LEFT JOIN series_expectations e"
            " ON e.series_uid = s.series_uid WHERE s.study_uid = ? ORDER BY s.first_received",
            (study_uid,),
        )
        return [
            SeriesProgress(
                series_uid=str(row["series_uid"]),
                modality=str(row["modality"]),
                instances=int(row["instance_count"]),
                expected=None if row["expected_count"] is None else int(row["expected_count"]),
                state=str(row["state"]),
                generation=int(row["generation"]),
            )
            for row in rows
        ]
