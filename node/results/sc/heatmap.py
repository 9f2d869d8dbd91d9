"""An attribution map as colour heat-map Secondary Capture images, not for diagnostic use.

For a PACS that cannot show a Parametric Map: one RGB Secondary Capture image per
source image whose attribution reaches :data:`SLICE_FRACTION` of the map's maximum.
The slice is windowed (the source's window, else the 1st-99th percentile), the map is
blended over it with MONAI's :func:`~monai.visualize.utils.blend_images` (colour map
:data:`COLOUR_MAP` from the map's minimum to its :data:`FULL_PERCENTILE` th percentile,
opacity growing with the attribution up to :data:`MAX_ALPHA`, zero attribution left
transparent), a legend names the method and its target, and a banner
says it is not for diagnostic use. The header says so too: Burned In Annotation
``YES``, Image Comments and Derivation Description; each image references its source.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from monai.visualize.utils import blend_images
from PIL import Image, ImageDraw, ImageFont

from node.contract.plugin import Attribution
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.identity import SeriesIdentity
from node.results.pm.parametric_map import attribution_values, explanation
from node.results.sc.overlay import (
    NOT_FOR_DIAGNOSIS,
    capture_orientation,
    display_window,
    secondary_capture,
)
from node.results.source import frame_source

log = logging.getLogger(__name__)

#: A slice gets an image when its largest attribution reaches this share of the maximum.
SLICE_FRACTION = 0.5
#: Percentile of the map shown at full colour (voxel-wise maps such as gradient
#: saliency have rare extreme values that would leave the rest invisible).
FULL_PERCENTILE = 99.9
#: Matplotlib colour map of the heat map.
COLOUR_MAP = "jet"
#: Opacity of the heat map where the attribution is largest.
MAX_ALPHA = 0.6
#: Image Comments of every heat-map image (before the per-image details).
HEATMAP_COMMENT = "Explainability heat map burned in: not for diagnostic use."


def heatmap_slices(values: np.ndarray, fraction: float = SLICE_FRACTION) -> list[int]:
    """Indices of the slices whose largest value reaches ``fraction`` of the maximum."""
    peak = float(values.max())
    if peak <= 0.0:
        return []
    per_slice = values.reshape(values.shape[0], -1).max(axis=1)
    return [int(i) for i in np.flatnonzero(per_slice >= fraction * peak)]


def render_heatmap(
    source: np.ndarray, heat: np.ndarray, window: tuple[float, float], legend: str
) -> np.ndarray:
    """RGB ``(rows, columns, 3)`` uint8: ``heat`` (0-1) blended over the source image.

    ``source`` is a grayscale slice or frame (shown in ``window``) or an RGB
    ``(rows, columns, 3)`` frame with values 0-255 (shown as it is).
    """
    if source.ndim == 3:
        base = np.moveaxis(np.clip(source / 255.0, 0.0, 1.0), -1, 0).astype(np.float32)
    else:
        lower, upper = window
        base = np.clip((source - lower) / (upper - lower), 0.0, 1.0)[None].astype(np.float32)
    heat = np.clip(heat, 0.0, 1.0)[None].astype(np.float32)
    blended = blend_images(
        base,
        heat,
        alpha=heat * MAX_ALPHA,
        cmap=COLOUR_MAP,
        rescale_arrays=False,
        transparent_background=True,
    )
    rgb = np.rint(np.moveaxis(np.asarray(blended), 0, -1) * 255.0).astype(np.uint8)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width, height = image.size
    line = max(11, int(draw.textbbox((0, 0), "Ag", font=font)[3]) + 2)
    draw.text((2, 2), legend, fill=(255, 255, 255), font=font)
    banner = draw.textbbox((0, 0), NOT_FOR_DIAGNOSIS, font=font)
    draw.text(
        (max(2, (width - banner[2]) // 2), height - line),
        NOT_FOR_DIAGNOSIS,
        fill=(255, 255, 0),
        font=font,
    )
    return np.asarray(image, dtype=np.uint8)


def build_heatmap_sc_series(
    volume: Volume,
    attribution: Attribution,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: dict[str, str],
) -> list[hd.sc.SCImage]:
    """Heat-map Secondary Capture images of the slices that carry the attribution.

    Parameters
    ----------
    volume
        The source series.
    attribution
        The routine's map on the source grid.
    template
        Gives the algorithm identification.
    series
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`).
    sop_instance_uid
        ``{frame key: SOP Instance UID of its heat map}``; the key is the source's
        SOP Instance UID, ``"<uid>/<frame number>"`` for a frame of a multi-frame
        source (:func:`node.results.source.frame_source`).

    2D images (DX, CR, MG, OP) get one capture per image or frame that carries the
    attribution, referencing it (and its frame); a colour source is blended in colour.
    """
    values = attribution_values(volume, attribution)
    low, high = float(values.min()), float(np.percentile(values, FULL_PERCENTILE))
    if high <= low:
        high = float(values.max())
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else values * 0.0
    algorithm = template.algorithm
    window = display_window(volume)
    text = explanation(attribution)
    images = []
    for number, slice_index in enumerate(heatmap_slices(scaled), start=1):
        source, frame_numbers, key = frame_source(volume, slice_index)
        pixels = render_heatmap(volume.array[slice_index], scaled[slice_index], window, text)
        image = secondary_capture(
            source,
            pixels,
            template=template,
            orientation=capture_orientation(volume, source),
            series=series,
            sop_instance_uid=sop_instance_uid[key],
            instance_number=number,
            frame_numbers=frame_numbers,
        )
        image.ImageComments = (
            f"{HEATMAP_COMMENT} {text} by {algorithm.name} {algorithm.version}; "
            f"source image {source.get('InstanceNumber', '')}"
        )[:10240]
        image.DerivationDescription = (
            f"{text} ({COLOUR_MAP} colour map, 0 = {low:.4g}, full = {high:.4g}) blended over "
            f"a copy of the source; explanation aid, NOT FOR DIAGNOSTIC USE"
        )[:1024]
        images.append(image)
    log.info("heat map sc built series_uid=%s images=%d", series.series_instance_uid, len(images))
    return images
