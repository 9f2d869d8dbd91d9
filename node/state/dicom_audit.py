"""The DICOM audit trail, in the spirit of IHE ATNA (RFC 3881, DICOM PS3.15 Annex A.5).

Who exchanged which DICOM objects with the node, and when: associations
accepted and rejected, instances received per association, results sent per
destination and job, instances deleted (by retention). Each event carries the
PS3.15 A.5.3 event ID (code, meaning), an RFC 3881 outcome, the actor (calling
AE title or user), the peer (host:port, AE@host:port or URL), the study and
series UIDs and an instance count. Never patient names or IDs.

To record an event from other code (e.g. retention)::

    from node.state.dicom_audit import DicomAudit, EventType

    DicomAudit(db).record(
        EventType.INSTANCES_DELETED,
        actor="retention",
        study_uid=study_uid,
        series_uid=series_uid,
        instances=count,
        detail="kept 7 days after the last job finished; 12.3 MB",
    )

The table is append-only for updates (a trigger refuses them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum, StrEnum
from typing import Any

from node.state.connection import Connection

log = logging.getLogger(__name__)


class EventType(StrEnum):
    """What happened (the ``event_type`` column and the API's ``type`` filter)."""

    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    INSTANCES_RECEIVED = "instances_received"
    RESULTS_SENT = "results_sent"
    INSTANCES_ACCESSED = "instances_accessed"
    INSTANCES_DELETED = "instances_deleted"


#: PS3.15 A.5.3 / DCM event IDs: (code value, code meaning).
EVENT_IDS: Mapping[EventType, tuple[str, str]] = {
    EventType.ASSOCIATION_ACCEPTED: ("110114", "User Authentication"),
    EventType.ASSOCIATION_REJECTED: ("110113", "Security Alert"),
    EventType.INSTANCES_RECEIVED: ("110104", "DICOM Instances Transferred"),
    EventType.RESULTS_SENT: ("110104", "DICOM Instances Transferred"),
    EventType.INSTANCES_ACCESSED: ("110103", "DICOM Instances Accessed"),
    EventType.INSTANCES_DELETED: ("110105", "DICOM Study Deleted"),
}


class AuditOutcome(IntEnum):
    """RFC 3881 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: float
    event_type: str
    event_code: str
    event_meaning: str
    outcome: int
    actor: str
    peer: str
    destination: str
    study_uid: str
    series_uid: str
    instances: int
    detail: str

    def json(self) -> dict[str, Any]:
        """The event as the API and the JSON-lines export give it (``time``: ISO 8601 UTC)."""
        return {
            **asdict(self),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.at))
            + f".{int(self.at % 1 * 1000):03d}Z",
        }


class DicomAudit:
    """Records and queries DICOM audit events in the node's state database."""

    def __init__(self, db: Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def record(
        self,
        event_type: EventType | str,
        *,
        outcome: int = AuditOutcome.SUCCESS,
        actor: str = "",
        peer: str = "",
        destination: str = "",
        study_uid: str = "",
        series_uid: str = "",
        instances: int = 0,
        detail: str = "",
        at: float | None = None,
    ) -> int:
        """Append one event; returns its id. ``detail`` must not hold patient data."""
        kind = EventType(event_type)
        code, _ = EVENT_IDS[kind]
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO dicom_audit (at, event_type, event_code, outcome, actor, peer,"
                " destination, study_uid, series_uid, instances, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._clock() if at is None else at,
                    kind.value,
                    code,
                    int(outcome),
                    actor,
                    peer,
                    destination,
                    study_uid,
                    series_uid,
                    instances,
                    detail,
                ),
            )
            return int(cursor.lastrowid or 0)

    def record_safely(self, event_type: EventType | str, **fields: Any) -> None:
        """:meth:`record`, logging instead of raising (the DICOM exchange goes on)."""
        try:
            self.record(event_type, **fields)
        except Exception:
            log.exception("could not record the DICOM audit event type=%s", event_type)

    def study_of(self, series_uid: str) -> str:
        """The study UID the node recorded for ``series_uid`` ('' when unknown)."""
        rows = self._db.query("SELECT study_uid FROM series WHERE series_uid = ?", (series_uid,))
        return str(rows[0]["study_uid"]) if rows else ""

    def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        event_type: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Events in time order (oldest first), optionally of one type and time range."""
        sql = "SELECT * FROM dicom_audit WHERE 1 = 1"
        parameters: list[object] = []
        if since is not None:
            sql += " AND at >= ?"
            parameters.append(since)
        if until is not None:
            sql += " AND at < ?"
            parameters.append(until)
        if event_type:
            sql += " AND event_type = ?"
            parameters.append(EventType(event_type).value)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        return [
            AuditEvent(
                event_meaning=EVENT_IDS[EventType(row["event_type"])][1],
                **dict(row),
            )
            for row in self._db.query(sql, tuple(parameters))
        ]


def parse_since(value: str) -> float:
    """A time as the API and CLI take it: epoch seconds, ISO 8601 (UTC unless it says
    otherwise), or an age such as ``90s``, ``30m``, ``24h``, ``7d`` before now."""
    from datetime import UTC, datetime

    text = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (epoch seconds, ISO 8601 or an age like 24h)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
