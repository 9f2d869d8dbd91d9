"""DICOM destinations kept in the state database (seeded once from the YAML, like rules).

The exporter reads :meth:`DestinationStore.mapping` on every attempt, so a
changed address applies to the next send.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from pydantic import TypeAdapter, ValidationError

from node.config import AnyDestination
from node.config.destinations import DEFAULT_DESTINATION_KIND
from node.errors import InvalidInput
from node.export.senders import SENDERS

log = logging.getLogger(__name__)

#: A destination of any kind registered in :data:`node.export.senders.SENDERS`.
_DESTINATION: TypeAdapter[AnyDestination] = TypeAdapter(AnyDestination)


def parse_destination(data: Mapping[str, Any] | Any) -> AnyDestination:
    """Validate a destination; raise :class:`InvalidInput` naming each bad field."""
    if not isinstance(data, Mapping):
        raise InvalidInput("a destination must be a JSON object", [("destination", "object")])
    try:
        return _DESTINATION.validate_python(dict(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = error["loc"]
            if error["type"] == "destination_kind":
                location = ("kind",)
            field = ".".join(str(p) for p in location) or "destination"
            message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
            if error["type"] == "string_pattern_mismatch" and field == "ae_title":
                message = "1 to 16 printable ASCII characters, no backslash"
            problems.append((field, message))
        raise InvalidInput(
            "the destination is invalid: " + "; ".join(f"{f}: {m}" for f, m in problems),
            problems,
        ) from None


#: What the API, the console and the audit log show instead of a stored password or token.
REDACTED = "********"
_SECRET_FIELDS = ("password", "token")


def destination_kinds() -> list[dict[str, Any]]:
    """Every registered destination kind with its console form, default kind first."""
    kinds = sorted(SENDERS.values(), key=lambda k: (k.name != DEFAULT_DESTINATION_KIND, k.name))
    return [{"name": kind.name, **asdict(kind.form)} for kind in kinds]


def destination_view(destination: AnyDestination) -> dict[str, Any]:
    """The destination as JSON, its DICOMweb password and token replaced by :data:`REDACTED`.

    Viewers may read destinations; the credentials the node sends are for the node only.
    """
    data = destination.model_dump(mode="json")
    auth = data.get("auth")
    if isinstance(auth, dict):
        for field in _SECRET_FIELDS:
            if auth.get(field):
                auth[field] = REDACTED
    return data


def restore_secrets(data: Any, previous: AnyDestination | None) -> Any:
    """``data`` with :data:`REDACTED` credentials replaced by the stored ones.

    An edit sends back the view it was shown; a redacted field means "unchanged".
    Without a stored value to keep, the placeholder is refused (it is not a password).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("auth"), Mapping):
        return data
    auth = dict(data["auth"])
    stored = getattr(previous, "auth", None)
    for field in _SECRET_FIELDS:
        if auth.get(field) != REDACTED:
            continue
        kept = getattr(stored, field, "") if stored is not None else ""
        if not kept or getattr(stored, "type", None) != auth.get("type", "none"):
            raise InvalidInput(
                f"auth.{field}: {REDACTED!r} stands for a stored {field}, and there is none"
                " to keep; give the new value",
                [(f"auth.{field}", "give the value, not the placeholder")],
            )
        auth[field] = kept
    return {**data, "auth": auth}
