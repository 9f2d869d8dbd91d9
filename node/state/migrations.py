"""The state schema as one ordered list of migrations, for SQLite and PostgreSQL.

SQLite counts versions in ``PRAGMA user_version`` (:func:`migrate`); PostgreSQL in the
one-row table ``ainode_schema`` (:func:`migrate_postgres`, which creates the same legacy
tables, the audit guards as PL/pgSQL triggers, then runs the same :data:`MIGRATIONS`).

Version 4 is the schema of every node before issue 12 (which added some columns without
counting a version, so reaching it is idempotent and repairs any older file). Each later
:class:`Migration` runs once, in its own transaction with the new ``user_version``, so
a database is always at exactly one version. A fresh database takes the same path as an
old one. A database with a newer version than this code knows is refused.

The SQLite-specific code of the state layer is here (``PRAGMA``, ``sqlite_master``, table
rebuilds of old files) and in :mod:`node.state.db`; a migration step sees a
:class:`~node.state.connection.Cursor` of either backend (``_table_columns`` asks each in
its own way), and :mod:`node.state.postgres` translates the statements' types.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import DatabaseTooNew
from node.state.connection import Cursor
from node.state.events import EVENT_NAMES, EventCode

log = logging.getLogger(__name__)

#: The version the code before issue 12 wrote (``LEGACY_SCHEMA`` and ``_legacy_upgrade``).
LEGACY_VERSION = 4

#: The tables and indexes every node before issue 12 created (idempotent, portable
#: statements: PostgreSQL reads them through :func:`node.state.postgres.translate`).
LEGACY_TABLES = """
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
"""

#: The append-only guards of the two audit tables, in SQLite's trigger syntax.
LEGACY_TRIGGERS_SQLITE = """
CREATE TRIGGER IF NOT EXISTS dicom_audit_no_update BEFORE UPDATE ON dicom_audit
BEGIN SELECT RAISE(ABORT, 'the DICOM audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

#: The same guards in PostgreSQL (a function raising, run before each row change).
LEGACY_TRIGGERS_POSTGRES = (
    "CREATE OR REPLACE FUNCTION ainode_append_only() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN RAISE EXCEPTION USING MESSAGE = TG_ARGV[0] || ' is append-only',"
    " ERRCODE = 'integrity_constraint_violation'; END $$",
    "CREATE TRIGGER dicom_audit_no_update BEFORE UPDATE ON dicom_audit FOR EACH ROW"
    " EXECUTE FUNCTION ainode_append_only('the DICOM audit trail')",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW"
    " EXECUTE FUNCTION ainode_append_only('the audit log')",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW"
    " EXECUTE FUNCTION ainode_append_only('the audit log')",
)

#: The schema every node before issue 12 created, as SQLite runs it (tables and triggers).
LEGACY_SCHEMA = LEGACY_TABLES + LEGACY_TRIGGERS_SQLITE


_JOB_STATE_CHECK = (
    "CHECK (state IN ('queued', 'running', 'exporting', 'done', 'failed', 'skipped', 'cancelled'))"
)


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    """The column names of ``table`` (empty when it does not exist)."""
    return {r[1] for r in connection.execute(f"PRAGMA table_info({table})").fetchall()}


def _legacy_upgrade(connection: sqlite3.Connection) -> None:
    """Bring a database of any node before issue 12 to its last schema (idempotent: those
    nodes added columns without always counting a new version)."""
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


def _pull_tables(cursor: Cursor) -> None:
    # Pull rows and series expectations: created by PullStore itself before issue 12.
    cursor.execute(
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
)"""
    )
    cursor.execute("CREATE INDEX IF NOT EXISTS pulls_state ON pulls (state, id)")
    cursor.execute("CREATE INDEX IF NOT EXISTS pulls_study ON pulls (study_uid)")
    cursor.execute(
        """CREATE TABLE IF NOT EXISTS series_expectations (
    series_uid      TEXT PRIMARY KEY,
    study_uid       TEXT NOT NULL,
    expected_count  INTEGER,
    generation      INTEGER NOT NULL,
    source          TEXT NOT NULL,
    rule            TEXT,
    set_at          REAL NOT NULL
)"""
    )


def _table_columns(cursor: Cursor, table: str) -> set[str]:
    """The column names of ``table`` in either dialect (empty when it does not exist)."""
    if getattr(cursor, "dialect", "sqlite") == "postgresql":
        cursor.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {str(r[0]) for r in cursor.fetchall()}
    return {r[1] for r in cursor.execute(f"PRAGMA table_info({table})").fetchall()}


def _add_column(cursor: Cursor, table: str, column: str, declaration: str) -> None:
    """``ALTER TABLE … ADD COLUMN`` unless the column is there (a database that a test or a
    hand repair left with it)."""
    if column not in _table_columns(cursor, table):
        cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _event_codes(cursor: Cursor) -> None:
    _add_column(cursor, "job_events", "code", "TEXT NOT NULL DEFAULT ''")
    # Backfill once from the names (and, for the final export failure, the wording) that
    # older nodes wrote; from here on every event is written with its code.
    cursor.execute(
        "UPDATE job_events SET code = ? WHERE event = 'failed' AND detail LIKE 'export failed%'"
        " AND code = ''",
        (EventCode.EXPORT_FAILED.value,),
    )
    for code, name in EVENT_NAMES.items():
        if code is EventCode.EXPORT_FAILED:
            continue
        cursor.execute(
            "UPDATE job_events SET code = ? WHERE event = ? AND code = ''", (code.value, name)
        )
    cursor.execute("CREATE INDEX IF NOT EXISTS job_events_code ON job_events (code)")


def _leases(cursor: Cursor) -> None:
    for table in ("jobs", "pulls"):
        _add_column(cursor, table, "owner", "TEXT")
        _add_column(cursor, table, "lease_expires_at", "REAL")
        # A claim looks for expired leases among the running rows through this index.
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_lease ON {table} (state, lease_expires_at)"
        )


def _received_by(cursor: Cursor) -> None:
    # Which node received each instance (several nodes may share one state and spool).
    _add_column(cursor, "instances", "received_by", "TEXT NOT NULL DEFAULT ''")


def _workitems(cursor: Cursor) -> None:
    """UPS workitems (PS3.4 Annex CC) and their event subscriptions (node/state/workitems.py)."""
    cursor.execute(
        """CREATE TABLE IF NOT EXISTS workitems (
            uid             TEXT PRIMARY KEY,
            state           TEXT NOT NULL
                            CHECK (state IN ('SCHEDULED', 'IN PROGRESS', 'CANCELED', 'COMPLETED')),
            transaction_uid TEXT,
            dataset         TEXT NOT NULL,
            task            TEXT NOT NULL DEFAULT '',
            routine         TEXT NOT NULL DEFAULT '',
            priority        TEXT NOT NULL DEFAULT 'MEDIUM',
            scheduled_at    REAL,
            performer       TEXT NOT NULL DEFAULT '',
            job_id          INTEGER,
            pull_id         INTEGER,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            created_by      TEXT NOT NULL DEFAULT '',
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL
        )"""
    )
    cursor.execute("CREATE INDEX IF NOT EXISTS workitems_state ON workitems (state, scheduled_at)")
    cursor.execute("CREATE INDEX IF NOT EXISTS workitems_job ON workitems (job_id)")
    cursor.execute(
        """CREATE TABLE IF NOT EXISTS ups_subscriptions (
            ae_title        TEXT NOT NULL,
            workitem_uid    TEXT NOT NULL,
            deletion_lock   INTEGER NOT NULL DEFAULT 0,
            filter          TEXT NOT NULL DEFAULT '',
            created_at      REAL NOT NULL,
            PRIMARY KEY (ae_title, workitem_uid)
        )"""
    )


def _performed_workitems(cursor: Cursor) -> None:
    # The node as a UPS performer: one row per workitem it claimed on another worklist.
    cursor.execute(
        """CREATE TABLE IF NOT EXISTS performed_workitems (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source          TEXT NOT NULL,
    workitem_uid    TEXT NOT NULL,
    transaction_uid TEXT NOT NULL,
    rule            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'claiming'
                    CHECK (state IN ('claiming', 'fetching', 'running', 'completed',
                                     'canceled', 'lost')),
    workitem        TEXT NOT NULL DEFAULT '{}',
    pull_id         INTEGER,
    job_id          INTEGER,
    after_job_id    INTEGER NOT NULL DEFAULT 0,
    progress        INTEGER NOT NULL DEFAULT -1,
    reason          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (source, workitem_uid, transaction_uid)
)"""
    )
    cursor.execute(
        "CREATE INDEX IF NOT EXISTS performed_workitems_state ON performed_workitems (state)"
    )


def _one_pending_pull(cursor: Cursor) -> None:
    # At most one queued or running pull per request (source, study, series, rule): a
    # repeated request (an Orthanc retry) finds the first one instead of adding another.
    # Older duplicates fail, naming the pull they repeat (retrieval would fetch the same).
    cursor.execute(
        "SELECT id, source, study_uid, series_uid, rule FROM pulls"
        " WHERE state IN ('queued', 'running') ORDER BY id"
    )
    first: dict[tuple[str, str, str, str], int] = {}
    for row in cursor.fetchall():
        key = (row["source"], row["study_uid"], row["series_uid"] or "", row["rule"] or "")
        if key in first:
            cursor.execute(
                "UPDATE pulls SET state = 'failed', error = ?, owner = NULL,"
                " lease_expires_at = NULL WHERE id = ?",
                (f"a repeat of pull {first[key]}", row["id"]),
            )
        else:
            first[key] = int(row["id"])
    cursor.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS pulls_pending ON pulls"
        " (source, study_uid, COALESCE(series_uid, ''), COALESCE(rule, ''))"
        " WHERE state IN ('queued', 'running')"
    )


@dataclass(frozen=True)
class Migration:
    """One step of the schema: run once to move a database to ``version``."""

    version: int
    description: str
    apply: Callable[[Cursor], None]


#: Every step after the legacy schema, in order (append only; never edit a released one).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(5, "pull tables join the migration list", _pull_tables),
    Migration(6, "job events carry a structured code (backfilled from their names)", _event_codes),
    Migration(7, "jobs and pulls carry an owner and a lease", _leases),
    Migration(8, "instances name the node that received them", _received_by),
    Migration(9, "UPS workitems and their subscriptions", _workitems),
    Migration(10, "workitems the node performs for another worklist", _performed_workitems),
    Migration(11, "one queued or running pull per request", _one_pending_pull),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def user_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def migrate(connection: sqlite3.Connection, path: object = "") -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it had.

    Raises
    ------
    DatabaseTooNew
        The file was written by a newer node (its ``user_version`` is higher).
    """
    found = user_version(connection)
    if found > SCHEMA_VERSION:
        raise DatabaseTooNew(
            f"state database {path} has schema version {found}, newer than this node knows"
            f" ({SCHEMA_VERSION}): it was written by a newer ainode. Run that version, or"
            " restore a backup made by this one; the node does not start on it."
        )
    if found <= LEGACY_VERSION:
        # executescript commits on its own; the legacy statements are idempotent.
        connection.executescript(LEGACY_SCHEMA)
        _legacy_upgrade(connection)
        connection.execute(f"PRAGMA user_version={LEGACY_VERSION}")
    for migration in MIGRATIONS:
        if migration.version <= user_version(connection):
            continue
        log.info(
            "migrating state database to version %d: %s", migration.version, migration.description
        )
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            migration.apply(cursor)
            cursor.execute(f"PRAGMA user_version={migration.version}")
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
    return found


#: The advisory lock key under which a PostgreSQL database is migrated (one node at a time).
_MIGRATION_LOCK = 0x61696E6F6465  # "ainode"


def _statements(script: str) -> list[str]:
    """The statements of a script of plain DDL (no ``--`` comments, split at ``;``)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate_postgres(cursor: Cursor, where: object = "") -> int:
    """Bring a PostgreSQL database to :data:`SCHEMA_VERSION` (inside the caller's
    transaction, so a failed step leaves it as it was); return the version it had.

    The version lives in the one-row table ``ainode_schema``. The legacy tables are
    created from the same statements as SQLite's; the migrations after them are the
    same list.

    Raises
    ------
    DatabaseTooNew
        The database was written by a newer node.
    """
    cursor.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    cursor.execute("CREATE TABLE IF NOT EXISTS ainode_schema (version INTEGER NOT NULL)")
    cursor.execute("SELECT version FROM ainode_schema")
    row = cursor.fetchone()
    found = 0 if row is None else int(row[0])
    if row is None:
        cursor.execute("INSERT INTO ainode_schema (version) VALUES (0)")
    if found > SCHEMA_VERSION:
        raise DatabaseTooNew(
            f"state database {where} has schema version {found}, newer than this node knows"
            f" ({SCHEMA_VERSION}): it was written by a newer ainode. Run that version, or"
            " restore a backup made by this one; the node does not start on it."
        )
    version = found
    if version <= LEGACY_VERSION:
        for statement in _statements(LEGACY_TABLES):
            cursor.execute(statement)
        for statement in LEGACY_TRIGGERS_POSTGRES:
            cursor.execute(statement)
        version = LEGACY_VERSION
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        log.info(
            "migrating state database to version %d: %s", migration.version, migration.description
        )
        migration.apply(cursor)
        version = migration.version
    cursor.execute("UPDATE ainode_schema SET version = ?", (version,))
    return found
