"""The input-quality gate around a job's volume (plumbing; measurements in :mod:`.quality`).

:func:`gate_series` loads the series, measures it against the routine's
:class:`~node.contract.plugin.ValidatedInput` and applies the rule's
:class:`~node.config.QualitySettings`. A series that cannot be assembled because
slices are missing or duplicated is measured from its headers instead of
failing with a geometry error: duplicates are dropped when the decision lets the
job run; a gap always skips (there is no regular grid to run on).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.config import QualitySettings
from node.contract.assemble import assemble_volume
from node.contract.plugin import ValidatedInput
from node.contract.volume import Volume
from node.engine.quality import (
    Decision,
    Measurements,
    SliceLayout,
    assess,
    slice_layout,
    without_duplicate_positions,
)
from node.errors import InputSkipped, VolumeError

log = logging.getLogger(__name__)


class QualitySkipped(InputSkipped):
    """The input-quality gate decided not to run the job; the message says why and
    ``checks`` names each check whose action is ``skip``."""


@dataclass(frozen=True)
class GateResult:
    """The volume to run on, what was measured and what was decided."""

    volume: Volume
    measured: Measurements
    decision: Decision
    #: Time spent measuring (not loading).
    seconds: float = 0.0
    #: Whether the measurements were made when the series was read ahead.
    measured_ahead: bool = False


def _skip(decision: Decision) -> QualitySkipped:
    skipping = set(decision.reasons)
    checks = [
        {"check": c.name, "message": c.message} for c in decision.failed if c.message in skipping
    ]
    return QualitySkipped(
        "skipped by the input-quality gate: " + "; ".join(decision.reasons),
        source="quality",
        checks=checks,
    )


def gate_series(
    load: Callable[[], Volume],
    paths: Sequence[Path],
    validated: ValidatedInput,
    policy: QualitySettings,
    premeasured: Callable[[Volume, ValidatedInput], Measurements | None] | None = None,
) -> GateResult:
    """Load, measure and decide; raise :class:`QualitySkipped` when the decision is skip.

    Parameters
    ----------
    load
        Assembles the series (the worker's loader, which may be prefetched).
    paths
        The series' files, read again only when ``load`` fails on slice positions.
    validated
        What the routine was validated on.
    policy
        The rule's actions per failed check.
    premeasured
        The measurements of the loaded volume against ``validated`` made when it was read
        ahead, or None (then they are made here).

    Raises
    ------
    QualitySkipped
        The decision is skip; the message names every failed check that skips.
    VolumeError
        The series cannot be assembled for another reason than its slice positions.
    """
    layout: SliceLayout | None = None
    try:
        volume = load()
    except VolumeError:
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
        layout = slice_layout(headers)
        if layout.missing == 0 and layout.duplicates == 0:
            raise
        log.info(
            "series measured from headers missing=%d duplicates=%d",
            layout.missing,
            layout.duplicates,
        )
        measured, decision = assess(None, headers, validated, policy, layout)
        if decision.action == "skip":
            raise _skip(decision) from None
        # Only duplicates (a gap always skips): drop them and assemble.
        volume = assemble_volume(
            without_duplicate_positions([pydicom.dcmread(path) for path in paths])
        )
    started = time.perf_counter()
    earlier = premeasured(volume, validated) if premeasured is not None and layout is None else None
    measured, decision = assess(
        volume.array, volume.datasets, validated, policy, layout, measured=earlier
    )
    seconds = time.perf_counter() - started
    if decision.action == "skip":
        raise _skip(decision)
    return GateResult(volume, measured, decision, seconds, measured_ahead=earlier is not None)


__all__ = ["GateResult", "QualitySkipped", "gate_series"]
