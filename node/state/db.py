"""The node's SQLite state database: one file, WAL mode, one schema.

Every box keeps its own tables (``instances``/``series`` for ingest,
``jobs``/``job_events`` for the queue) but shares this connection, so a
single lock serialises writers and each write is one short transaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.errors import DatabaseCorrupt

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    modality        TEXT NOT NULL DEFAULT '',
    calling_ae      TEXT NOT NULL DEFAULT '',
    called_ae       TEXT NOT NULL DEFAULT '',
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL,
    instance_count  INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'receiving'
                    CHECK (state IN ('receiving', 'complete')),
    completed_at    REAL,
    generation      INTEGER NOT NULL DEFAULT 0,
    -- the generation whose jobs were queued (committed with them: a lag means undispatched)
    dispatched_generation INTEGER NOT NULL DEFAULT 0,
    -- completion held (aborted association, restart mid-receive) until this time, and why
    hold_until      REAL,
    hold_reason     TEXT,
    -- when this generation's first instance arrived (the maximum receiving age counts from it)
    generation_started REAL,
    -- why this generation completed or waited other than by the quiet period (told to its jobs)
    completion_note TEXT
);
CREATE INDEX IF NOT EXISTS series_state ON series (state, last_received);

CREATE TABLE IF NOT EXISTS instances (
    sop_uid         TEXT PRIMARY KEY,
    series_uid      TEXT NOT NULL REFERENCES series (series_uid),
    study_uid       TEXT NOT NULL,
    sop_class_uid   TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path            TEXT NOT NULL,
    size            INTEGER NOT NULL,
    received_at     REAL NOT NULL
);
-- every completion, for the bound on generations per series per window
CREATE TABLE IF NOT EXISTS series_completions (
    series_uid      TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    completed_at    REAL NOT NULL,
    PRIMARY KEY (series_uid, generation)
);

-- the DICOM audit trail (node/state/dicom_audit.py): no patient names or IDs
CREATE TABLE IF NOT EXISTS dicom_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    event_type  TEXT NOT NULL,
    event_code  TEXT NOT NULL,
    outcome     INTEGER NOT NULL,
    actor       TEXT NOT NULL DEFAULT '',
    peer        TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    study_uid   TEXT NOT NULL DEFAULT '',
    series_uid  TEXT NOT NULL DEFAULT '',
    instances   INTEGER NOT NULL DEFAULT 0,
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dicom_audit_at ON dicom_audit (at);
CREATE TRIGGER IF NOT EXISTS dicom_audit_no_update BEFORE UPDATE ON dicom_audit
BEGIN SELECT RAISE(ABORT, 'the DICOM audit trail is append-only'); END;

CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);

CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    generation      INTEGER NOT NULL,
    rule            TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    destinations    TEXT NOT NULL DEFAULT '[]',
    priority        INTEGER NOT NULL DEFAULT 5,
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'exporting', 'done', 'failed',
                                     'skipped', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    export_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    error           TEXT,
    result_dir      TEXT,
    pending_destinations TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    updated_at      REAL NOT NULL,
    shadow          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, priority, id);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs (series_uid);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);

CREATE TABLE IF NOT EXISTS job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    at      REAL NOT NULL,
    event   TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);

-- Administration (node/admin): rules and destinations edited at run time, users,
-- sessions, API tokens and the append-only audit log.
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS rules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    position    INTEGER NOT NULL,
    definition  TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    updated_at  REAL NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS rule_versions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id     INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT NOT NULL,
    definition  TEXT,
    action      TEXT NOT NULL,
    at          REAL NOT NULL,
    user        TEXT NOT NULL,
    UNIQUE (rule_id, version)
);

CREATE TABLE IF NOT EXISTS destinations (
    name        TEXT PRIMARY KEY,
    definition  TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS series_info (
    series_uid          TEXT PRIMARY KEY,
    study_date          TEXT NOT NULL DEFAULT '',
    study_description   TEXT NOT NULL DEFAULT '',
    series_description  TEXT NOT NULL DEFAULT '',
    accession_number    TEXT NOT NULL DEFAULT '',
    body_part           TEXT NOT NULL DEFAULT '',
    series_number       TEXT NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS users (
    username        TEXT PRIMARY KEY,
    password_hash   TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    created_at      REAL NOT NULL,
    disabled        INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS sessions (
    id_hash     TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    last_seen_at REAL NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    last_used   REAL,
    revoked     INTEGER NOT NULL DEFAULT 0,
    expires_at  REAL
);

CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    user        TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    before      TEXT,
    after       TEXT
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


_JOB_STATE_CHECK = (
    "CHECK (state IN ('queued', 'running', 'exporting', 'done', 'failed', 'skipped', 'cancelled'))"
)


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (empty when it does not exist)."""
    return {r[1] for r in connection.execute(f"PRAGMA table_info({table})").fetchall()}


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a database written by an older schema up to date (idempotent)."""
    row = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()
    if row is not None and "'skipped'" not in row[0]:
        # SQLite cannot alter a CHECK constraint: rebuild the table with the current one
        # (older tables lack 'cancelled' and/or 'skipped').
        log.info("migrating jobs table: adding the cancelled/skipped states")
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("BEGIN IMMEDIATE")
        new_sql = re.sub(
            r"CHECK \(state IN \([^)]*\)\)", _JOB_STATE_CHECK, row[0], count=1
        ).replace("CREATE TABLE jobs", "CREATE TABLE jobs_migrated", 1)
        connection.execute(new_sql)
        connection.execute("INSERT INTO jobs_migrated SELECT * FROM jobs")
        connection.execute("DROP TABLE jobs")
        connection.execute("ALTER TABLE jobs_migrated RENAME TO jobs")
        connection.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, priority, id)")
        connection.execute("CREATE INDEX IF NOT EXISTS jobs_series ON jobs (series_uid)")
        connection.execute("CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)")
        connection.execute("COMMIT")
        connection.execute("PRAGMA foreign_keys=ON")
    columns = _columns(connection, "jobs")
    if "shadow" not in columns:
        log.info("migrating jobs table: adding the shadow flag")
        connection.execute("ALTER TABLE jobs ADD COLUMN shadow INTEGER NOT NULL DEFAULT 0")
    columns = _columns(connection, "sessions")
    if "last_seen_at" not in columns:
        log.info("migrating sessions table: adding the last request time (idle timeout)")
        connection.execute("ALTER TABLE sessions ADD COLUMN last_seen_at REAL NOT NULL DEFAULT 0")
        connection.execute("UPDATE sessions SET last_seen_at = created_at")
    columns = _columns(connection, "series")
    if "dispatched_generation" not in columns:
        log.info("migrating series table: adding the dispatched generation and completion hold")
        connection.execute(
            "ALTER TABLE series ADD COLUMN dispatched_generation INTEGER NOT NULL DEFAULT 0"
        )
        connection.execute("ALTER TABLE series ADD COLUMN hold_until REAL")
        connection.execute("ALTER TABLE series ADD COLUMN hold_reason TEXT")
        # Older nodes completed and dispatched in two transactions. A series with a job for
        # its generation was dispatched; one completed in the last day without one may have
        # been lost between the two and is dispatched again at start-up (no rule matching
        # is harmless). Older ones are left alone: today's rules could match them.
        connection.execute(
            "UPDATE series SET dispatched_generation = generation WHERE state != 'complete'"
            " OR EXISTS (SELECT 1 FROM jobs WHERE jobs.series_uid = series.series_uid"
            " AND jobs.generation = series.generation)"
            " OR completed_at < (SELECT MAX(completed_at) FROM series) - 86400"
        )
    columns = _columns(connection, "api_tokens")
    if columns and "expires_at" not in columns:
        log.info("migrating api_tokens table: adding the expiry")
        connection.execute("ALTER TABLE api_tokens ADD COLUMN expires_at REAL")
    columns = _columns(connection, "series")
    if "generation_started" not in columns:
        log.info("migrating series table: adding the generation start and completion note")
        connection.execute("ALTER TABLE series ADD COLUMN generation_started REAL")
        connection.execute("ALTER TABLE series ADD COLUMN completion_note TEXT")


def check_integrity(path: Path) -> None:
    """Run ``PRAGMA quick_check`` on the database at ``path`` (if it exists) and log it.

    Raises
    ------
    DatabaseCorrupt
        The check found damage, or the file is not a readable SQLite database; the
        message names the file and what to do. The node refuses to start on it rather
        than run on state it cannot trust.
    """
    if not path.exists():
        return
    started = time.perf_counter()
    try:
        connection = sqlite3.connect(path, timeout=30.0)
        try:
            found = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    if found == ["ok"]:
        log.info(
            "database integrity check ok path=%s seconds=%.3f", path, time.perf_counter() - started
        )
        return
    problem = "; ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
    log.critical("database integrity check failed path=%s problem=%s", path, problem)
    raise DatabaseCorrupt(
        f"state database {path} failed its integrity check (PRAGMA quick_check: {problem});"
        " the node does not start on it. Stop the node, move the file and its -wal/-shm files"
        " aside (keep them for repair, e.g. sqlite3's .recover) and start again: the node"
        " re-records every spooled instance, but jobs, users and the audit log start empty"
        " unless restored from a backup."
    )


class Database:
    """A thread-safe SQLite connection with the node's schema applied.

    WAL with ``synchronous=NORMAL``: a commit survives a crash of the process
    but the last commits may be lost on power failure. That is safe because
    the spool, not this table, is the record of what was accepted: every
    instance file is fsynced before the SCP answers, and at start-up
    :meth:`node.orchestration.ingest.Ingestor.recover` re-records spooled files that have
    no row. ``FULL`` would cost ~5 ms per instance here (measured), a third
    of the receive time.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() (only the thread holding the lock)
        self._connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        # executescript commits on its own; the schema statements are idempotent.
        self._connection.executescript(SCHEMA)
        _migrate(self._connection)
        self._connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """Run statements in one ``BEGIN IMMEDIATE`` transaction under the lock.

        Nested in another transaction of the same thread it is a savepoint: its
        statements commit with the outer transaction, or not at all. A failed
        commit (e.g. ``database or disk is full``) is rolled back, so the
        connection is usable again once the cause is gone.
        """
        with self._lock:
            cursor = self._connection.cursor()
            depth = self._depth
            name = f"s{depth}"
            cursor.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield cursor
                cursor.execute("COMMIT" if depth == 0 else f"RELEASE {name}")
            except BaseException:
                # SQLite may have rolled back on its own (SQLITE_FULL): only undo what is open.
                if self._connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        if depth == 0:
                            cursor.execute("ROLLBACK")
                        else:
                            cursor.execute(f"ROLLBACK TO {name}")
                            cursor.execute(f"RELEASE {name}")
                raise
            finally:
                self._depth -= 1
                cursor.close()

    def query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only statement and return all rows."""
        with self._lock:
            return list(self._connection.execute(sql, parameters).fetchall())

    def close(self) -> None:
        with self._lock:
            self._connection.close()
