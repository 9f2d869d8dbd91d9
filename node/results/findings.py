"""Classifications and detections of a prediction, checked against the template.

:class:`ImageFindings` is made once per result set, like
:class:`~node.results.analysis.Analysis` is for a label map. It checks every
:class:`~node.contract.plugin.Classification` and :class:`~node.contract.plugin.Detection`
against the template's ``classifications:`` and ``detections:`` (format 3), decides
present or absent from each probability and its operating threshold, leaves out
detections scoring below their reporting threshold, numbers the rest per finding (1 =
highest score) and gives each a Tracking ID and a Tracking UID derived from the input,
so SR groups and GSPS graphics of one finding share them and re-runs repeat them.
The SR (:mod:`node.results.sr.findings`), the GSPS (:mod:`node.results.pr.findings`)
and the Secondary Capture overlay (:mod:`node.results.sc.findings`) are built from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from node.contract.plugin import Prediction
from node.contract.template import ClassificationSpec, CodeSpec, DetectionSpec, ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.uids import ResultUIDs, derive_uid

log = logging.getLogger(__name__)


def format_score(value: float, unit: str) -> str:
    """``0.87`` for unit ``1``, ``87 %`` for unit ``%`` (how labels and overlays show it)."""
    return f"{value * 100:.0f} %" if unit == "%" else f"{value:.2f}"


@dataclass(frozen=True)
class ClassificationResult:
    """One classification as reported: the coded answer, the probability, the image."""

    spec: ClassificationSpec
    probability: float
    #: Index into ``volume.datasets``; None for a series-level finding.
    frame: int | None
    tracking_id: str
    tracking_uid: str

    @property
    def present(self) -> bool:
        """``probability >= threshold``."""
        return self.probability >= self.spec.threshold

    @property
    def value(self) -> CodeSpec:
        """The template's code for present or absent."""
        return self.spec.present if self.present else self.spec.absent

    @property
    def reported_probability(self) -> float:
        """The probability in the template's unit (0-1 for ``1``, 0-100 for ``%``)."""
        return self.probability * 100.0 if self.spec.unit == "%" else self.probability

    @property
    def text(self) -> str:
        """``"Nodule: Present (0.87)"`` for labels and overlays."""
        return (
            f"{self.spec.display_label}: {self.value.meaning} "
            f"({format_score(self.probability, self.spec.unit)})"
        )


@dataclass(frozen=True)
class DetectionResult:
    """One reported detection: where, how confident, and its tracking identity."""

    spec: DetectionSpec
    score: float
    frame: int
    box: tuple[float, float, float, float] | None
    point: tuple[float, float] | None
    #: 1 for the highest-scoring detection of this finding, 2 for the next...
    number: int
    tracking_id: str
    tracking_uid: str

    @property
    def reported_score(self) -> float:
        """The score in the template's unit (0-1 for ``1``, 0-100 for ``%``)."""
        return self.score * 100.0 if self.spec.unit == "%" else self.score

    @property
    def outline(self) -> np.ndarray:
        """Image coordinates ``(column, row)``: the closed box (5 points) or the point (1)."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            return np.asarray([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
        assert self.point is not None
        return np.asarray([self.point], dtype=float)

    @property
    def text(self) -> str:
        """``"Nodule 1: 0.87"`` for labels and overlays."""
        return (
            f"{self.spec.display_label} {self.number}: {format_score(self.score, self.spec.unit)}"
        )


class ImageFindings:
    """A prediction's classifications and detections, checked against the template.

    Parameters
    ----------
    volume
        The source images (frames index ``volume.datasets``).
    prediction
        The plugin's output; only ``classifications`` and ``detections`` are read.
    template
        The routine's template (format 3 for classifications and detections).
    uids
        The result set's UIDs; Tracking UIDs are derived from its input identity.

    Raises
    ------
    TemplateError
        A finding key the template does not declare, a per-image classification
        without an image (or a series-level one with an image), the same classification
        twice, an image index outside the series, or a box or point outside its image.
    """

    def __init__(
        self, volume: Volume, prediction: Prediction, template: ResultTemplate, uids: ResultUIDs
    ) -> None:
        self.volume = volume
        self.template = template
        self._uids = uids
        self.classifications = self._check_classifications(prediction)
        self.detections, self.suppressed = self._check_detections(prediction)
        if self.suppressed:
            log.info(
                "detections below their reporting threshold left out template=%s count=%d",
                template.name,
                self.suppressed,
            )

    def __bool__(self) -> bool:
        return bool(self.classifications or self.detections)

    # -- checks ---------------------------------------------------------------------

    def _where(self, kind: str, index: int, key: str) -> str:
        return f"template {self.template.name}: prediction {kind}[{index}] ({key!r})"

    def _check_frame(self, where: str, frame: int) -> None:
        count = len(self.volume.datasets)
        if not 0 <= frame < count:
            raise TemplateError(f"{where}: frame {frame} is outside the series' {count} images")

    def _check_classifications(self, prediction: Prediction) -> tuple[ClassificationResult, ...]:
        declared = {spec.key: spec for spec in self.template.classifications}
        seen: set[tuple[str, int | None]] = set()
        results: list[ClassificationResult] = []
        for index, given in enumerate(prediction.classifications):
            where = self._where("classifications", index, given.finding)
            spec = declared.get(given.finding)
            if spec is None:
                raise TemplateError(
                    f"{where}: not a classification the template declares "
                    f"(declared: {sorted(declared) or 'none'})"
                )
            if spec.per_image and given.frame is None:
                raise TemplateError(f"{where}: a per-image classification needs its frame")
            if not spec.per_image and given.frame is not None:
                raise TemplateError(
                    f"{where}: a series-level classification has no frame "
                    "(declare per_image: true for one finding per image)"
                )
            if given.frame is not None:
                self._check_frame(where, given.frame)
            if (given.finding, given.frame) in seen:
                raise TemplateError(f"{where}: given twice for the same image or series")
            seen.add((given.finding, given.frame))
            tracking_id = spec.key
            if given.frame is not None:
                number = self.volume.datasets[given.frame].get("InstanceNumber", given.frame + 1)
                tracking_id = f"{spec.key} image {number}"
                frame_number = self.volume.frame_number(given.frame)
                if frame_number is not None:
                    tracking_id += f" frame {frame_number}"
            results.append(
                ClassificationResult(
                    spec=spec,
                    probability=float(given.probability),
                    frame=given.frame,
                    tracking_id=tracking_id[:64],
                    tracking_uid=derive_uid(
                        *self._uids.input_key,
                        "tracking-classification",
                        spec.key,
                        "" if given.frame is None else str(given.frame),
                    ),
                )
            )
        order = {spec.key: i for i, spec in enumerate(self.template.classifications)}
        missing = sorted(
            spec.key
            for spec in self.template.classifications
            if spec.key not in {k for k, _ in seen}
        )
        if missing:
            log.info("classifications not given template=%s keys=%s", self.template.name, missing)
        return tuple(
            sorted(
                results,
                key=lambda r: (order[r.spec.key], -1 if r.frame is None else r.frame),
            )
        )

    def _check_detections(self, prediction: Prediction) -> tuple[tuple[DetectionResult, ...], int]:
        declared = {spec.key: spec for spec in self.template.detections}
        rows, columns = self.volume.shape[1], self.volume.shape[2]
        kept: dict[str, list[tuple[int, float, int]]] = {}
        suppressed = 0
        for index, given in enumerate(prediction.detections):
            where = self._where("detections", index, given.finding)
            spec = declared.get(given.finding)
            if spec is None:
                raise TemplateError(
                    f"{where}: not a detection the template declares "
                    f"(declared: {sorted(declared) or 'none'})"
                )
            self._check_frame(where, given.frame)
            xs, ys = (
                (given.box[0::2], given.box[1::2])
                if given.box is not None
                else ((given.point[0],), (given.point[1],))  # type: ignore[index]
            )
            if (
                min(xs) < 0
                or min(ys) < 0
                or max(xs) > columns
                or max(ys) > rows
                or not all(np.isfinite([*xs, *ys]))
            ):
                shape = f"box {given.box}" if given.box is not None else f"point {given.point}"
                raise TemplateError(
                    f"{where}: {shape} is outside the {columns}x{rows} image "
                    "(x along columns 0-columns, y along rows 0-rows)"
                )
            if given.score < spec.report_threshold:
                suppressed += 1
                continue
            kept.setdefault(spec.key, []).append((index, given.score, given.frame))
        results: list[DetectionResult] = []
        for spec in self.template.detections:
            ranked = sorted(kept.get(spec.key, []), key=lambda item: (-item[1], item[2], item[0]))
            for number, (index, score, frame) in enumerate(ranked, start=1):
                given = prediction.detections[index]
                results.append(
                    DetectionResult(
                        spec=spec,
                        score=float(score),
                        frame=frame,
                        box=given.box,
                        point=given.point,
                        number=number,
                        tracking_id=f"{spec.key} {number}"[:64],
                        tracking_uid=derive_uid(
                            *self._uids.input_key, "tracking-detection", spec.key, str(number)
                        ),
                    )
                )
        return tuple(results), suppressed

    # -- what overlays draw -------------------------------------------------------------

    def detections_on(self, frame: int) -> list[DetectionResult]:
        """Reported detections on one image, in template order, then by number."""
        return [d for d in self.detections if d.frame == frame]

    def texts_on(self, frame: int) -> list[str]:
        """Classification texts shown on one image: series-level ones, then its own."""
        return [c.text for c in self.classifications if c.frame is None or c.frame == frame]

    @property
    def frames(self) -> list[int]:
        """Images an overlay annotates, in volume order.

        Those with a detection or a per-image classification; with series-level
        classifications, the first image too (where their text is shown).
        """
        frames = {d.frame for d in self.detections}
        frames |= {c.frame for c in self.classifications if c.frame is not None}
        if any(c.frame is None for c in self.classifications):
            frames.add(0)
        return sorted(frames)
