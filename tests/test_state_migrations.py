"""The ordered migration list: an old node's database upgrades in place, a fresh one gets
the latest version, and a newer one is refused.

``tests/data/state_v4.sql`` was dumped from a database written by the stores of the
commit before issue 12 (``tests/data/make_state_v4.py`` says how).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.errors import DatabaseTooNew
from node.state.db import Database
from node.state.events import EventCode
from node.state.jobs import JobQueue
from node.state.metrics import MetricsQueries
from node.state.migrations import LEGACY_VERSION, MIGRATIONS, SCHEMA_VERSION
from node.state.pulls import PullStore

DUMP = Path(__file__).parent / "data" / "state_v4.sql"
TABLES = (
    "series",
    "instances",
    "jobs",
    "job_events",
    "pulls",
    "series_expectations",
    "users",
    "api_tokens",
    "audit",
    "dicom_audit",
)


def _old_database(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.executescript(DUMP.read_text())
    return path


def _counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        return {t: connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


def _columns(path: Path) -> dict[str, set[str]]:
    with sqlite3.connect(path) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: {row[1] for row in connection.execute(f"PRAGMA table_info({t})")} for t in tables
        }


def test_the_versions_are_ordered_and_follow_the_legacy_schema() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(LEGACY_VERSION + 1, LEGACY_VERSION + 1 + len(versions)))
    assert versions[-1] == SCHEMA_VERSION


def test_a_database_of_the_previous_node_upgrades_in_place(tmp_path: Path) -> None:
    path = _old_database(tmp_path / "state.sqlite3")
    before = _counts(path)
    assert all(before.values()), before  # the dump holds rows of every table
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == LEGACY_VERSION

    db = Database(path)
    try:
        assert db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert _counts(path) == before  # no row lost
        # Codes backfilled once from the old names (and the export failure's wording).
        codes = {
            (row["event"], row["detail"][:13]): row["code"]
            for row in db.query("SELECT event, detail, code FROM job_events")
        }
        assert codes[("failed", "export failed")] == EventCode.EXPORT_FAILED
        assert codes[("failed", "RuntimeError:")] == EventCode.JOB_FAILED
        assert codes[("export_retry_scheduled", "pacs: refused")] == EventCode.EXPORT_RETRY
        assert codes[("sent", "pacs")] == EventCode.EXPORT_SENT
        assert not db.query("SELECT 1 FROM job_events WHERE code = ''")
        assert MetricsQueries(db).export_failures() == 2
        assert [(s.plugin, s.check, s.count) for s in MetricsQueries(db).quality_skips()] == [
            ("ct_lungs", "slices", 1)
        ]
        # The old node's running job and pull (no owner) come back at start-up.
        queue, pulls = JobQueue(db), PullStore(db)
        (running,) = queue.jobs(state="running")
        assert running.owner is None
        assert queue.requeue_interrupted(1_800_000_000.0) == [running.id]
        assert [p.state for p in pulls.recent()] == ["queued", "running"]
        assert len(pulls.requeue_interrupted(1_800_000_000.0)) == 1
        # And the upgraded database works: the queue claims with a lease.
        claimed = queue.claim_next(1_800_000_001.0, "owner")
        assert claimed is not None and claimed.owner == "owner"
    finally:
        db.close()
    # Opening it again changes nothing (each migration runs once).
    after = _counts(path)
    Database(path).close()
    assert _counts(path) == after


def test_a_fresh_database_gets_the_latest_schema_the_same_as_an_upgraded_one(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "fresh.sqlite3"
    Database(fresh).close()
    with sqlite3.connect(fresh) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    upgraded = _old_database(tmp_path / "old.sqlite3")
    Database(upgraded).close()
    assert _columns(fresh) == _columns(upgraded)


def test_a_database_from_a_newer_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    Database(path).close()
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(DatabaseTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Database(path)
    with sqlite3.connect(path) as connection:  # left as it was
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
