"""Comparing a shadow rule's stored results with the evaluation (``--compare-shadow``).

A rule with ``shadow: true`` runs its jobs and stores their results without sending
them. To judge it before go-live, those stored results are scored against the same
labelled dataset and set beside the fresh evaluation run on the same cases. Stored
results are read in the format the node exposes for this
(:func:`node.admin.shadow.shadow_predictions`, ``/api/shadow/predictions``, documented in
``node/admin/README.md``): per series the shadow jobs of the rule, each with its
stored SEG path and the ``prediction.json`` classifications and detections. A dataset
case is matched by SeriesInstanceUID to the latest finished shadow job of its series.

* segmentation: the stored SEG against the reference (Dice, HD95) and against the
  evaluation's own prediction (*agreement*: below 1 means the stored result differs from
  a rerun on the same images - a changed model, template, input or quality gate);
* classification: AUC, sensitivity and specificity of the stored probabilities, and the
  largest probability difference from the rerun;
* detection: FROC of the stored detections, beside the rerun's FROC on the same cases.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from node.contract.plugin import Classification, Prediction
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.evaluation.classification import matched_probability, score_finding
from node.evaluation.dataset import DatasetError, LabelRow
from node.evaluation.detection import PredictedMark, ReferenceBox, froc
from node.evaluation.segmentation import reference_masks, score_segment
from node.evaluation.stats import summary

log = logging.getLogger(__name__)

#: Where the stored results come from, written into the report.
SOURCE = "shadow jobs of the rule (node.admin.shadow.shadow_predictions, ainode.shadow-predictions)"


@dataclass(frozen=True)
class ShadowSource:
    """Whose stored results to compare: a shadow rule, in the node database at ``database``
    (or, when ``state_url`` names PostgreSQL, there)."""

    rule: str
    database: Path
    state_url: str | None = None


@dataclass(frozen=True)
class StoredResult:
    """The latest finished shadow job of the rule for one series, as the node lists it."""

    job_id: int
    plugin: str
    plugin_version: str | None
    seg: Path | None
    classifications: tuple[Classification, ...]
    detections: tuple[dict[str, Any], ...]


def stored_results(source: ShadowSource) -> dict[str, StoredResult]:
    """``{SeriesInstanceUID: latest finished shadow job}`` of the rule.

    Raises
    ------
    DatasetError
        When the database file does not exist (a path typo would otherwise create one).
    """
    from node.admin.shadow import shadow_predictions
    from node.config.state import StateSettings
    from node.state.backend import open_database
    from node.state.jobs import JobQueue

    state = StateSettings(url=source.state_url)
    if not state.is_postgres and not source.database.is_file():
        raise DatasetError(f"{source.database}: no node state database here (check --config)")
    db = open_database(state, source.database, check=False)
    try:
        listing = shadow_predictions(JobQueue(db), rule=source.rule, state="done")
    finally:
        db.close()
    found: dict[str, StoredResult] = {}
    for series in listing["series"]:
        latest = max(series["predictions"], key=lambda p: p["job_id"])
        found[series["series_uid"]] = StoredResult(
            job_id=int(latest["job_id"]),
            plugin=str(latest["plugin"]),
            plugin_version=latest.get("plugin_version"),
            seg=Path(latest["seg"]) if latest.get("seg") else None,
            classifications=tuple(
                Classification(c["finding"], float(c["probability"]), c.get("frame"))
                for c in latest.get("classifications", [])
            ),
            detections=tuple(latest.get("detections", [])),
        )
    return found


@dataclass
class ShadowComparison:
    """Collects, case by case, the stored results beside the evaluation's."""

    source: ShadowSource
    template: ResultTemplate
    seed: int
    hit_criterion: str
    iou_threshold: float
    stored: dict[str, StoredResult] = field(init=False)
    rows: list[dict[str, Any]] = field(default_factory=list)
    _scores: dict[str, list[tuple[float, float | None, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _marks: list[tuple[PredictedMark, str]] = field(
        default_factory=list
    )  # (mark, "stored"|"rerun")
    _boxes: list[ReferenceBox] = field(default_factory=list)
    _images: int = 0

    def __post_init__(self) -> None:
        self.stored = stored_results(self.source)

    def skip(self, case: str, status: str) -> None:
        self.rows.append({"case": case, "status": f"not compared: case {status}", "segments": []})

    def add(
        self,
        case: str,
        series_uid: str,
        volume: Volume,
        prediction: Prediction,
        references: dict[int, np.ndarray],
        labels: Sequence[LabelRow],
        boxes: Sequence[ReferenceBox],
        rerun_marks: Sequence[PredictedMark] | None,
    ) -> None:
        """Compare one evaluated case with its stored result (if the rule has one).

        ``rerun_marks`` is None when the dataset has no detection references.
        """
        stored = self.stored.get(series_uid)
        if stored is None:
            self.rows.append({"case": case, "status": "no stored result", "segments": []})
            return
        row: dict[str, Any] = {
            "case": case,
            "status": "compared",
            "job_id": stored.job_id,
            "job_plugin": stored.plugin,
            "job_plugin_version": stored.plugin_version,
            "segments": [],
        }
        self.rows.append(row)
        if references:
            row["segments"], note = self._segments(stored, volume, prediction, references)
            if note:
                row["note"] = note
        uids = volume.sop_instance_uids
        if labels:
            row["classifications"] = []
            for label in labels:
                image = label.image.sop_instance_uid
                kept, _ = matched_probability(stored.classifications, uids, label.finding, image)
                rerun, _ = matched_probability(
                    prediction.classifications, uids, label.finding, image
                )
                row["classifications"].append(
                    {
                        "finding": label.finding,
                        "label": label.label,
                        "stored_probability": kept,
                        "evaluation_probability": rerun,
                    }
                )
                if kept is not None:
                    self._scores[label.finding].append((kept, rerun, label.label))
        if rerun_marks is not None:
            self._images += 1
            self._boxes.extend(boxes)
            self._marks.extend((m, "rerun") for m in rerun_marks)
            stored_marks = [
                PredictedMark(
                    uids[int(d["frame"])],
                    str(d["finding"]),
                    float(d["score"]),
                    tuple(d["box"]) if d.get("box") else None,
                    tuple(d["point"]) if d.get("point") else None,
                )
                for d in stored.detections
                if 0 <= int(d["frame"]) < len(uids)
            ]
            self._marks.extend((m, "stored") for m in stored_marks)
            row["stored_detections"] = len(stored_marks)

    def _segments(
        self,
        stored: StoredResult,
        volume: Volume,
        prediction: Prediction,
        references: dict[int, np.ndarray],
    ) -> tuple[list[dict[str, Any]], str | None]:
        if stored.seg is None or not stored.seg.is_file():
            return [], "no SEG in the stored results"
        try:
            masks = reference_masks(
                (pydicom.dcmread(stored.seg),), (stored.seg,), volume, self.template
            )
        except DatasetError as exc:
            return [], f"stored SEG not comparable: {exc}"
        items = []
        for segment in self.template.segments:
            value = segment.label_value
            if value not in masks:
                continue
            item: dict[str, Any] = {"label_value": value, "label": segment.label}
            if value in references:
                score = score_segment(masks[value], references[value], volume.spacing)
                item |= {"dice": score.dice, "hd95_mm": score.hd95_mm}
            if prediction.label_map is not None:
                agreement = score_segment(
                    masks[value], prediction.label_map == value, volume.spacing
                )
                item |= {"agreement_dice": agreement.dice}
            items.append(item)
        return items, None

    def section(
        self, evaluated_cases: Sequence[dict[str, Any]], thresholds: dict[str, tuple[float, str]]
    ) -> dict[str, Any]:
        """The report's ``shadow`` section; evaluation figures over the same cases."""
        compared = {r["case"] for r in self.rows if r["status"] == "compared"}
        fresh = [
            item
            for case in evaluated_cases
            if case["case"] in compared
            for item in case.get("segments", [])
        ]
        segments = []
        for segment in self.template.segments:
            value = segment.label_value
            items = [i for r in self.rows for i in r["segments"] if i["label_value"] == value]
            if not items:
                continue
            own = [i for i in fresh if i["label_value"] == value]
            segments.append(
                {
                    "label_value": value,
                    "label": segment.label,
                    "stored_dice": summary(
                        [i["dice"] for i in items if "dice" in i], seed=self.seed
                    ),
                    "stored_hd95_mm": summary(
                        [i["hd95_mm"] for i in items if i.get("hd95_mm") is not None],
                        seed=self.seed,
                    ),
                    "evaluation_dice": summary([i["dice"] for i in own], seed=self.seed),
                    "evaluation_hd95_mm": summary(
                        [i["hd95_mm"] for i in own if i["hd95_mm"] is not None], seed=self.seed
                    ),
                    "agreement_dice": summary(
                        [i["agreement_dice"] for i in items if "agreement_dice" in i],
                        seed=self.seed,
                    ),
                }
            )
        classifications = []
        for finding, triples in sorted(self._scores.items()):
            threshold, source = thresholds[finding]
            kept = np.asarray([t[0] for t in triples])
            labels = np.asarray([t[2] for t in triples])
            paired = [(t[0], t[1]) for t in triples if t[1] is not None]
            rerun_rows = [t for t in triples if t[1] is not None]
            classifications.append(
                {
                    "finding": finding,
                    "stored": score_finding(
                        finding, kept, labels, threshold, source, seed=self.seed
                    ).as_dict(),
                    "evaluation": score_finding(
                        finding,
                        np.asarray([t[1] for t in rerun_rows], dtype=float),
                        np.asarray([t[2] for t in rerun_rows]),
                        threshold,
                        source,
                        seed=self.seed,
                    ).as_dict(),
                    "max_probability_difference": max(
                        (abs(a - b) for a, b in paired if b is not None), default=None
                    ),
                }
            )
        detections = []
        for finding in sorted({b.finding for b in self._boxes}):
            refs = [b for b in self._boxes if b.finding == finding]
            by = {
                kind: [m for m, k in self._marks if k == kind and m.finding == finding]
                for kind in ("stored", "rerun")
            }
            detections.append(
                {
                    "finding": finding,
                    "stored": froc(
                        finding,
                        by["stored"],
                        refs,
                        self._images,
                        self.hit_criterion,
                        self.iou_threshold,
                    ).as_dict(),
                    "evaluation": froc(
                        finding,
                        by["rerun"],
                        refs,
                        self._images,
                        self.hit_criterion,
                        self.iou_threshold,
                    ).as_dict(),
                }
            )
        return {
            "rule": self.source.rule,
            "source": SOURCE,
            "database": str(self.source.database),
            "cases_compared": len(compared),
            "cases_without_stored_result": sum(
                1 for r in self.rows if r["status"] == "no stored result"
            ),
            "segments": segments,
            "classifications": classifications,
            "detections": detections,
            "cases": self.rows,
        }


def _mean_ci(block: dict[str, Any] | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "&ndash;"
    low, high = block.get("ci95") or [None, None]
    text = f"{block['mean']:.{digits}f}"
    if low is not None and high is not None:
        text += f" ({low:.{digits}f}&ndash;{high:.{digits}f})"
    return text


def _value(block: dict[str, Any] | None, digits: int = 3) -> str:
    if not block or block.get("value") is None:
        return "&ndash;"
    return f"{block['value']:.{digits}f}"


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_shadow(section: dict[str, Any]) -> str:
    """The report's shadow-comparison section (HTML)."""
    parts = [
        f'<section id="shadow"><h2>Shadow results of rule {escape(section["rule"])}</h2>'
        f'<p class="muted">Source: {escape(section["source"])}; database '
        f"<code>{escape(section['database'])}</code>. {section['cases_compared']} cases "
        f"compared, {section['cases_without_stored_result']} without a stored result; "
        "evaluation figures are over the same cases.</p>"
    ]
    if section["segments"]:
        parts.append(
            _rows(
                [
                    "Segment",
                    "Shadow Dice (95% CI)",
                    "Evaluation Dice",
                    "Shadow HD95 mm",
                    "Evaluation HD95 mm",
                    "Agreement Dice (shadow vs rerun)",
                ],
                [
                    [
                        escape(s["label"]),
                        _mean_ci(s["stored_dice"]),
                        _mean_ci(s["evaluation_dice"]),
                        _mean_ci(s["stored_hd95_mm"], 2),
                        _mean_ci(s["evaluation_hd95_mm"], 2),
                        _mean_ci(s["agreement_dice"]),
                    ]
                    for s in section["segments"]
                ],
            )
        )
    if section["classifications"]:
        rows = []
        for item in section["classifications"]:
            stored, fresh = item["stored"], item["evaluation"]
            difference = item["max_probability_difference"]
            rows.append(
                [
                    escape(item["finding"]),
                    str(stored["n"]),
                    _value(stored["auc"]),
                    _value(fresh["auc"]),
                    _value(stored["sensitivity"]),
                    _value(fresh["sensitivity"]),
                    _value(stored["specificity"]),
                    _value(fresh["specificity"]),
                    "&ndash;" if difference is None else f"{difference:.3f}",
                ]
            )
        parts.append(
            _rows(
                [
                    "Finding",
                    "Cases",
                    "Shadow AUC",
                    "Evaluation AUC",
                    "Shadow sensitivity",
                    "Evaluation sensitivity",
                    "Shadow specificity",
                    "Evaluation specificity",
                    "Max |p shadow - p rerun|",
                ],
                rows,
            )
        )
    if section["detections"]:
        parts.append(
            _rows(
                [
                    "Finding",
                    "Images",
                    "Boxes",
                    "Shadow found",
                    "Shadow FP",
                    "Shadow FROC",
                    "Evaluation found",
                    "Evaluation FP",
                    "Evaluation FROC",
                ],
                [
                    [
                        escape(d["finding"]),
                        str(d["stored"]["images"]),
                        str(d["stored"]["targets"]),
                        str(d["stored"]["found"]),
                        str(d["stored"]["false_positives"]),
                        _value({"value": d["stored"]["froc_score"]}),
                        str(d["evaluation"]["found"]),
                        str(d["evaluation"]["false_positives"]),
                        _value({"value": d["evaluation"]["froc_score"]}),
                    ]
                    for d in section["detections"]
                ],
            )
        )
    parts.append(
        _rows(
            ["Case", "Shadow job", "Stored result"],
            [
                [
                    escape(str(r["case"])),
                    escape(str(r.get("job_id", "-"))),
                    escape(r["status"] + (f": {r['note']}" if r.get("note") else "")),
                ]
                for r in section["cases"]
            ],
        )
    )
    parts.append("</section>")
    return "".join(parts)
