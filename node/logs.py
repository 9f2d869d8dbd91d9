"""Logging set-up: one line per event, ``key=value`` fields, UTC timestamps.

``logging.format: text`` writes ``<time> <LEVEL> <logger>: <message>``; ``json`` writes one
JSON object per line (``time``, ``level``, ``logger``, ``message``, and each ``key=value``
field of the message as its own key, for hospital log collectors). Libraries log at WARNING
and above unless ``logging.level: DEBUG``.

The node's recent warnings and errors are also kept in memory (:data:`RECENT`) for
the console's Log page and ``GET /api/log``; log lines carry no patient data by rule.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

#: The node's own loggers; every other logger is a library's.
OWN_LOGGERS = ("node", "plugins", "tools", "__main__")

#: Libraries that log at INFO (or worse, DEBUG) in a normal job, pinned to WARNING unless
#: the level is DEBUG; :class:`LibraryFilter` catches any library not named here.
LIBRARY_LOGGERS = (
    "apscheduler",
    "asyncio",
    "dicomweb_client",
    "filelock",
    "fsspec",
    "highdicom",
    "httpcore",
    "httpx",
    "matplotlib",
    "monai",
    "multipart",
    "onnxruntime",
    "PIL",
    "pydicom",
    "pynetdicom",
    "python_multipart",
    "radiomics",
    "SimpleITK",
    "torch",
    "urllib3",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
)

#: The keys every JSON line has; message fields with these names get a ``_`` suffix.
JSON_KEYS = ("time", "level", "logger", "message")

# One %-conversion of a format string: ``%s``, ``%d``, ``%.1f``, ``%(name)s``, ``%%``.
_CONVERSION = re.compile(
    r"%(?P<mapping>\([^)]*\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?"
    r"[hlL]?(?P<type>[diouxXeEfFgGcrsa%])"
)
_KEY_BEFORE = re.compile(r"(?:^|[\s,(\[])([A-Za-z_][A-Za-z0-9_.]*)=$")


def message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``key=%s`` fields of a record's format string, each with its argument.

    Parsed from the format string and the arguments the code passed (never from the
    formatted text, where a value may contain spaces or ``=``); a format this cannot map
    one-to-one onto its arguments gives no fields.
    """
    if not isinstance(record.msg, str) or not isinstance(record.args, tuple):
        return {}
    fields: dict[str, Any] = {}
    index = 0
    for match in _CONVERSION.finditer(record.msg):
        if match["type"] == "%":
            continue
        if match["mapping"] or "*" in (match["width"] or "") + (match["precision"] or ""):
            return {}
        if index >= len(record.args):
            return {}
        key = _KEY_BEFORE.search(record.msg, 0, match.start())
        if key is not None:
            value = record.args[index]
            name = key.group(1)
            fields[f"{name}_" if name in JSON_KEYS else name] = (
                value if isinstance(value, int | float | bool | None) else str(value)
            )
        index += 1
    return fields if index == len(record.args) else {}


def _utc_iso(created: float) -> str:
    return (
        datetime.fromtimestamp(created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time (UTC ISO 8601), level, logger, message, fields."""
    from pythonjsonlogger.json import JsonFormatter

    class _Formatter(JsonFormatter):
        def add_fields(
            self,
            log_data: dict[str, Any],
            record: logging.LogRecord,
            message_dict: dict[str, Any],
        ) -> None:
            log_data["time"] = _utc_iso(record.created)
            log_data["level"] = record.levelname
            log_data["logger"] = record.name
            log_data["message"] = record.message
            log_data.update(message_fields(record))
            # ``extra={...}`` keys of the call, then exc_info/stack_info.
            super().add_fields(log_data, record, message_dict)

    return _Formatter(reserved_attrs=[*_STANDARD_ATTRIBUTES, "message"])


#: Attributes every LogRecord has (not ``extra`` fields).
_STANDARD_ATTRIBUTES = (
    *vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)),
    "asctime",
    "taskName",
)


def text_formatter() -> logging.Formatter:
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    return formatter


class LibraryFilter(logging.Filter):
    """Pass the node's own records, and library records at ``threshold`` or above."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS or record.name == "root"
        return own or record.levelno >= self.threshold


class RecentRecords(logging.Handler):
    """The last ``capacity`` records at ``level`` or above: time, level, logger, message."""

    def __init__(self, capacity: int = 1000, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()
        #: Also given each entry (a receiver process passes its own to the node's process).
        self.forward: Callable[[dict[str, Any]], object] | None = None

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
        self.add(entry)
        if self.forward is not None:
            self.forward(entry)

    def add(self, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (time, level, logger, message), e.g. one another process logged."""
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


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler()`` keeps the stream it was created with; once that stream is
    replaced and closed (a redirected or captured stderr, an embedding host swapping it),
    every later record fails with "--- Logging error ---" instead of being written.
    """

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """``setStream`` and ``StreamHandler.__init__`` assign it; stderr is always current."""


def configure(level: str = "INFO", log_format: LogFormat = "text") -> None:
    """Root logging to stderr in ``log_format``, plus :data:`RECENT`.

    Below DEBUG, libraries are held at WARNING (highdicom alone writes ~30 INFO lines
    a job); at DEBUG they log at their own levels.
    """
    handler = StderrHandler()
    handler.setFormatter(json_formatter() if log_format == "json" else text_formatter())
    debug = level.upper() == "DEBUG"
    if not debug:
        handler.addFilter(LibraryFilter(logging.WARNING))
    root = logging.getLogger()
    root.handlers[:] = [handler, RECENT]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn lines in the same format (py.warnings)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    # pynetdicom's DEBUG lines would print C-FIND/C-GET/C-MOVE identifiers (patient names).
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
