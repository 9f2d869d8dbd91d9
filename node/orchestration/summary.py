"""``prediction.json``: what a job predicted, in plain JSON beside its DICOM results.

Written by the worker for every job into ``results/<study>/<series>/job-<id>/``
(the exporter sends only ``*.dcm``). Shadow-mode listings
(:mod:`node.admin.shadow`) and the evaluation report read it, so a shadow
prediction can be compared with a reference without parsing SEG or SR. The
format is documented in ``node/admin/README.md`` (Shadow mode).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the console reads summaries without the routines' imports
    from node.contract.plugin import Prediction
    from node.engine.quality import Decision, Measurements

SUMMARY_NAME = "prediction.json"
#: Bumped when a field changes meaning (adding fields does not bump it).
SUMMARY_VERSION = 1


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def quality_json(measured: Measurements, decision: Decision) -> dict[str, Any]:
    """The gate's measurements, decision and failed checks."""
    layout = measured.layout
    return {
        "decision": decision.action,
        "warnings": list(decision.warnings),
        "ignored": list(decision.ignored),
        "measured": {
            "slices": layout.count,
            "missing_slices": layout.missing,
            "duplicate_slices": layout.duplicates,
            "noise": measured.noise,
            "metal_fraction": measured.metal_fraction,
            "streak_index": measured.streak_index,
            "clipped_fraction": measured.clipped_fraction,
        },
        "failed_checks": [
            {"check": c.name, "measured": c.measured, "expected": c.expected}
            for c in decision.failed
        ],
    }


def prediction_json(
    prediction: Prediction,
    *,
    job_id: int,
    rule: str,
    plugin: str,
    plugin_version: str,
    template: str,
    study_uid: str,
    series_uid: str,
    shadow: bool,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of one job's prediction (label maps stay in the SEG)."""
    return {
        "format": "ainode.prediction",
        "version": SUMMARY_VERSION,
        "job_id": job_id,
        "rule": rule,
        "plugin": plugin,
        "plugin_version": plugin_version,
        "template": template,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "shadow": shadow,
        "measurements": {
            str(label): {key: _number(value) for key, value in values.items()}
            for label, values in sorted(prediction.measurements.items())
        },
        "findings": {str(k): dict(v) for k, v in sorted(prediction.findings.items())},
        "classifications": [
            {"finding": c.finding, "probability": c.probability, "frame": c.frame}
            for c in prediction.classifications
        ],
        "detections": [
            {
                "finding": d.finding,
                "score": d.score,
                "frame": d.frame,
                "box": list(d.box) if d.box is not None else None,
                "point": list(d.point) if d.point is not None else None,
            }
            for d in prediction.detections
        ],
        "quality": quality,
    }


def write_summary(result_dir: Path, document: dict[str, Any]) -> Path:
    """Write ``prediction.json`` atomically (a reader never sees half a file)."""
    path = result_dir / SUMMARY_NAME
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
    partial.replace(path)
    return path


def read_summary(result_dir: Path) -> dict[str, Any] | None:
    """The summary of a result directory (None when there is none or it is unreadable)."""
    try:
        data = json.loads((result_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


__all__ = ["SUMMARY_NAME", "prediction_json", "quality_json", "read_summary", "write_summary"]
