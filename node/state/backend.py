"""Opens the state database the configuration names: SQLite (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from node.config.state import StateSettings
from node.state.connection import Connection
from node.state.db import Database, check_integrity


def open_database(state: StateSettings, sqlite_path: Path, *, check: bool = True) -> Connection:
    """The node's state database, migrated to the current schema.

    ``sqlite_path`` is the SQLite file used unless ``state.url`` names PostgreSQL; that
    file is integrity-checked first unless ``check`` is False (a command-line tool's
    short visit; :func:`node.state.db.check_integrity`). PostgreSQL
    does its own integrity checking; psycopg is imported only when it is used.
    """
    if state.url is not None and state.is_postgres:
        from node.state.postgres import PostgresDatabase

        return PostgresDatabase(state.url)
    if check:
        check_integrity(sqlite_path)
    return Database(sqlite_path)
