"""BINARY DICOM Segmentation on the exact grid of the source series.

One segment per template segment, numbered 1..N in template order (so segment numbers
do not depend on which labels a prediction happens to contain). Frames are kept even
when empty: viewers have misplaced overlays when frames inside a segment were omitted.
Each frame references its source image; the SEG is in the source study, in a new
series, with ``ReferencedSeriesSequence`` and the source's ``BodyPartExamined``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np

from node.errors import TemplateError
from node.results.provenance import processing_equipment, seg_algorithm_identification
from node.results.template import ResultTemplate, SegmentSpec
from node.results.uids import ResultUIDs
from node.runtime.plugin import Prediction
from node.runtime.volume import Volume

log = logging.getLogger(__name__)


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
    present = {int(v) for v in np.unique(label_map)} - {0}
    declared = {segment.label_value for segment in template.segments}
    unknown = sorted(present - declared)
    if unknown:
        raise TemplateError(
            f"template {template.name}: label map holds label values {unknown} that the "
            f"template does not declare (declared: {sorted(declared)})"
        )
    dtype = np.uint8 if len(template.segments) < 256 else np.uint16
    lookup = np.zeros(max(declared) + 1, dtype=dtype)
    for number, segment in enumerate(template.segments, start=1):
        lookup[segment.label_value] = number
    return lookup[label_map.astype(np.int64, copy=False)]


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
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
    revision: int,
    tracking_uids: Mapping[int, str] | None = None,
) -> hd.seg.Segmentation:
    """Build the BINARY SEG of a prediction.

    Parameters
    ----------
    volume
        The source volume; ``volume.datasets`` (headers without pixel data) are the
        source images, one per slice in volume order.
    prediction
        Its ``label_map`` (shape of ``volume.array``) holds template label values.
    template
        Codes, colours and algorithm identity.
    series_instance_uid, sop_instance_uid, series_number, series_description
        Identity of the new series and instance.
    revision
        Result revision (1 for the first result of a source series); recorded in
        the content description.
    tracking_uids
        ``{label value: Tracking UID}`` for every template segment, shared with the SR;
        derived from the input (:class:`~node.results.uids.ResultUIDs`) when omitted.
    """
    pixel_array = segment_numbers_map(prediction, volume, template)
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
    seg = hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.device_uid,
        content_label=template.output.content_label,
        content_description=f"{algorithm.name} {algorithm.version} revision {revision}"[:64],
        series_description=series_description,
        omit_empty_frames=False,
        contributing_equipment=[processing_equipment(template)],
    )
    seg.DeviceUID = algorithm.device_uid  # General Equipment: the algorithm made this
    body_part = volume.datasets[0].get("BodyPartExamined")
    if body_part:
        seg.BodyPartExamined = body_part
    log.info(
        "seg built sop_instance_uid=%s series_uid=%s segments=%d frames=%d revision=%d",
        sop_instance_uid,
        series_instance_uid,
        len(descriptions),
        int(seg.NumberOfFrames),
        revision,
    )
    return seg
