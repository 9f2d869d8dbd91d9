"""GSPS graphics for detections and classifications (with the segments' outlines, if any).

Each detection finding of the template gets a graphic layer in its colour. On every
image with a reported detection, one annotation per finding draws each box as a closed
POLYLINE (a point as a small CIRCLE around it, with a POINT at its centre) carrying the
detection's Tracking ID and UID, with a text label ``"Nodule 1: 0.87"`` above it. The
classifications are written as text in the top-left corner on a ``CLASSIFICATION``
layer: series-level ones on the first image and on every annotated image, per-image
ones on their image. Works on any single-frame grey image the GSPS can reference
(CT slices; DX, CR and MG, MONOCHROME1 or 2).
"""

from __future__ import annotations

import logging
import pkgutil

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from node.results.analysis import Analysis
from node.results.findings import DetectionResult, ImageFindings
from node.results.identity import SeriesIdentity
from node.results.pr.gsps import (
    MAX_LABEL_CHARS,
    _label_box,
    distinct_images,
    presentation_state,
    segment_graphics,
)
from node.results.provenance import (
    copy_body_part,
    copy_laterality,
    equipment_arguments,
    instance_arguments,
)
from node.results.sr.findings import frame_reference

log = logging.getLogger(__name__)

#: Name of the layer with the classification texts.
CLASSIFICATION_LAYER = "CLASSIFICATION"


def point_radius(rows: int, columns: int) -> float:
    """Radius (pixels) of the circle drawn around a point detection."""
    return max(3.0, min(rows, columns) / 50.0)


def _graphics(
    detection: DetectionResult, rows: int, columns: int
) -> tuple[list[hd.pr.GraphicObject], np.ndarray]:
    """The detection's graphic objects and the outline its label is placed against."""

    def graphic(kind: hd.pr.GraphicTypeValues, data: np.ndarray) -> hd.pr.GraphicObject:
        return hd.pr.GraphicObject(
            graphic_type=kind,
            graphic_data=data,
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=detection.tracking_id,
            tracking_uid=detection.tracking_uid,
        )

    if detection.box is not None:
        outline = detection.outline
        return [graphic(hd.pr.GraphicTypeValues.POLYLINE, outline)], outline
    assert detection.point is not None
    x, y = detection.point
    radius = point_radius(rows, columns)
    circle = np.asarray([[x, y], [min(x + radius, float(columns)), y]])
    around = np.asarray([[max(x - radius, 0.0), max(y - radius, 0.0)], [x + radius, y + radius]])
    return [
        graphic(hd.pr.GraphicTypeValues.CIRCLE, circle),
        graphic(hd.pr.GraphicTypeValues.POINT, np.asarray([[x, y]])),
    ], around


def finding_graphics(
    findings: ImageFindings, first_order: int = 1
) -> tuple[list[hd.pr.GraphicLayer], list[hd.pr.GraphicAnnotation]]:
    """Layers (those used) and annotations of the detections and classification texts."""
    volume, template = findings.volume, findings.template
    rows, columns = volume.shape[1], volume.shape[2]
    layers = {
        spec.key: hd.pr.GraphicLayer(
            layer_name=f"DETECTION_{number}",
            order=first_order + number - 1,
            description=spec.display_label,
            display_color=spec.display_colour,
        )
        for number, spec in enumerate(template.detections, start=1)
    }
    text_layer = hd.pr.GraphicLayer(
        layer_name=CLASSIFICATION_LAYER,
        order=first_order + len(layers),
        description="Classification results",
        display_color=hd.color.CIELabColor.from_rgb(255, 255, 255),
    )
    used: list[hd.pr.GraphicLayer] = []
    annotations: list[hd.pr.GraphicAnnotation] = []
    line = max(rows / 24.0, 4.0)
    for frame in findings.frames:
        image, frames = frame_reference(volume, frame)
        reference = {"referenced_images": [image]}
        if frames is not None:
            reference["referenced_frame_number"] = frames  # type: ignore[assignment]
        on_frame = findings.detections_on(frame)
        for spec in template.detections:
            mine = [d for d in on_frame if d.spec.key == spec.key]
            if not mine:
                continue
            graphics: list[hd.pr.GraphicObject] = []
            texts: list[hd.pr.TextObject] = []
            for detection in mine:
                objects, outline = _graphics(detection, rows, columns)
                graphics += objects
                text = detection.text[:MAX_LABEL_CHARS]
                texts.append(
                    hd.pr.TextObject(
                        text_value=text,
                        units=hd.pr.AnnotationUnitsValues.PIXEL,
                        bounding_box=_label_box(outline, rows, columns, len(text)),
                        tracking_id=detection.tracking_id,
                        tracking_uid=detection.tracking_uid,
                    )
                )
            annotations.append(
                hd.pr.GraphicAnnotation(
                    graphic_layer=layers[spec.key],
                    graphic_objects=graphics,
                    text_objects=texts,
                    **reference,  # type: ignore[arg-type]
                )
            )
            if layers[spec.key] not in used:
                used.append(layers[spec.key])
        lines = findings.texts_on(frame)
        if lines:
            texts = []
            for number, text in enumerate(lines):
                text = text[:MAX_LABEL_CHARS]
                width = min(float(columns) - 1.0, len(text) * line * 0.6)
                top = 1.0 + number * line
                if top + line > rows:  # no room left on a small image: the SR has them all
                    log.warning("classification texts cut frame=%d shown=%d", frame, number)
                    break
                texts.append(
                    hd.pr.TextObject(
                        text_value=text,
                        units=hd.pr.AnnotationUnitsValues.PIXEL,
                        bounding_box=(1.0, top, 1.0 + width, top + line),
                    )
                )
            if not texts:
                continue
            annotations.append(
                hd.pr.GraphicAnnotation(
                    graphic_layer=text_layer,
                    text_objects=texts,
                    **reference,  # type: ignore[arg-type]
                )
            )
            if text_layer not in used:
                used.append(text_layer)
    used.sort(key=lambda layer: int(layer.GraphicLayerOrder))
    return used, annotations


def icc_profile(image: Dataset) -> bytes:
    """The image's own ICC profile, else the sRGB profile highdicom ships."""
    own = image.get("ICCProfile")
    if own:
        return bytes(own)
    shipped = pkgutil.get_data("highdicom", "_icc_profiles/sRGB_v4_ICC_preference.icc")
    if shipped is None:  # pragma: no cover - part of the highdicom wheel
        raise FileNotFoundError("highdicom's sRGB ICC profile is missing")
    return shipped


def colour_presentation_state(
    findings: ImageFindings,
    *,
    layers: list[hd.pr.GraphicLayer],
    annotations: list[hd.pr.GraphicAnnotation],
    series: SeriesIdentity,
    sop_instance_uid: str,
) -> hd.pr.ColorSoftcopyPresentationState:
    """For colour images (OP, RGB): a Color Softcopy Presentation State."""
    template = findings.template
    algorithm = template.algorithm
    first = findings.volume.datasets[0]
    state = hd.pr.ColorSoftcopyPresentationState(
        referenced_images=distinct_images(findings.volume.datasets),
        content_label=template.output.content_label,
        content_description=f"{algorithm.name} {algorithm.version} findings"[:64],
        graphic_annotations=annotations or None,
        graphic_layers=layers or None,
        icc_profile=icc_profile(first),
        **instance_arguments(template, series, sop_instance_uid),
        **equipment_arguments(series),
    )
    state.DeviceUID = series.device_uid
    copy_body_part(state, first)
    copy_laterality(state, findings.volume.datasets)
    log.info(
        "colour presentation state built sop_instance_uid=%s annotations=%d",
        sop_instance_uid,
        len(annotations),
    )
    return state


def build_findings_gsps(
    findings: ImageFindings,
    analysis: Analysis | None,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    tracking_uids: dict[int, str],
) -> hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState:
    """The GSPS of a result with classifications or detections.

    For colour images (OP) it is a Color Softcopy Presentation State (a grayscale one
    cannot apply to them) with the same graphics.

    Parameters
    ----------
    findings
        The checked classifications and detections.
    analysis
        The checked segmentation of the same prediction, or None without a label map;
        its outlines are drawn as :func:`node.results.pr.gsps.build_gsps` draws them.
    series, sop_instance_uid
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`) and
        of the instance.
    tracking_uids
        ``{label value: Tracking UID}`` of the segments.
    """
    layers: list[hd.pr.GraphicLayer] = []
    annotations: list[hd.pr.GraphicAnnotation] = []
    if analysis is not None:
        layers, annotations = segment_graphics(analysis, tracking_uids)
    more_layers, more_annotations = finding_graphics(
        findings, first_order=len(findings.template.segments) + 1
    )
    algorithm = findings.template.algorithm
    if findings.volume.samples_per_pixel == 3:
        return colour_presentation_state(
            findings,
            layers=layers + more_layers,
            annotations=annotations + more_annotations,
            series=series,
            sop_instance_uid=sop_instance_uid,
        )
    gsps = presentation_state(
        findings.volume,
        findings.template,
        layers=layers + more_layers,
        annotations=annotations + more_annotations,
        content_description=f"{algorithm.name} {algorithm.version} findings",
        series=series,
        sop_instance_uid=sop_instance_uid,
    )
    copy_laterality(gsps, findings.volume.datasets)
    log.info(
        "gsps built sop_instance_uid=%s detections=%d classifications=%d annotations=%d",
        sop_instance_uid,
        len(findings.detections),
        len(findings.classifications),
        len(annotations) + len(more_annotations),
    )
    return gsps
