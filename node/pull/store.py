"""Pull requests and expected instance counts, kept in the state database.

Two tables of their own (created here, idempotently, so the shared schema in
:mod:`node.state.db` is untouched):

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
from dataclasses import dataclass
from typing import Any

from node.state.db import Database

log = logging.getLogger(__name__)

PULL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pulls (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT NOT NULL,
    study_uid   TEXT NOT NULL,
    series_uid  TEXT,
    rule        TEXT,
    origin      TEXT NOT NULL DEFAULT 'api',
    state       TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    not_before  REAL NOT NULL DEFAULT 0,
    detail      TEXT NOT NULL DEFAULT '{}',
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS pulls_state ON pulls (state, id)",
    "CREATE INDEX IF NOT EXISTS pulls_study ON pulls (study_uid)",
    """CREATE TABLE IF NOT EXISTS series_expectations (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    expected_count  INTEGER,
    generation      INTEGER NOT NULL,
    source          TEXT NOT NULL,
    rule            TEXT,
    set_at          REAL NOT NULL
)""",
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


def _pull(row: Any) -> Pull:
    data = dict(row)
    data["detail"] = json.loads(data["detail"] or "{}")
    return Pull(**data)


class PullStore:
    """Pull rows and series expectations on top of :class:`~node.state.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db
        with db.transaction() as cursor:
            for statement in PULL_SCHEMA:
                cursor.execute(statement)

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
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO pulls (source, study_uid, series_uid, rule, origin, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (source, study_uid, series_uid, rule, origin, now, now),
            )
            pull_id = int(cursor.lastrowid or 0)
            cursor.execute("SELECT * FROM pulls WHERE id = ?", (pull_id,))
            return _pull(cursor.fetchone())

    def claim(self, now: float) -> Pull | None:
        """Mark the oldest queued pull running and return it."""
        with self._db.transaction() as cursor:
            cursor.execute(
                "SELECT id FROM pulls WHERE state = 'queued' AND not_before <= ?"
                " ORDER BY id LIMIT 1",
                (now,),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute(
                "UPDATE pulls SET state = 'running', attempts = attempts + 1, updated_at = ?"
                " WHERE id = ?",
                (now, row["id"]),
            )
            cursor.execute("SELECT * FROM pulls WHERE id = ?", (row["id"],))
            return _pull(cursor.fetchone())

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
                cursor.execute(
                    "UPDATE pulls SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                    (state, error, now, pull_id),
                )

    def requeue_interrupted(self, now: float) -> list[int]:
        """Pulls left running by a crash go back to the queue (retrieval is idempotent)."""
        with self._db.transaction() as cursor:
            cursor.execute("SELECT id FROM pulls WHERE state = 'running'")
            ids = [int(row["id"]) for row in cursor.fetchall()]
            cursor.execute(
                "UPDATE pulls SET state = 'queued', updated_at = ? WHERE state = 'running'", (now,)
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
