"""Grayscale Softcopy Presentation State with the segments' outlines (fallback display).

For PACS viewers that show neither SEG nor SR but apply presentation states: one GSPS
references every source image and, on each slice where a segment is present, draws
its outlines (closed POLYLINEs along the pixel edges, one per connected component) on
a graphic layer of its own, in the segment's colour, with a text label. On the slice
where the segment's area is largest the label carries the measurements and findings.
Graphic objects carry the segment's Tracking ID and UID (the same as in SEG and SR).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.analysis import Analysis, first_value
from node.results.identity import SeriesIdentity
from node.results.provenance import (
    copy_body_part,
    equipment_arguments,
    instance_arguments,
)

log = logging.getLogger(__name__)

#: Longest text a label gets (Unformatted Text Value is ST, but viewers cut long lines).
MAX_LABEL_CHARS = 64


def _label_box(
    polygon: np.ndarray, rows: int, columns: int, characters: int
) -> tuple[float, float, float, float]:
    """A bounding box above the outline (below it when there is no room), inside the image."""
    height = max(rows / 24.0, 4.0)
    width = min(float(columns), characters * height * 0.6)
    left = float(np.clip(polygon[:, 0].min(), 0.0, columns - width))
    top = float(polygon[:, 1].min()) - height
    if top < 0.0:
        top = min(float(polygon[:, 1].max()), rows - height)
    return (left, top, left + width, top + height)


def segment_graphics(
    analysis: Analysis, tracking_uids: dict[int, str]
) -> tuple[list[hd.pr.GraphicLayer], list[hd.pr.GraphicAnnotation]]:
    """The segments' graphic layers (those used) and outline annotations, slice by slice."""
    volume = analysis.volume
    template = analysis.template
    rows, columns = volume.shape[1], volume.shape[2]
    layers = {
        segment.label_value: hd.pr.GraphicLayer(
            layer_name=f"SEGMENT_{number}",
            order=number,
            description=segment.label,
            display_color=segment.display_colour,
        )
        for number, segment in enumerate(template.segments, start=1)
    }
    annotations = []
    for slice_index in analysis.slices_with_findings:
        image = volume.datasets[slice_index]
        for label in analysis.labels_on(slice_index):
            segment = template.segment(label)
            polygons = analysis.outlines(label, slice_index)
            graphics = [
                hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                    graphic_data=polygon,
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    tracking_id=segment.tracking_id,
                    tracking_uid=tracking_uids[label],
                )
                for polygon in polygons
            ]
            largest = analysis.largest_slices.get(label) == slice_index
            text = analysis.summary(label) if largest else segment.label
            text = text[:MAX_LABEL_CHARS]
            label_object = hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_label_box(polygons[0], rows, columns, len(text)),
            )
            annotations.append(
                hd.pr.GraphicAnnotation(
                    referenced_images=[image],
                    graphic_layer=layers[label],
                    graphic_objects=graphics,
                    text_objects=[label_object],
                )
            )
    used_layers = {
        label
        for label in layers
        for a in annotations
        if a.GraphicLayer == layers[label].GraphicLayer
    }
    return [layers[label] for label in sorted(used_layers)], annotations


def distinct_images(images: Sequence[Dataset]) -> list[Dataset]:
    """Each instance once (a multi-frame image is listed once per frame in a volume)."""
    return list({str(image.SOPInstanceUID): image for image in images}.values())


def presentation_state(
    volume: Volume,
    template: ResultTemplate,
    *,
    layers: list[hd.pr.GraphicLayer],
    annotations: list[hd.pr.GraphicAnnotation],
    content_description: str,
    series: SeriesIdentity,
    sop_instance_uid: str,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS over every image of ``volume`` with ``annotations`` on ``layers``.

    The source's first window is the VOI; a MONOCHROME1 source gets an INVERSE
    presentation LUT so it shows as its modality displays it.
    """
    first = volume.datasets[0]
    voi = None
    if "WindowCenter" in first and "WindowWidth" in first:
        voi = [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=float(first_value(first.WindowCenter)),
                window_width=float(first_value(first.WindowWidth)),
            )
        ]
    inverse = str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=distinct_images(volume.datasets),
        content_label=template.output.content_label,
        content_description=content_description[:64],
        graphic_annotations=annotations or None,
        graphic_layers=layers or None,
        voi_lut_transformations=voi,
        **instance_arguments(template, series, sop_instance_uid),
        **equipment_arguments(series),
        presentation_lut_transformation=(
            hd.PresentationLUTTransformation(
                presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
            )
            if inverse
            else None
        ),
    )
    gsps.DeviceUID = series.device_uid
    copy_body_part(gsps, first)
    return gsps


def build_gsps(
    analysis: Analysis,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    tracking_uids: dict[int, str],
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Build the presentation state of one result.

    Parameters
    ----------
    analysis
        The checked prediction (outlines, measurements, findings).
    series, sop_instance_uid
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`) and
        of the instance.
    tracking_uids
        ``{label value: Tracking UID}`` shared with SEG and SR.
    """
    layers, annotations = segment_graphics(analysis, tracking_uids)
    algorithm = analysis.template.algorithm
    gsps = presentation_state(
        analysis.volume,
        analysis.template,
        layers=layers,
        annotations=annotations,
        content_description=f"{algorithm.name} {algorithm.version} outlines",
        series=series,
        sop_instance_uid=sop_instance_uid,
    )
    log.info("gsps built sop_instance_uid=%s annotations=%d", sop_instance_uid, len(annotations))
    return gsps


def referenced_image_uids(gsps: Dataset) -> set[str]:
    """SOP Instance UIDs a presentation state applies to."""
    return {
        str(item.ReferencedSOPInstanceUID)
        for series in gsps.ReferencedSeriesSequence
        for item in series.ReferencedImageSequence
    }
