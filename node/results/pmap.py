"""An attribution (explainability) map as a DICOM Parametric Map.

One multi-frame Parametric Map on the source grid (one frame per source image, the
same plane positions, orientation and Frame of Reference; highdicom derives them from
the referenced source images). The map is stored as 16-bit unsigned integers with a
Real World Value Mapping (slope and intercept) back to the attribution values, so a
reader gets the map within half a quantisation step, ``(max - min) / 65535 / 2``. The
LUT label and explanation name the method and what it explains (``Grad-CAM of Liver``);
Content Label ``ATTRIBUTION``. The values are an explanation aid, not a measurement.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from node.errors import TemplateError
from node.results.provenance import (
    copy_body_part,
    equipment_arguments,
    instance_arguments,
)
from node.results.template import ResultTemplate
from node.runtime.plugin import Attribution
from node.runtime.volume import Volume

log = logging.getLogger(__name__)

#: Largest stored value of the 16-bit map.
STORED_MAX = 65535
#: Content Label of every attribution map.
CONTENT_LABEL = "ATTRIBUTION"


def attribution_values(volume: Volume, attribution: Attribution) -> np.ndarray:
    """The map as float64 after checking it lies on the source grid."""
    values = np.asarray(attribution.values)
    if values.shape != volume.shape:
        raise TemplateError(
            f"attribution map shape {values.shape} differs from the source volume {volume.shape}"
        )
    return values.astype(np.float64, copy=False)


def quantise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored uint16, slope, intercept)`` with ``value ≈ stored * slope + intercept``."""
    low, high = float(values.min()), float(values.max())
    slope = (high - low) / STORED_MAX if high > low else 1.0
    stored = np.rint((values - low) / slope).clip(0, STORED_MAX).astype(np.uint16)
    return stored, slope, low


def explanation(attribution: Attribution) -> str:
    """``"Grad-CAM of Liver"``: the method and what it explains."""
    return f"{attribution.method} of {attribution.target}"


def build_parametric_map(
    volume: Volume,
    attribution: Attribution,
    template: ResultTemplate,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str,
) -> hd.pm.ParametricMap:
    """The attribution map as a Parametric Map referencing every source image.

    Raises
    ------
    TemplateError
        The map is not on the source grid.
    """
    values = attribution_values(volume, attribution)
    stored, slope, intercept = quantise(values)
    text = explanation(attribution)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=CONTENT_LABEL,
        lut_explanation=text[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0, STORED_MAX),
        slope=slope,
        intercept=intercept,
    )
    algorithm = template.algorithm
    low, high = float(values.min()), float(values.max())
    parametric_map = hd.pm.ParametricMap(
        source_images=list(volume.datasets),
        pixel_array=stored,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(
                window_center=STORED_MAX / 2.0, window_width=float(STORED_MAX + 1)
            )
        ],
        content_description=f"{text}; explanation aid, not for diagnostic use"[:64],
        content_label=CONTENT_LABEL,
        **instance_arguments(
            template,
            series_instance_uid=series_instance_uid,
            sop_instance_uid=sop_instance_uid,
            series_number=series_number,
            series_description=series_description,
        ),
        **equipment_arguments(template),
    )
    copy_body_part(parametric_map, volume.datasets[0])
    parametric_map.ImageComments = (
        f"{text} by {algorithm.name} {algorithm.version}, values {low:.4g} to {high:.4g}. "
        "An explanation aid, not a measurement; not for diagnostic use."
    )
    log.info(
        "parametric map built series_uid=%s frames=%d method=%s",
        series_instance_uid,
        stored.shape[0],
        attribution.method,
    )
    return parametric_map
