"""Detection matching and FROC with MONAI.

Boxes are in SCOORD image coordinates (``x`` along columns, ``y`` along rows, the
top-left corner of the image at ``(0, 0)``), as :class:`~node.contract.plugin.Detection`.

Hit criterion (per finding, per image):

* ``centre`` (default): the centre of the predicted box, or the predicted point, lies
  inside the reference box (edges included);
* ``iou``: the predicted box overlaps the reference box with IoU >= ``iou_threshold``
  (default 0.3); a predicted point is judged by the centre rule.

A reference box is found at the highest score of the predictions that hit it; a
prediction that hits no reference box is a false positive; a second prediction on an
already-hit box is neither (as in CAMELYON16/LUNA16). Curve and score are MONAI's
:func:`~monai.metrics.compute_froc_curve_data` and
:func:`~monai.metrics.compute_froc_score`; false positives per image are counted over
the evaluated cases (one case is one image, or one series for volumes). MONAI's curve
starts at the second-lowest score it sees, so a zero-score sentinel is added to the
false positives: then every real detection counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from monai.metrics import compute_froc_curve_data, compute_froc_score

#: False positives per image at which sensitivity is reported.
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Hit criteria.
HIT_CRITERIA = ("centre", "iou")
DEFAULT_IOU = 0.3

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PredictedMark:
    """A predicted box or point on one image."""

    image: str  # SOP Instance UID
    finding: str
    score: float
    box: Box | None = None
    point: tuple[float, float] | None = None

    @property
    def centre(self) -> tuple[float, float]:
        if self.box is not None:
            return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)
        assert self.point is not None
        return self.point


@dataclass(frozen=True)
class ReferenceBox:
    image: str  # SOP Instance UID
    finding: str
    box: Box


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def hits(mark: PredictedMark, reference: Box, criterion: str, iou_threshold: float) -> bool:
    if criterion == "iou" and mark.box is not None:
        return iou(mark.box, reference) >= iou_threshold
    x, y = mark.centre
    return reference[0] <= x <= reference[2] and reference[1] <= y <= reference[3]


@dataclass(frozen=True)
class FrocScores:
    """FROC of one finding."""

    finding: str
    images: int
    targets: int
    detections: int
    true_positive_scores: list[float]  # one per reference box, 0 when missed
    false_positive_scores: list[float]
    fps_per_image: list[float]
    sensitivity: list[float]
    sensitivity_at: dict[float, float]
    froc_score: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "finding": self.finding,
            "images": self.images,
            "targets": self.targets,
            "detections": self.detections,
            "found": sum(1 for s in self.true_positive_scores if s > 0),
            "false_positives": len(self.false_positive_scores),
            "sensitivity_at_fp_per_image": {f"{k:g}": v for k, v in self.sensitivity_at.items()},
            "froc_score": self.froc_score,
            "froc_curve": {"fp_per_image": self.fps_per_image, "sensitivity": self.sensitivity},
        }


def match(
    marks: Sequence[PredictedMark],
    references: Sequence[ReferenceBox],
    criterion: str = "centre",
    iou_threshold: float = DEFAULT_IOU,
) -> tuple[list[float], list[float]]:
    """``(tp_probs per reference box, fp_probs)`` for marks and boxes of one finding."""
    if criterion not in HIT_CRITERIA:
        raise ValueError(f"hit criterion {criterion!r} is not one of {', '.join(HIT_CRITERIA)}")
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, reference in enumerate(references):
        by_image[reference.image].append(index)
    tp = [0.0] * len(references)
    fp: list[float] = []
    for mark in marks:
        found = [
            i
            for i in by_image.get(mark.image, [])
            if hits(mark, references[i].box, criterion, iou_threshold)
        ]
        if not found:
            fp.append(mark.score)
        for i in found:
            tp[i] = max(tp[i], mark.score)
    return tp, fp


def froc(
    finding: str,
    marks: Sequence[PredictedMark],
    references: Sequence[ReferenceBox],
    images: int,
    criterion: str = "centre",
    iou_threshold: float = DEFAULT_IOU,
) -> FrocScores:
    """FROC curve, sensitivity at :data:`FP_RATES` and their mean (the FROC score)."""
    tp, fp = match(marks, references, criterion, iou_threshold)
    if not references or images == 0:
        return FrocScores(finding, images, len(references), len(marks), tp, fp, [], [], {}, None)
    fps_per_image, sensitivity = compute_froc_curve_data(
        np.asarray([*fp, 0.0], dtype=float), np.asarray(tp, dtype=float), len(references), images
    )
    at = {rate: float(compute_froc_score(fps_per_image, sensitivity, (rate,))) for rate in FP_RATES}
    score = float(compute_froc_score(fps_per_image, sensitivity, FP_RATES))
    return FrocScores(
        finding,
        images,
        len(references),
        len(marks),
        tp,
        fp,
        [float(v) for v in fps_per_image],
        [float(v) for v in sensitivity],
        at,
        score,
    )
