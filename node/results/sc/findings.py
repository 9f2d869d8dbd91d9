"""Secondary Capture overlay of detections and classifications, "NOT FOR DIAGNOSTIC USE".

For a PACS that shows neither SR nor presentation states: one RGB Secondary Capture per
annotated image (:attr:`ImageFindings.frames`). The image is windowed (the source's
window, else the 1st-99th percentile of the series; MONOCHROME1 shown inverted, as its
modality displays it), each box is burned in as a rectangle in its finding's colour
(a point as a circle), labelled ``"Nodule 1: 0.87"``; the classification results are
listed top left, and a banner says it is not for diagnostic use. With a label map too,
the segments are burned in first as :func:`node.results.sc.render_slice` does. Works for
CT slices and single-frame 2D images (DX, CR, MG); the captures reference their source
image and are marked ``BurnedInAnnotation YES``.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from node.results.analysis import Analysis
from node.results.findings import ImageFindings
from node.results.identity import SeriesIdentity
from node.results.pr.findings import point_radius
from node.results.sc.overlay import (
    NOT_FOR_DIAGNOSIS,
    capture_orientation,
    display_window,
    overlay_comment,
    render_slice,
    secondary_capture,
)
from node.results.source import frame_source

log = logging.getLogger(__name__)

_SHADOW = (0, 0, 0)
_TEXT = (255, 255, 255)
_BANNER = (255, 255, 0)


def grey_rgb(values: np.ndarray, window: tuple[float, float], monochrome1: bool) -> np.ndarray:
    """``(rows, columns, 3)`` uint8 grey image of real-world values in a window."""
    lower, upper = window
    grey = np.clip((values - lower) / (upper - lower), 0.0, 1.0) * 255.0
    if monochrome1:
        grey = 255.0 - grey
    return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=-1)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple) -> None:
    font = ImageFont.load_default()
    draw.text((xy[0] + 1, xy[1] + 1), text, fill=_SHADOW, font=font)
    draw.text(xy, text, fill=fill, font=font)


def render_findings(
    findings: ImageFindings,
    frame: int,
    window: tuple[float, float],
    analysis: Analysis | None = None,
) -> np.ndarray:
    """The RGB ``(rows, columns, 3)`` uint8 image of one frame with the findings burned in."""
    volume = findings.volume
    header = volume.datasets[frame]
    legend_lines = 0
    if analysis is not None and analysis.labels_on(frame):
        rgb = render_slice(analysis, frame, window)
        legend_lines = len(analysis.labels_on(frame))
    elif volume.samples_per_pixel == 3:  # colour (OP): RGB 0-255 already
        rgb = np.clip(np.rint(volume.array[frame]), 0, 255).astype(np.uint8)
    else:
        # The volume inverts MONOCHROME1 itself (volume.inverted); a header-only one is
        # inverted here, so every capture shows the image as its modality displays it.
        monochrome1 = (
            str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
            and not volume.inverted
        )
        rgb = grey_rgb(volume.array[frame], window, monochrome1)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width, height = image.size
    line = max(11, int(draw.textbbox((0, 0), "Ag", font=font)[3]) + 2)
    stroke = max(1, round(min(width, height) / 256))
    # Classification texts first: boxes and their labels are drawn over them.
    y = 2 + legend_lines * line
    for text in findings.texts_on(frame):
        _text(draw, (2, y), text, _TEXT)
        y += line
    for detection in findings.detections_on(frame):
        colour = tuple(detection.spec.colour)
        if detection.box is not None:
            x0, y0, x1, y1 = detection.box
            corners = (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))
            draw.rectangle(corners, outline=colour, width=stroke)
            top, left, bottom = y0, x0, y1
        else:
            assert detection.point is not None
            px, py = detection.point
            radius = point_radius(height, width)
            draw.ellipse(
                (px - radius, py - radius, px + radius, py + radius), outline=colour, width=stroke
            )
            top, left, bottom = py - radius, px - radius, py + radius
        text_y = top - line if top - line >= 0 else min(bottom + 1, height - line)
        text_x = min(max(0.0, left), max(0.0, width - draw.textlength(detection.text, font=font)))
        _text(draw, (text_x, text_y), detection.text, colour)
    if legend_lines == 0:  # render_slice already wrote the banner
        banner = draw.textbbox((0, 0), NOT_FOR_DIAGNOSIS, font=font)
        _text(draw, (max(2, (width - banner[2]) // 2), height - line), NOT_FOR_DIAGNOSIS, _BANNER)
    return np.asarray(image, dtype=np.uint8)


def build_findings_sc_series(
    findings: ImageFindings,
    analysis: Analysis | None,
    *,
    series: SeriesIdentity,
    sop_instance_uid: dict[str, str],
) -> list[hd.sc.SCImage]:
    """One Secondary Capture per annotated image, in volume order.

    Parameters
    ----------
    findings
        The checked classifications and detections.
    analysis
        The checked segmentation of the same prediction, or None.
    series
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`).
    sop_instance_uid
        ``{source SOP Instance UID: SOP Instance UID of its capture}`` (for a
        multi-frame source, the key is ``"<uid>/<frame number>"``).
    """
    volume = findings.volume
    template = findings.template
    algorithm = template.algorithm
    window = display_window(volume)
    images = []
    for number, (frame, source, frame_numbers, key) in enumerate(
        _captures(findings, analysis), start=1
    ):
        image = secondary_capture(
            source,
            render_findings(findings, frame, window, analysis),
            template=template,
            orientation=capture_orientation(volume, source),
            series=series,
            sop_instance_uid=sop_instance_uid[key],
            instance_number=number,
            frame_numbers=frame_numbers,
        )
        image.ImageComments = overlay_comment(source, template)
        image.DerivationDescription = (
            f"Findings of {algorithm.name} {algorithm.version} burned into a copy of the source"
        )[:1024]
        images.append(image)
    log.info("sc built series_uid=%s images=%d", series.series_instance_uid, len(images))
    return images


def capture_keys(findings: ImageFindings, analysis: Analysis | None) -> list[str]:
    """The keys :func:`build_findings_sc_series` looks up in ``sop_instance_uid``."""
    return [key for _, _, _, key in _captures(findings, analysis)]


def _captures(
    findings: ImageFindings, analysis: Analysis | None
) -> list[tuple[int, Dataset, list[int] | None, str]]:
    """``(frame, source image, its frame numbers, key)`` of each capture, in volume order.

    The key is the source's SOP Instance UID, with ``"/<frame number>"`` for a frame of a
    multi-frame source.
    """
    frames = sorted(set(findings.frames) | set(analysis.slices_with_findings if analysis else []))
    captures = []
    for frame in frames:
        source, frame_numbers, key = frame_source(findings.volume, frame)
        captures.append((frame, source, frame_numbers, key))
    return captures
