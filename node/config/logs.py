"""The node's log level and format."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from node.config.base import _Strict


class LoggingSettings(_Strict):
    #: ``debug`` also lets the libraries (highdicom, pydicom, pynetdicom, …) log below WARNING.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ``text`` (``<time> <LEVEL> <logger>: <message>``) or ``json`` (one object a line).
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
