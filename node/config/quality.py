"""What the input-quality gate does when a check fails."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from node.config.base import _Strict

#: What the input-quality gate does when a check fails: run anyway, run and record a
#: warning (in the job and in the SR), or skip the job (the reason shows on the job).
QualityAction = Literal["run", "warn", "skip"]

#: The checks of the input-quality gate (``node.engine.quality``), by name.
QUALITY_CHECKS = (
    "modality",
    "sop_class",
    "slice_thickness",
    "pixel_spacing",
    "kernel",
    "contrast",
    "photometric",
    "bit_depth",
    "noise",
    "missing_slices",
    "duplicate_slices",
    "metal",
    "streaks",
    "clipping",
)


class QualitySettings(_Strict):
    """Per rule: what the input-quality gate does when the input differs from what the
    routine was validated on (``on_fail``), with per-check overrides (``checks``)."""

    on_fail: QualityAction = "warn"
    #: Check name → action, overriding ``on_fail`` for that check.
    checks: dict[str, QualityAction] = Field(default_factory=dict)

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, value: dict[str, QualityAction]) -> dict[str, QualityAction]:
        unknown = sorted(set(value) - set(QUALITY_CHECKS))
        if unknown:
            raise ValueError(
                f"unknown quality check {', '.join(unknown)} (known: {', '.join(QUALITY_CHECKS)})"
            )
        if value.get("missing_slices", "skip") != "skip":
            raise ValueError(
                "missing_slices can only skip: a series with a gap has no regular grid to run on"
            )
        return value

    def action(self, check: str) -> QualityAction:
        """The action for a failed ``check`` (``missing_slices`` always skips)."""
        if check == "missing_slices":
            return "skip"
        return self.checks.get(check, self.on_fail)
