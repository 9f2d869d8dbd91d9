"""The node's SQLite state database: one file, WAL mode, one schema.

Every box keeps its own tables (``instances``/``series`` for ingest,
``jobs``/``job_events`` for the queue) but shares this connection, so a
single lock serialises writers and each write is one short transaction.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from node.errors import DatabaseCorrupt
from node.state.migrations import migrate

log = logging.getLogger(__name__)


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

    dialect = "sqlite"

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
        migrate(self._connection, path)

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

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query (``/readyz``)."""
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._connection.close()
