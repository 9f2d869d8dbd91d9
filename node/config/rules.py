"""Routing rules: match conditions, a plugin, where the results go."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from node.config.base import _Strict
from node.config.quality import QualitySettings
from node.routing import Condition, parse_conditions


class RuleSettings(_Strict):
    """A routing rule: match conditions, a plugin, and where the results go."""

    name: str = Field(min_length=1)
    match: dict[str, Any] = Field(default_factory=dict)
    plugin: str
    send_to: list[str] = Field(default_factory=list)
    priority: int = Field(5, ge=0, le=9)
    enabled: bool = True
    #: Shadow mode: jobs run and their results are stored and listed, but nothing is sent.
    shadow: bool = False
    #: The input-quality gate's actions (it applies when the plugin declares ``validated_on``).
    quality: QualitySettings = QualitySettings()

    @field_validator("match")
    @classmethod
    def _conditions_parse(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_conditions(value)  # raises ValueError with the offending key path
        return value

    @property
    def conditions(self) -> list[Condition]:
        return parse_conditions(self.match)
