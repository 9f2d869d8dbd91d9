"""UPS event reports (PS3.4 CC.2.4) and the in-process bus that carries them.

The worklist service publishes an :class:`UpsEvent` after the change it reports is
committed, addressed to the AE titles subscribed at that moment. Listeners (the UPS-RS
WebSocket channel, the DIMSE N-EVENT-REPORT sender) register with :meth:`EventBus.listen`
and deliver to the subscribers they can reach; a listener must not block (hand the event to
your own thread or event loop).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from node.worklist.dataset import AFFECTED_SOP_INSTANCE, EVENT_TYPE_ID, element

log = logging.getLogger(__name__)


class EventType(IntEnum):
    """Event Type ID (0000,1002) of a UPS event report."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


@dataclass(frozen=True)
class UpsEvent:
    """One event report: which workitem, which event, its attributes (DICOM JSON) and the
    AE titles it is for."""

    workitem_uid: str
    event_type: EventType
    attributes: dict[str, Any]
    subscribers: tuple[str, ...]
    at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The event as JSON (a receiver process hands its events to the node's process)."""
        return {
            "workitem_uid": self.workitem_uid,
            "event_type": int(self.event_type),
            "attributes": self.attributes,
            "subscribers": list(self.subscribers),
            "at": self.at,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpsEvent:
        """The event :meth:`as_json` wrote."""
        return cls(
            workitem_uid=str(data["workitem_uid"]),
            event_type=EventType(int(data["event_type"])),
            attributes=dict(data["attributes"]),
            subscribers=tuple(str(ae) for ae in data["subscribers"]),
            at=float(data.get("at", 0.0)),
            extra=dict(data.get("extra", {})),
        )

    def dicom_json(self) -> dict[str, Any]:
        """The report as PS3.18 sends it on the WebSocket channel: the Affected SOP Instance
        UID, the Event Type ID and the event's attributes."""
        return {
            AFFECTED_SOP_INSTANCE: element("UI", self.workitem_uid),
            EVENT_TYPE_ID: element("US", int(self.event_type)),
            **self.attributes,
        }


Listener = Callable[[UpsEvent], None]


class EventBus:
    """Publish/subscribe within the node process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; returns a function that unregisters it."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def publish(self, event: UpsEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        log.info(
            "ups event workitem_uid=%s type=%s subscribers=%d",
            event.workitem_uid,
            event.event_type.name,
            len(event.subscribers),
        )
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("ups event listener failed workitem_uid=%s", event.workitem_uid)
