"""An attribution (explainability) map as a DICOM Parametric Map.

One multi-frame Parametric Map on the source grid (one frame per source image, the
same plane positions, orientation and Frame of Reference; highdicom derives them from
the referenced source images). The map is stored as 16-bit unsigned integers with a
Real World Value Mapping (slope and intercept) back to the attribution values, so a
reader gets the map within half a quantisation step, ``(max - min) / 65535 / 2``. The
LUT label and explanation name the method and what it explains (``Grad-CAM of Liver``);
Content Label ``ATTRIBUTION``. The values are an explanation aid, not a measurement.

2D images (DX, CR, MG, OP; :attr:`Volume.is_2d`) have no patient geometry, but the
Parametric Map IOD requires a Frame of Reference and the Plane Position and Plane
Orientation (Patient) functional groups. Each image, and each frame of a multi-frame
image, gets its own single-frame map (:func:`build_parametric_maps_2d`) on a nominal
plane: origin 0, the row and column directions of the source's Patient Orientation
(else the identity), the source's PixelSpacing (else ImagerPixelSpacing, else 1 mm),
in a Frame of Reference of its own derived from the map's UID, so that it claims no
spatial relation to other objects. What ties the map to its source is the per-frame
Derivation Image Sequence (source image and, for a multi-frame source, its frame) and
the identical pixel matrix. All maps of one series share one quantisation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import highdicom as hd
import numpy as np
from highdicom._standard_utils import is_multiframe_image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.contract.plugin import Attribution
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.identity import SeriesIdentity
from node.results.provenance import (
    copy_body_part,
    copy_laterality,
    equipment_arguments,
    instance_arguments,
)
from node.results.source import frame_source
from node.results.uids import derive_uid

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


def _parametric_map(
    source_images: list[Dataset],
    stored: np.ndarray,
    scale: tuple[float, float, float, float],
    attribution: Attribution,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    instance_number: int = 1,
) -> hd.pm.ParametricMap:
    """One Parametric Map of ``stored`` (frames) on ``source_images``.

    ``scale`` is ``(slope, intercept, lowest, highest)`` of the whole map.
    """
    slope, intercept, low, high = scale
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
    arguments = instance_arguments(template, series, sop_instance_uid)
    arguments["instance_number"] = instance_number
    parametric_map = hd.pm.ParametricMap(
        source_images=source_images,
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
        **arguments,
        **equipment_arguments(series),
    )
    copy_body_part(parametric_map, source_images[0])
    copy_laterality(parametric_map, source_images)
    parametric_map.ImageComments = (
        f"{text} by {algorithm.name} {algorithm.version}, values {low:.4g} to {high:.4g}. "
        "An explanation aid, not a measurement; not for diagnostic use."
    )
    return parametric_map


def build_parametric_map(
    volume: Volume,
    attribution: Attribution,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
) -> hd.pm.ParametricMap:
    """The attribution map of a CT or MR volume as one Parametric Map referencing every
    source image.

    Raises
    ------
    TemplateError
        The map is not on the source grid.
    """
    values = attribution_values(volume, attribution)
    stored, slope, intercept = quantise(values)
    parametric_map = _parametric_map(
        list(volume.datasets),
        stored,
        (slope, intercept, float(values.min()), float(values.max())),
        attribution,
        template,
        series=series,
        sop_instance_uid=sop_instance_uid,
    )
    log.info(
        "parametric map built series_uid=%s frames=%d method=%s",
        series.series_instance_uid,
        stored.shape[0],
        attribution.method,
    )
    return parametric_map


#: Unit vector (LPS) of each Patient Orientation letter.
_LETTER_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}


def nominal_orientation(source: Dataset) -> list[float]:
    """Image Orientation (Patient) of a 2D image's nominal plane.

    The main directions of the source's Patient Orientation (``["L", "F"]`` of a PA
    chest radiograph gives rows along +x and columns along -z), else the identity.
    """
    given = [str(v) for v in source.get("PatientOrientation") or []]
    if len(given) == 2 and all(v and v[0] in _LETTER_DIRECTIONS for v in given):
        row, column = (np.asarray(_LETTER_DIRECTIONS[v[0]]) for v in given)
        if abs(float(row @ column)) < 1e-6:
            return [float(v) for v in (*row, *column)]
    return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def nominal_plane(source: Dataset, frame_of_reference_uid: str) -> Dataset:
    """A single-frame copy of a 2D image's header on its nominal plane (see the module)."""
    view = copy.deepcopy(source)
    for keyword in (
        "NumberOfFrames",
        "FrameIncrementPointer",
        "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence",
    ):
        if keyword in view:
            delattr(view, keyword)
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
    view.FrameOfReferenceUID = frame_of_reference_uid
    view.PositionReferenceIndicator = ""
    view.ImageOrientationPatient = nominal_orientation(source)
    view.ImagePositionPatient = [0.0, 0.0, 0.0]
    view.PixelSpacing = [float(v) for v in spacing]
    view.SliceThickness = 1.0
    if is_multiframe_image(view):
        # A multi-frame IOD (OP): highdicom reads the geometry of such a source from
        # functional groups, so the view is one frame with them.
        view.NumberOfFrames = 1
        measures = Dataset()
        measures.PixelSpacing = view.PixelSpacing
        measures.SliceThickness = view.SliceThickness
        orientation = Dataset()
        orientation.ImageOrientationPatient = view.ImageOrientationPatient
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        shared.PlaneOrientationSequence = [orientation]
        position = Dataset()
        position.ImagePositionPatient = view.ImagePositionPatient
        frame = Dataset()
        frame.PlanePositionSequence = [position]
        view.SharedFunctionalGroupsSequence = [shared]
        view.PerFrameFunctionalGroupsSequence = [frame]
    return view


def build_parametric_maps_2d(
    volume: Volume,
    attribution: Attribution,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: Mapping[str, str],
) -> list[hd.pm.ParametricMap]:
    """One single-frame Parametric Map per image or frame of a 2D series (see the module).

    ``sop_instance_uid`` maps each frame key (:func:`node.results.source.frame_source`) to
    the UID of its map.

    Raises
    ------
    TemplateError
        The map is not on the source grid.
    """
    values = attribution_values(volume, attribution)
    stored, slope, intercept = quantise(values)
    scale = (slope, intercept, float(values.min()), float(values.max()))
    maps = []
    for index in range(volume.shape[0]):
        source, frame_numbers, key = frame_source(volume, index)
        uid = sop_instance_uid[key]
        parametric_map = _parametric_map(
            [nominal_plane(source, derive_uid(uid, "frame of reference"))],
            stored[index : index + 1],
            scale,
            attribution,
            template,
            series=series,
            sop_instance_uid=uid,
            instance_number=index + 1,
        )
        if frame_numbers is not None:
            _reference_frame(parametric_map, frame_numbers[0])
        maps.append(parametric_map)
    log.info(
        "parametric maps built series_uid=%s maps=%d method=%s",
        series.series_instance_uid,
        len(maps),
        attribution.method,
    )
    return maps


def _reference_frame(parametric_map: hd.pm.ParametricMap, frame_number: int) -> None:
    """Name the source frame in the map's Derivation Image and Source Image references."""
    for item in parametric_map.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for reference in derivation.SourceImageSequence:
                reference.ReferencedFrameNumber = frame_number
    for reference in parametric_map.get("SourceImageSequence", []):
        reference.ReferencedFrameNumber = frame_number
