"""DICOM Segmentation on the exact grid of the source series: BINARY, LABELMAP or FRACTIONAL.

One segment per template segment, numbered 1..N in template order (so segment numbers
do not depend on which labels a prediction happens to contain). Frames are kept even
when empty: viewers have misplaced overlays when frames inside a segment were omitted.
Each frame references its source image; the SEG is in the source study, in a new
series, with ``ReferencedSeriesSequence`` and the source's ``BodyPartExamined``.

* BINARY (default): one bit-packed frame per slice and segment (Segmentation Storage).
* LABELMAP: one 8/16-bit frame per slice holding segment numbers (Label Map
  Segmentation Storage, DICOM 2024); fewer, smaller frames, read by newer viewers.
* FRACTIONAL: one 8-bit frame per slice and segment holding the plugin's probability
  (``Prediction.probabilities``, channel *i* = template segment *i*) scaled to 0..255.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np

from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, SegmentSpec
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.analysis import Box, segment_numbers_map
from node.results.identity import SeriesIdentity
from node.results.provenance import (
    equipment_arguments,
    instance_arguments,
    seg_algorithm_identification,
)
from node.results.seg.direct import build_direct_seg
from node.results.seg.frames import build_binary_seg
from node.results.uids import ResultUIDs

log = logging.getLogger(__name__)


def segment_description(
    template: ResultTemplate, segment: SegmentSpec, number: int, tracking_uid: str
) -> hd.seg.SegmentDescription:
    """Segment Description macro for one template segment."""
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment.label,
        segmented_property_category=segment.category.concept,
        segmented_property_type=segment.type.concept,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=seg_algorithm_identification(template),
        tracking_uid=tracking_uid,
        tracking_id=segment.tracking_id,
        anatomic_regions=(
            [segment.anatomic_region.concept] if segment.anatomic_region is not None else None
        ),
        display_color=segment.display_colour,
    )
    if segment.type_modifier is not None:
        # highdicom has no parameter for it; the modifier (laterality) is nested in
        # the Segmented Property Type Code Sequence item (PS3.3 C.8.20.4).
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        type_item.SegmentedPropertyTypeModifierCodeSequence = [segment.type_modifier.concept]
    return description


def build_seg(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    revision: int,
    tracking_uids: Mapping[int, str] | None = None,
    segmentation_type: str = "BINARY",
    segment_numbers: np.ndarray | None = None,
    boxes: Sequence[Box | None] | None = None,
    fast: bool = True,
) -> hd.seg.Segmentation:
    """Build the SEG of a prediction.

    Parameters
    ----------
    volume
        The source volume; ``volume.datasets`` (headers without pixel data) are the
        source images, one per slice in volume order.
    prediction
        Its ``label_map`` (shape of ``volume.array``) holds template label values.
    template
        Codes, colours and algorithm identity.
    series, sop_instance_uid
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`) and
        of the instance.
    revision
        Result revision (1 for the first result of a source series); recorded in
        the content description.
    tracking_uids
        ``{label value: Tracking UID}`` for every template segment, shared with the SR;
        derived from the input (:class:`~node.results.uids.ResultUIDs`) when omitted.
    segmentation_type
        ``BINARY``, ``LABELMAP`` or ``FRACTIONAL`` (needs ``prediction.probabilities``).
    segment_numbers
        The label map already re-coded to segment numbers (computed when omitted).
    boxes
        Each segment's bounding box in ``segment_numbers`` (None: empty), as the
        Analysis found them: a BINARY SEG's frames are packed inside them only (found
        again when omitted).
    fast
        Build a BINARY SEG directly (:func:`node.results.seg.direct.build_direct_seg`),
        or where that does not apply with :func:`node.results.seg.frames.build_binary_seg`
        (the same object, frames packed with numpy); False builds it through highdicom's
        constructor and per-frame loop (the reference the tests compare with).

    Raises
    ------
    TemplateError
        The prediction does not match the template, or FRACTIONAL without probabilities
        of shape ``(segments, slices, rows, columns)``.
    """
    kind = hd.seg.SegmentationTypeValues(segmentation_type)
    if segment_numbers is None:
        segment_numbers = segment_numbers_map(prediction, volume, template)
    pixel_array: np.ndarray = segment_numbers
    extra: dict[str, object] = {}
    if kind is hd.seg.SegmentationTypeValues.FRACTIONAL:
        pixel_array = _fractional_pixels(prediction, volume, template)
        extra = {"max_fractional_value": 255}
    if tracking_uids is None:
        uids = ResultUIDs.for_volume(volume, template)
        tracking_uids = {s.label_value: uids.tracking_uid(s.label_value) for s in template.segments}
    descriptions = []
    for number, segment in enumerate(template.segments, start=1):
        try:
            tracking_uid = tracking_uids[segment.label_value]
        except KeyError:
            raise TemplateError(
                f"template {template.name}: no tracking UID for label {segment.label_value}"
            ) from None
        descriptions.append(segment_description(template, segment, number, tracking_uid))

    algorithm = template.algorithm
    arguments: dict[str, Any] = {
        "segmentation_type": kind,
        "content_label": template.output.content_label,
        "content_description": f"{algorithm.name} {algorithm.version} revision {revision}"[:64],
        "omit_empty_frames": False,
        **instance_arguments(template, series, sop_instance_uid),
        **equipment_arguments(series),
        **extra,
    }

    def build(
        segments: Sequence[hd.seg.SegmentDescription], pixels: np.ndarray
    ) -> hd.seg.Segmentation:
        return hd.seg.Segmentation(
            source_images=list(volume.datasets),
            pixel_array=pixels,
            segment_descriptions=segments,
            **arguments,
        )

    seg: hd.seg.Segmentation | None = None
    if kind is hd.seg.SegmentationTypeValues.BINARY and fast:
        seg = build_direct_seg(volume, pixel_array, descriptions, arguments, boxes)
        if seg is None:
            log.debug("seg built through highdicom's constructor (outside the direct case)")
            seg = build_binary_seg(volume, pixel_array, descriptions, build, boxes)
    if seg is None:
        seg = build(descriptions, pixel_array)
    seg.DeviceUID = series.device_uid  # General Equipment: the algorithm made this
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = ""  # type 2 in the Content Identification Macro (dcmqi asks)
    body_part = volume.datasets[0].get("BodyPartExamined")
    if body_part:
        seg.BodyPartExamined = body_part
    log.info(
        "seg built type=%s sop_instance_uid=%s series_uid=%s segments=%d frames=%d revision=%d",
        kind.value,
        sop_instance_uid,
        series.series_instance_uid,
        len(descriptions),
        int(seg.NumberOfFrames),
        revision,
    )
    return seg


def _fractional_pixels(
    prediction: Prediction, volume: Volume, template: ResultTemplate
) -> np.ndarray:
    """Probabilities ``(segments, slices, rows, columns)`` as highdicom's ``(..., segments)``."""
    probabilities = prediction.probabilities
    expected = (len(template.segments), *volume.shape)
    if probabilities is None:
        raise TemplateError(
            f"template {template.name}: a FRACTIONAL SEG needs the plugin's probabilities"
        )
    if tuple(probabilities.shape) != expected:
        raise TemplateError(
            f"template {template.name}: probabilities have shape {tuple(probabilities.shape)}, "
            f"expected {expected} (one channel per template segment)"
        )
    scaled = np.clip(np.asarray(probabilities, dtype=np.float32), 0.0, 1.0)
    return np.ascontiguousarray(np.moveaxis(scaled, 0, -1))
