"""``ainode evaluate``: run a routine over a labelled dataset and score it.

:func:`evaluate` returns the report as a JSON-ready dict (schema in ``README.md``,
:data:`SCHEMA_VERSION`); :func:`write_report` writes ``metrics.json`` and
``report.html``. Which metrics are computed depends on the references the dataset
holds: SEGs give Dice/HD95, ``labels.csv`` gives AUC/sensitivity/specificity,
``boxes.csv`` gives FROC; one dataset may hold several.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import node
from node.config import QualitySettings
from node.contract.template import ResultTemplate, load_template_by_name
from node.errors import AinodeError
from node.evaluation.classification import matched_probability, score_finding
from node.evaluation.dataset import BOXES_CSV, LABELS_CSV, DatasetError, EvaluationDataset
from node.evaluation.detection import (
    DEFAULT_IOU,
    FP_RATES,
    HIT_CRITERIA,
    PredictedMark,
    ReferenceBox,
    froc,
    hits,
)
from node.evaluation.runner import CaseOutcome, CaseRunner
from node.evaluation.segmentation import reference_masks, score_segment
from node.evaluation.shadow import ShadowComparison, ShadowSource
from node.evaluation.stats import BOOTSTRAP_SEED, summary
from node.orchestration.registry import PluginRegistry

log = logging.getLogger(__name__)

SCHEMA = "ainode-evaluation"
SCHEMA_VERSION = 1
#: JSON Schema of ``metrics.json`` (draft 2020-12).
SCHEMA_PATH = Path(__file__).with_name("metrics.schema.json")
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class EvaluationOptions:
    """How to evaluate.

    Attributes
    ----------
    thresholds
        Operating threshold per classification finding; overrides the template's
        and the plugin's (``thresholds`` attribute).
    hit_criterion, iou_threshold
        Detection hit criterion (:mod:`node.evaluation.detection`).
    seed
        Seed of every bootstrap.
    """

    thresholds: Mapping[str, float] = field(default_factory=dict)
    hit_criterion: str = "centre"
    iou_threshold: float = DEFAULT_IOU
    seed: int = BOOTSTRAP_SEED

    def __post_init__(self) -> None:
        if self.hit_criterion not in HIT_CRITERIA:
            raise ValueError(
                f"hit criterion {self.hit_criterion!r} is not one of {', '.join(HIT_CRITERIA)}"
            )
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"IoU threshold {self.iou_threshold} is not in (0, 1]")


class EvaluationError(AinodeError):
    """The evaluation cannot be done (no threshold for a finding, unknown plugin...)."""


def template_thresholds(template: ResultTemplate) -> dict[str, float]:
    """Operating thresholds of the template's classifications (format with ``classifications``)."""
    found: dict[str, float] = {}
    for item in getattr(template.document, "classifications", None) or ():
        key, threshold = getattr(item, "key", None), getattr(item, "threshold", None)
        if isinstance(key, str) and isinstance(threshold, int | float):
            found[key] = float(threshold)
    return found


def _threshold(
    finding: str,
    options: EvaluationOptions,
    template: ResultTemplate,
    plugin_thresholds: Mapping[str, float],
) -> tuple[float, str]:
    if finding in options.thresholds:
        return float(options.thresholds[finding]), "command line"
    from_template = template_thresholds(template)
    if finding in from_template:
        return from_template[finding], f"template {template.name}"
    if finding in plugin_thresholds:
        return float(plugin_thresholds[finding]), "plugin"
    raise EvaluationError(
        f"no operating threshold for finding {finding!r}: template {template.name} and the "
        f"plugin declare none; give one with --threshold {finding}=VALUE"
    )


def _segment_rows(
    outcome: CaseOutcome,
    dataset: EvaluationDataset,
    name: str,
    segs: tuple[Any, ...],
    template: ResultTemplate,
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    assert outcome.prediction is not None and outcome.volume is not None
    volume = outcome.volume
    label_map = outcome.prediction.label_map
    if label_map is None:
        raise EvaluationError(f"case {name}: the routine gives no label map to score its SEGs")
    references = reference_masks(segs, dataset.cases[name].seg_paths, volume, template)
    rows = []
    for segment in template.segments:
        if segment.label_value not in references:
            continue
        score = score_segment(
            label_map == segment.label_value, references[segment.label_value], volume.spacing
        )
        rows.append(
            {
                "label_value": segment.label_value,
                "label": segment.label,
                "dice": score.dice,
                "hd95_mm": score.hd95_mm,
                "reference_voxels": score.reference_voxels,
                "predicted_voxels": score.predicted_voxels,
                "note": score.note,
            }
        )
    return rows, references


def evaluate(
    plugin_name: str,
    dataset_dir: Path,
    *,
    registry: PluginRegistry | None = None,
    device: torch.device | None = None,
    templates_dir: Path | None = None,
    options: EvaluationOptions | None = None,
    shadow: ShadowSource | None = None,
    quality: QualitySettings | None = None,
    progress: Callable[[int, int, str, str], None] | None = None,
) -> dict[str, Any]:
    """Run ``plugin_name`` on every case of the dataset and compute the metrics.

    ``quality`` is the input-quality policy for routines that declare ``validated_on``
    (default: warn on every failed check). ``progress(n, total, case, status)`` is
    called after each case. With ``shadow``, the rule's stored results are
    scored too (:mod:`node.evaluation.shadow`) and the report gains a ``shadow`` section.

    Raises
    ------
    DatasetError
        The dataset is malformed (the message names the file).
    EvaluationError, PluginError
        The routine cannot be evaluated (unknown, fails to load, no threshold...).
    """
    options = options or EvaluationOptions()
    dataset = EvaluationDataset(dataset_dir)
    registry = registry or PluginRegistry.discover()
    device = device or torch.device("cpu")
    info = registry.plugin_info(plugin_name)
    template = load_template_by_name(info.template, templates_dir)
    runner = CaseRunner(registry, plugin_name, device, quality)
    plugin_thresholds: Mapping[str, float] = getattr(runner.plugin, "thresholds", None) or {}

    labels_by_case = defaultdict(list)
    for label in dataset.labels:
        labels_by_case[label.image.case].append(label)
    thresholds = {
        f: _threshold(f, options, template, plugin_thresholds)
        for f in sorted({label.finding for label in dataset.labels})
    }
    comparison = (
        ShadowComparison(
            shadow, template, options.seed, options.hit_criterion, options.iou_threshold
        )
        if shadow
        else None
    )
    boxes_by_case = defaultdict(list)
    for box in dataset.boxes:
        boxes_by_case[box.image.case].append(box)

    rows: list[dict[str, Any]] = []
    segment_values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    class_scores: dict[str, tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    marks: list[PredictedMark] = []
    boxes: list[ReferenceBox] = []
    detection_images = 0
    for number, name in enumerate(dataset.cases, start=1):
        data = dataset.read_case(name)
        outcome = runner.run(data.index.image_paths, job_id=number)
        row: dict[str, Any] = {
            "case": name,
            "series_instance_uid": data.index.series_instance_uid,
            "status": outcome.status,
            "reason": outcome.reason,
            "seconds": round(outcome.seconds, 3),
        }
        if outcome.quality is not None:
            row["quality"] = outcome.quality
        rows.append(row)
        log.info("evaluation case=%s status=%s seconds=%.2f", name, outcome.status, outcome.seconds)
        if progress is not None:
            progress(number, len(dataset.cases), name, outcome.status)
        if outcome.status != "ok":
            if comparison:
                comparison.skip(name, outcome.status)
            continue
        assert outcome.volume is not None and outcome.prediction is not None
        references: dict[int, np.ndarray] = {}
        if data.segs:
            row["segments"], references = _segment_rows(outcome, dataset, name, data.segs, template)
            for item in row["segments"]:
                values = segment_values[item["label_value"]]
                values["dice"].append(item["dice"])
                if item["hd95_mm"] is not None:
                    values["hd95_mm"].append(item["hd95_mm"])
        if labels_by_case[name]:
            row["classifications"] = []
            for label in labels_by_case[name]:
                probability, note = matched_probability(
                    outcome.prediction.classifications,
                    outcome.volume.sop_instance_uids,
                    label.finding,
                    label.image.sop_instance_uid,
                )
                threshold = thresholds[label.finding][0]
                row["classifications"].append(
                    {
                        "image": label.image.sop_instance_uid or name,
                        "finding": label.finding,
                        "label": label.label,
                        "probability": probability,
                        "predicted": None if probability is None else int(probability >= threshold),
                        "note": note,
                    }
                )
                if probability is not None:
                    class_scores[label.finding][0].append(probability)
                    class_scores[label.finding][1].append(label.label)
        if dataset.boxes:
            detection_images += 1
            volume = outcome.volume
            single_uid = volume.sop_instance_uids[0] if len(volume.datasets) == 1 else None
            case_refs = [
                ReferenceBox(b.image.sop_instance_uid or single_uid or "", b.finding, b.box)
                for b in boxes_by_case[name]
            ]
            case_marks = [
                PredictedMark(volume.sop_instance_uids[d.frame], d.finding, d.score, d.box, d.point)
                for d in outcome.prediction.detections
            ]
            boxes.extend(case_refs)
            marks.extend(case_marks)
            row["detections"] = [
                {
                    "image": m.image,
                    "finding": m.finding,
                    "score": m.score,
                    "box": list(m.box) if m.box else None,
                    "point": list(m.point) if m.point else None,
                    "hit": any(
                        r.finding == m.finding
                        and r.image == m.image
                        and hits(m, r.box, options.hit_criterion, options.iou_threshold)
                        for r in case_refs
                    ),
                }
                for m in case_marks
            ]
            row["reference_boxes"] = len(case_refs)
        if comparison:
            volume = outcome.volume
            single_uid = volume.sop_instance_uids[0] if len(volume.datasets) == 1 else None
            comparison.add(
                name,
                data.index.series_instance_uid,
                volume,
                outcome.prediction,
                references,
                labels_by_case[name],
                [
                    ReferenceBox(b.image.sop_instance_uid or single_uid or "", b.finding, b.box)
                    for b in boxes_by_case[name]
                ],
                [
                    PredictedMark(
                        volume.sop_instance_uids[d.frame], d.finding, d.score, d.box, d.point
                    )
                    for d in outcome.prediction.detections
                ]
                if dataset.boxes
                else None,
            )

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ainode_version": node.__version__,
        "plugin": {"name": info.name, "version": info.version, "source": info.source},
        "template": {"name": template.name, "sha256": template.sha256},
        "dataset": {
            "path": str(dataset.root),
            "sha256": dataset.content_hash(),
            "cases": len(dataset.cases),
            "references": [
                kind
                for kind, present in (
                    ("segmentation", dataset.has_segmentations),
                    ("classification", bool(dataset.labels)),
                    ("detection", bool(dataset.boxes)),
                )
                if present
            ],
        },
        "device": str(device),
        "options": {
            "seed": options.seed,
            "hit_criterion": options.hit_criterion,
            "iou_threshold": options.iou_threshold,
            "fp_rates": list(FP_RATES),
        },
        "summary": {
            status: sum(1 for r in rows if r["status"] == status)
            for status in ("ok", "rejected", "failed")
        }
        | {"cases": len(rows)},
        "cases": rows,
        "segmentation": None,
        "classification": None,
        "detection": None,
        "shadow": None,
    }
    if dataset.has_segmentations:
        report["segmentation"] = {
            "segments": [
                {
                    "label_value": s.label_value,
                    "label": s.label,
                    "dice": summary(segment_values[s.label_value]["dice"], seed=options.seed),
                    "hd95_mm": summary(segment_values[s.label_value]["hd95_mm"], seed=options.seed),
                }
                for s in template.segments
                if s.label_value in segment_values
            ]
        }
    if dataset.labels:
        findings = []
        for finding, (threshold, source) in thresholds.items():
            scores, labels = class_scores[finding]
            findings.append(
                score_finding(
                    finding,
                    np.asarray(scores),
                    np.asarray(labels),
                    threshold,
                    source,
                    seed=options.seed,
                ).as_dict()
            )
        report["classification"] = {"source": LABELS_CSV, "findings": findings}
    if dataset.boxes:
        report["detection"] = {
            "source": BOXES_CSV,
            "hit_criterion": options.hit_criterion,
            "iou_threshold": options.iou_threshold if options.hit_criterion == "iou" else None,
            "findings": [
                froc(
                    finding,
                    [m for m in marks if m.finding == finding],
                    [r for r in boxes if r.finding == finding],
                    detection_images,
                    options.hit_criterion,
                    options.iou_threshold,
                ).as_dict()
                for finding in sorted({b.finding for b in dataset.boxes})
            ],
        }
    if comparison:
        report["shadow"] = comparison.section(rows, thresholds)
    return report


def write_report(report: Mapping[str, Any], output: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and the self-contained ``report.html`` into ``output``."""
    from node.evaluation.html import render_html

    output.mkdir(parents=True, exist_ok=True)
    metrics = output / METRICS_FILE
    metrics.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html = output / REPORT_FILE
    html.write_text(render_html(report), encoding="utf-8")
    return metrics, html


__all__ = [
    "DatasetError",
    "EvaluationError",
    "EvaluationOptions",
    "ShadowSource",
    "evaluate",
    "write_report",
]
