"""The node's log level."""

from __future__ import annotations

from typing import Literal

from node.config.base import _Strict


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
