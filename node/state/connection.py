"""What the state stores need of a database: a DB-API shaped cursor and connection.

The stores are written against :class:`Cursor` and :class:`Connection` (``?``
placeholders, rows addressable by column name): :class:`node.state.db.Database` is SQLite,
:class:`node.state.postgres.PostgresDatabase` PostgreSQL; nothing above :mod:`node.state`
sees a ``sqlite3`` or ``psycopg`` type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

#: A fetched row: values by column name.
Row = Mapping[str, Any]


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def execute(self, sql: str, parameters: Sequence[object] = ..., /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """A state database: short write transactions and read queries.

    ``dialect`` is ``"sqlite"`` or ``"postgresql"`` (their cursors carry it too where
    a statement must differ, e.g. a claim's row lock).
    """

    @property
    def dialect(self) -> str: ...

    def transaction(self) -> AbstractContextManager[Cursor]: ...

    def query(self, sql: str, parameters: tuple[object, ...] = ()) -> Sequence[Any]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
