"""What every result object is built from: a prediction checked against its template.

:class:`Analysis` is made once per result set. It checks the prediction against the
template, merges the plugin's measurements with the ones the node computes
(:mod:`node.results.measure`; the plugin's value wins where both exist), evaluates the
template's qualitative findings, and computes outlines (:mod:`node.results.contour`)
on demand, once, for the SR, the GSPS and the Secondary Capture overlay.

Per-segment work runs inside the segment's bounding box (found for every segment at
once, :func:`segment_boxes`): no full-volume mask per segment, which cost seconds for
100 segments on 512x512x300 and one label map's size in memory each.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.contract.plugin import Prediction
from node.contract.template import CodeSpec, FindingSpec, ResultTemplate, SegmentSpec
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results import measure
from node.results.contour import outlines
from node.results.radiomics import RadiomicsResult, compute_radiomics

log = logging.getLogger(__name__)

#: Bytes of the intp index array :func:`segment_numbers_map` takes at a time.
_LOOKUP_SLAB_BYTES = 16 * 2**20

#: A ``(slices, rows, columns)`` box of a volume.
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Finding:
    """One qualitative finding of one segment."""

    spec: FindingSpec
    value: CodeSpec


def segment_numbers_map(
    prediction: Prediction, volume: Volume, template: ResultTemplate
) -> np.ndarray:
    """The label map re-coded to SEG segment numbers (``uint8`` or ``uint16``).

    Raises
    ------
    TemplateError
        When the label map's shape differs from the volume's or it holds a label value
        the template does not declare.
    """
    label_map = np.asarray(prediction.label_map)
    if label_map.shape != volume.shape:
        raise TemplateError(
            f"template {template.name}: label map shape {label_map.shape} differs from "
            f"volume shape {volume.shape}"
        )
    if not np.issubdtype(label_map.dtype, np.integer) and label_map.dtype != np.bool_:
        raise TemplateError(
            f"template {template.name}: label map must be integer, got {label_map.dtype}"
        )
    declared = {segment.label_value for segment in template.segments}
    unknown = undeclared_labels(label_map, declared)
    if unknown:
        raise TemplateError(
            f"template {template.name}: label map holds label values {unknown} that the "
            f"template does not declare (declared: {sorted(declared)})"
        )
    dtype = np.uint8 if len(template.segments) < 256 else np.uint16
    lookup = np.zeros(max(declared) + 1, dtype=dtype)
    for number, segment in enumerate(template.segments, start=1):
        lookup[segment.label_value] = number
    if label_map.dtype == np.bool_:
        label_map = label_map.view(np.uint8)
    if label_map.dtype == dtype and np.array_equal(lookup, np.arange(len(lookup))):
        # Label values 1..N in template order: already segment numbers (no copy).
        return label_map
    # Indexing with a non-intp array copies the index as intp (8x the map): a slab at a time.
    numbers = np.empty(label_map.shape, dtype=dtype)
    step = max(1, _LOOKUP_SLAB_BYTES // max(1, label_map[:1].size * 8))
    for start in range(0, len(label_map), step):
        numbers[start : start + step] = lookup[label_map[start : start + step]]
    return numbers


def undeclared_labels(label_map: np.ndarray, declared: set[int]) -> list[int]:
    """The non-zero values of ``label_map`` not in ``declared``, ascending.

    An unsigned or boolean map whose maximum is at most ``declared``'s and every value
    up to it declared holds none: one ``max`` pass instead of counting every value.
    """
    if label_map.size and label_map.dtype in (np.uint8, np.uint16, np.bool_):
        top = int(label_map.max())
        if top <= max(declared, default=0) and set(range(1, top + 1)) <= declared:
            return []
    return sorted(set(label_values(label_map).tolist()) - {0} - declared)


def label_values(label_map: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label map, ascending.

    ``np.unique`` sorts the whole map (seconds for 512x512x300); an unsigned 8/16-bit
    (or boolean) map is counted in chunks with ``np.bincount`` instead.
    """
    if label_map.dtype not in (np.uint8, np.uint16, np.bool_):
        return np.unique(label_map)
    counts = np.zeros(1 << (8 * label_map.dtype.itemsize), dtype=np.int64)
    flat = label_map.reshape(-1)
    step = 1 << 20  # bincount casts to intp: 8 MiB at a time
    for start in range(0, flat.size, step):
        counts += np.bincount(flat[start : start + step], minlength=counts.size)
    return np.flatnonzero(counts).astype(label_map.dtype)


#: Up to this many segments, boxes are found by comparing slabs with each number
#: (a few fast numpy passes); beyond, by ``ndimage.find_objects`` (one slower pass).
_COMPARE_UP_TO = 4
#: Voxels per slab compared at a time.
_SLAB_VOXELS = 8 * 2**20


def segment_boxes(segment_numbers: np.ndarray, count: int) -> list[Box | None]:
    """Bounding box of each segment number 1..``count`` (None when empty)."""
    if count > _COMPARE_UP_TO:
        boxes = ndimage.find_objects(segment_numbers, max_label=count)
        return [None if box is None else (box[0], box[1], box[2]) for box in boxes]
    found: list[list[int] | None] = [None] * count
    plane = max(1, segment_numbers[:1].size)
    step = max(1, _SLAB_VOXELS // plane)
    for start in range(0, len(segment_numbers), step):
        slab = segment_numbers[start : start + step]
        for index in range(count):
            box = measure.bounding_box(slab == index + 1)
            if box is None:
                continue
            corners = [start + box[0].start, box[1].start, box[2].start]
            ends = [start + box[0].stop, box[1].stop, box[2].stop]
            known = found[index]
            if known is None:
                found[index] = corners + ends
            else:
                found[index] = [min(a, b) for a, b in zip(known[:3], corners, strict=True)] + [
                    max(a, b) for a, b in zip(known[3:], ends, strict=True)
                ]
    return [
        None if f is None else (slice(f[0], f[3]), slice(f[1], f[4]), slice(f[2], f[5]))
        for f in found
    ]


class Analysis:
    """A prediction checked against its template, with everything derived from it.

    Parameters
    ----------
    volume
        The source volume.
    prediction
        The plugin's output (label values, measurement and finding keys from the template).
    template
        The routine's template.

    Raises
    ------
    TemplateError
        The prediction does not match the template.
    """

    def __init__(self, volume: Volume, prediction: Prediction, template: ResultTemplate) -> None:
        self.volume = volume
        self.prediction = prediction
        self.template = template
        #: Label map re-coded to segment numbers 1..N (template order).
        self.segment_numbers = segment_numbers_map(prediction, volume, template)
        #: Bounding box of each segment number 1..N (None for an empty segment).
        self.boxes = segment_boxes(self.segment_numbers, len(template.segments))
        self.measurements = self._merge_measurements()
        self.findings = self._evaluate_findings()
        # Per instance: a functools.cache on the method would keep every Analysis alive.
        self._outlines: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    @property
    def segments(self) -> tuple[SegmentSpec, ...]:
        return self.template.segments

    def mask(self, label_value: int) -> np.ndarray:
        """Boolean mask of one template segment over the whole volume (prefer :meth:`box_mask`)."""
        return self.segment_numbers == self.template.segment_number(label_value)

    def box(self, label_value: int) -> Box | None:
        """Bounding box of one template segment (None when it is empty)."""
        return self.boxes[self.template.segment_number(label_value) - 1]

    def box_mask(self, label_value: int) -> tuple[Box, np.ndarray] | None:
        """``(box, mask inside the box)`` of one template segment (None when it is empty)."""
        number = self.template.segment_number(label_value)
        box = self.boxes[number - 1]
        if box is None:
            return None
        return box, self.segment_numbers[box] == number

    def _merge_measurements(self) -> dict[int, dict[str, float]]:
        template = self.template
        given = self.prediction.measurements
        declared_labels = {s.label_value for s in template.segments}
        stray = sorted(set(given) - declared_labels)
        if stray:
            raise TemplateError(
                f"template {template.name}: measurements for labels {stray} that the "
                "template does not declare"
            )
        keys = {spec.key for spec in template.measurements}
        for label, values in given.items():
            unknown = sorted(set(values) - keys)
            if unknown:
                raise TemplateError(
                    f"template {template.name}: measurements {unknown} for label {label} "
                    "are not declared in the template"
                )
        merged: dict[int, dict[str, float]] = {}
        for segment in template.segments:
            label = segment.label_value
            values = dict(given.get(label, {}))
            missing = [
                spec for spec in template.measurements if spec.compute and spec.key not in values
            ]
            if missing:
                boxed = self.box_mask(label)
                if boxed is None:  # empty: what the computations give for no voxels
                    box: Box = (slice(0, 1), slice(0, 1), slice(0, 1))
                    mask = np.zeros((1, 1, 1), dtype=bool)
                else:
                    box, mask = boxed
                origin = (box[0].start, box[1].start, box[2].start)
                for spec in missing:
                    assert spec.compute is not None
                    values[spec.key] = measure.compute(
                        spec.compute,
                        spec.unit,
                        mask,
                        self.volume.array[box],
                        self.volume.spacing,
                        origin=origin,
                    )
            # template order, finite values only
            merged[label] = {}
            for spec in template.measurements:
                if spec.key not in values:
                    continue
                value = float(values[spec.key])
                if math.isfinite(value):
                    merged[label][spec.key] = value
                else:
                    log.warning(
                        "measurement left out, not finite template=%s label=%d key=%s",
                        template.name,
                        label,
                        spec.key,
                    )
        return merged

    def _evaluate_findings(self) -> dict[int, list[Finding]]:
        template = self.template
        given = self.prediction.findings
        specs = {spec.key: spec for spec in template.findings}
        for label, values in given.items():
            unknown = sorted(set(values) - {k for k, s in specs.items() if s.values is not None})
            if unknown or label not in {s.label_value for s in template.segments}:
                raise TemplateError(
                    f"template {template.name}: findings {sorted(values)} for label {label} "
                    "are not plugin-given findings of a declared segment"
                )
        result: dict[int, list[Finding]] = {}
        for segment in template.segments:
            label = segment.label_value
            found: list[Finding] = []
            for spec in template.findings:
                if spec.segments is not None and label not in spec.segments:
                    continue
                value: CodeSpec | None = None
                if spec.rule is not None:
                    measured = self.measurements[label].get(spec.rule.measurement)
                    if measured is not None:
                        value = spec.rule.evaluate(measured)
                elif spec.values is not None:
                    code_key = given.get(label, {}).get(spec.key)
                    if code_key is not None:
                        if code_key not in spec.values:
                            raise TemplateError(
                                f"template {template.name}: finding {spec.key} of label "
                                f"{label} is {code_key!r}, not one of {sorted(spec.values)}"
                            )
                        value = spec.values[code_key]
                if value is not None:
                    found.append(Finding(spec, value))
            result[label] = found
        return result

    @functools.cached_property
    def radiomics(self) -> RadiomicsResult | None:
        """pyradiomics features of the segments that ask for them (None: none asks)."""
        if not self.template.radiomics_classes:
            return None
        return compute_radiomics(self.volume, self.segment_numbers, self.template)

    @functools.cached_property
    def largest_slices(self) -> dict[int, int]:
        """``{label: slice index of its largest area}`` for non-empty segments."""
        slices = {}
        for segment in self.segments:
            boxed = self.box_mask(segment.label_value)
            if boxed is None:
                continue
            box, mask = boxed
            index = measure.largest_area_slice(mask)  # slices outside the box have none
            if index is not None:
                slices[segment.label_value] = box[0].start + index
        return slices

    def outlines(self, label_value: int, slice_index: int) -> tuple[np.ndarray, ...]:
        """Closed outline polygons ``(column, row)`` of a segment on one slice, largest first."""
        key = (label_value, slice_index)
        found = self._outlines.get(key)
        if found is None:
            number = self.template.segment_number(label_value)
            box = self.boxes[number - 1]
            if box is None:
                found = ()
            else:
                # Within the box's rows and columns: the same components in the same
                # order, and holes are the same (outside the box is all outside).
                rows, columns = box[1], box[2]
                crop = self.segment_numbers[slice_index, rows, columns] == number
                offset = np.asarray([columns.start, rows.start], dtype=np.float64)
                found = tuple(polygon + offset for polygon in outlines(crop))
            self._outlines[key] = found
        return found

    @functools.cached_property
    def slices_with_findings(self) -> list[int]:
        """Indices of slices where any segment is present, in volume order."""
        flat = self.segment_numbers.reshape(self.segment_numbers.shape[0], -1)
        return [int(i) for i in np.flatnonzero(flat.any(axis=1))]

    def labels_on(self, slice_index: int) -> list[int]:
        """Label values present on one slice, in template order."""
        present = set(np.unique(self.segment_numbers[slice_index]).tolist()) - {0}
        return [
            segment.label_value
            for number, segment in enumerate(self.segments, start=1)
            if number in present
        ]

    def summary(self, label_value: int, *, digits: int = 3) -> str:
        """``"Right lung: 2870 cm3, -812 HU; Volume: Normal"`` for overlays and labels."""
        segment = self.template.segment(label_value)
        parts = []
        for key, value in self.measurements.get(label_value, {}).items():
            spec = self.template.measurement(key)
            unit = {"[hnsf'U]": "HU", "1": "", "{ratio}": ""}.get(spec.unit, spec.unit)
            parts.append(f"{_format(value, digits)} {unit}".strip())
        text = segment.label
        if parts:
            text += ": " + ", ".join(parts)
        for finding in self.findings.get(label_value, []):
            text += f"; {finding.spec.concept.meaning}: {finding.value.meaning}"
        return text


def first_value(value: object) -> float:
    """The first number of a possibly multi-valued attribute (WindowCenter may have several)."""
    if isinstance(value, str | int | float):
        return float(value)
    try:
        return float(next(iter(value)))  # type: ignore[call-overload]
    except (TypeError, StopIteration, ValueError):
        return float("nan")


def _format(value: float, digits: int) -> str:
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"
