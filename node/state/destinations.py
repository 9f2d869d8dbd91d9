"""DICOM destinations in the state database (seeded once from the YAML, like rules).

The exporter reads :meth:`DestinationStore.mapping` on every attempt, so a changed
address applies to the next send. Validation of new definitions is
:func:`node.admin.destinations.parse_destination`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from node.config import CHECK_FILES, AnyDestination
from node.errors import Conflict, InvalidInput, NotFound
from node.state.connection import Connection

SEEDED_KEY = "destinations_seeded_from_config"
_DESTINATION: TypeAdapter[AnyDestination] = TypeAdapter(AnyDestination)
#: Retry settings every destination had before the time budget (issue 11 item 13).
_OLD_RETRY_DEFAULTS: dict[str, Any] = {
    "max_attempts": 5,
    "backoff_seconds": 2.0,
    "max_backoff_seconds": 300.0,
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _stored(definition: str) -> AnyDestination:
    """A saved destination; its TLS files were checked when it was saved and are read
    again at each send (a missing one fails that destination's attempts, with the reason)."""
    return _DESTINATION.validate_python(json.loads(definition), context={CHECK_FILES: False})


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise InvalidInput(
            "destination names use letters, digits and _ . - (at most 64)",
            [("name", "letters, digits and _ . - only")],
        )


class DestinationStore:
    def __init__(self, db: Connection) -> None:
        self._db = db

    def seed(self, destinations: Mapping[str, AnyDestination], now: float) -> bool:
        with self._db.transaction() as cursor:
            # The mark first, inserted only if absent: of nodes starting together on one
            # shared state, exactly one seeds (the others' inserts change nothing).
            cursor.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (SEEDED_KEY, json.dumps(now)),
            )
            if cursor.rowcount != 1:
                return False
            for name, destination in destinations.items():
                cursor.execute(
                    "INSERT INTO destinations (name, definition, updated_at, updated_by)"
                    " VALUES (?, ?, ?, 'config') ON CONFLICT (name) DO NOTHING",
                    (name, json.dumps(destination.model_dump(mode="json")), now),
                )
        return True

    def mapping(self) -> dict[str, AnyDestination]:
        rows = self._db.query("SELECT name, definition FROM destinations ORDER BY name")
        return {row["name"]: _stored(row["definition"]) for row in rows}

    def get(self, name: str) -> AnyDestination:
        rows = self._db.query("SELECT definition FROM destinations WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no destination named {name!r}")
        return _stored(rows[0]["definition"])

    def put(
        self, name: str, destination: AnyDestination, user: str, now: float, *, create: bool
    ) -> AnyDestination | None:
        """Create (``create``) or replace a destination; return the previous value."""
        check_name(name)
        previous = self.mapping().get(name)
        if create and previous is not None:
            raise Conflict(f"a destination named {name!r} already exists")
        if not create and previous is None:
            raise NotFound(f"no destination named {name!r}")
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO destinations (name, definition, updated_at, updated_by)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " definition = excluded.definition, updated_at = excluded.updated_at,"
                " updated_by = excluded.updated_by",
                (name, json.dumps(destination.model_dump(mode="json")), now, user),
            )
        return previous

    def upgrade_retry_defaults(self, now: float) -> list[str]:
        """Give stored destinations that still hold the old default retry settings (5
        attempts from 2 s, about 30 s in all) the day-long default budget; return their names.

        Definitions are stored with every field, so the old defaults were written into each
        destination seeded or saved before the budget existed (``give_up_after_seconds``).
        """
        upgraded = []
        with self._db.transaction() as cursor:
            cursor.execute("SELECT name, definition FROM destinations ORDER BY name")
            for row in cursor.fetchall():
                data = json.loads(row["definition"])
                if "give_up_after_seconds" in data or any(
                    data.get(key) != value for key, value in _OLD_RETRY_DEFAULTS.items()
                ):
                    continue
                for key in _OLD_RETRY_DEFAULTS:
                    data.pop(key)
                destination = _DESTINATION.validate_python(data)
                cursor.execute(
                    "UPDATE destinations SET definition = ?, updated_at = ?,"
                    " updated_by = 'upgrade' WHERE name = ?",
                    (json.dumps(destination.model_dump(mode="json")), now, row["name"]),
                )
                upgraded.append(str(row["name"]))
        return upgraded

    def delete(self, name: str) -> AnyDestination:
        previous = self.get(name)
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM destinations WHERE name = ?", (name,))
        return previous
