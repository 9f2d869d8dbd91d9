"""Logging set-up: one line per event, ``key=value`` fields, UTC timestamps.

The node's recent warnings and errors are also kept in memory (:data:`RECENT`) for
the console's Log page and ``GET /api/log``; log lines carry no patient data by rule.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any


class RecentRecords(logging.Handler):
    """The last ``capacity`` records at ``level`` or above: time, level, logger, message."""

    def __init__(self, capacity: int = 1000, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        entry = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        with self._guard:
            self._records.append(entry)

    def records(
        self, *, level: str = "WARNING", text: str = "", limit: int = 500
    ) -> list[dict[str, Any]]:
        """Newest first, at ``level`` or above, containing ``text`` (case-insensitive)."""
        threshold = logging.getLevelName(level.upper())
        if not isinstance(threshold, int):
            raise ValueError(f"unknown log level {level!r}")
        needle = text.lower()
        with self._guard:
            found = list(self._records)
        found.reverse()
        return [
            entry
            for entry in found
            if logging.getLevelName(entry["level"]) >= threshold
            and (not needle or needle in f"{entry['logger']} {entry['message']}".lower())
        ][:limit]


#: The node's recent warnings and errors.
RECENT = RecentRecords()


def configure(level: str = "INFO") -> None:
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler, RECENT]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; keep its warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
