"""The derived image of an image-to-image routine as Secondary Capture.

One capture per source image or frame, with the real-world values kept through the
Modality LUT (:mod:`node.results.derived.image` builds the series of the source's IOD
and holds the value conversions both share).
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np

from node.contract.plugin import DerivedImage
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.derived.image import (
    DERIVATION,
    check_derived,
    code_item,
    copy_window,
    derivation_text,
    rescale,
    source_reference,
    stored_values,
)
from node.results.identity import SeriesIdentity
from node.results.sc.overlay import capture_orientation, secondary_capture
from node.results.source import frame_source

log = logging.getLogger(__name__)


def build_derived_sc_series(
    volume: Volume,
    derived: DerivedImage,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: dict[str, str],
) -> list[hd.sc.SCImage]:
    """The derived image as Secondary Capture, one per source image or frame.

    Grayscale values are stored as 16 bits with the source's Rescale Slope/Intercept
    (the Modality LUT), so a viewer shows real-world values, and the source's window is
    copied (inverted with the values for a MONOCHROME1 source, whose volume values are
    higher-is-brighter: the capture is MONOCHROME2). RGB values of a colour source are
    stored as 8-bit RGB. Same parameters as
    :func:`node.results.derived.image.build_derived_series`, except that
    the keys of ``sop_instance_uid`` are frame keys (:func:`node.results.source.frame_source`).
    """
    values = check_derived(volume, derived)
    images = []
    for index in range(volume.shape[0]):
        source, frame_numbers, key = frame_source(volume, index)
        rgb = values.ndim == 4
        if rgb:
            pixels = np.clip(np.rint(values[index]), 0, 255).astype(np.uint8)
        else:
            slope, intercept, signed = rescale(source, values[index])
            if signed:  # Secondary Capture stores unsigned values: move the intercept down.
                intercept -= 32768 * slope
            pixels, _ = stored_values(values[index], slope, intercept, signed=False)
        image = secondary_capture(
            source,
            pixels,
            template=template,
            orientation=capture_orientation(volume, source),
            series=series,
            sop_instance_uid=sop_instance_uid[key],
            instance_number=index + 1,
            burned_in=False,
            frame_numbers=frame_numbers,
        )
        if not rgb:
            image.RescaleSlope = f"{slope:g}"
            image.RescaleIntercept = f"{intercept:g}"
            image.RescaleType = "HU" if str(source.get("Modality", "")) == "CT" else "US"
            copy_window(image, source, volume.inverted)
        image.DerivationDescription = derivation_text(template, derived)
        image.SourceImageSequence = [source_reference(source, frame_numbers)]
        image.DerivationCodeSequence = [code_item(hd.sr.CodedConcept.from_code(DERIVATION))]
        images.append(image)
    log.info("derived sc built series_uid=%s images=%d", series.series_instance_uid, len(images))
    return images
