"""Secondary Capture series with the result burned into copies of the source slices.

The last-resort display for a PACS that shows no SEG, SR or presentation state: one
RGB Secondary Capture image per source slice with a finding. The slice is windowed
(the source's window, else the 1st-99th percentile of the volume), each segment is
blended in its colour (35 %) with a solid outline, a legend names the segments present
(with measurements on the slice of largest area), and a banner says it is not for
diagnostic use. The images are marked ``BurnedInAnnotation YES`` and reference their
source slice.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage

from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.analysis import Analysis, first_value
from node.results.identity import SeriesIdentity
from node.results.provenance import (
    copy_body_part,
    copy_laterality,
    processing_equipment,
    set_general_equipment,
)
from node.results.source import source_image_reference

log = logging.getLogger(__name__)

#: Opacity of a segment's colour over the image.
FILL_ALPHA = 0.35
#: Text burned into every image (and part of the series description).
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(direction: np.ndarray) -> str:
    """Patient Orientation letters of a direction (``[1, 0, 0]`` is ``L``), main axis first."""
    letters = []
    for axis in np.argsort(-np.abs(direction)):
        if abs(direction[axis]) > 1e-3:
            positive, negative = _AXIS_LETTERS[axis]
            letters.append(positive if direction[axis] > 0 else negative)
    return "".join(letters[:3])


def image_orientation(affine: np.ndarray) -> tuple[str, str]:
    """Patient Orientation of the rows and the columns of a volume with this ``affine``."""
    row = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    column = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    return (patient_orientation(row), patient_orientation(column))


def _window(volume_array: np.ndarray, header: Dataset) -> tuple[float, float]:
    """(lower, upper) display limits in real-world values."""
    if "WindowCenter" in header and "WindowWidth" in header:
        center = float(first_value(header.WindowCenter))
        width = float(first_value(header.WindowWidth))
        if width > 0:
            return center - width / 2.0, center + width / 2.0
    lower, upper = np.percentile(volume_array, [1.0, 99.0])
    return float(lower), float(max(upper, lower + 1.0))


def display_window(volume: Volume) -> tuple[float, float]:
    """(lower, upper) display limits: the source's window, else the 1st-99th percentile.

    The source's window is in stored values; after the volume inverted MONOCHROME1
    values it no longer applies, so percentiles are used.
    """
    if volume.inverted or volume.samples_per_pixel != 1:
        lower, upper = np.percentile(volume.array, [1.0, 99.0])
        return float(lower), float(max(upper, lower + 1.0))
    return _window(volume.array, volume.datasets[0])


def capture_orientation(volume: Volume, source: Dataset) -> tuple[str, str] | None:
    """Patient Orientation of a capture of ``source``: from the image plane, else the
    source's own (a projection radiograph), else None (unknown, e.g. a photograph)."""
    if "ImageOrientationPatient" in source:
        return image_orientation(volume.affine)
    given = source.get("PatientOrientation")
    if given and len(given) == 2:
        return (str(given[0]), str(given[1]))
    return None


#: Display limits of a volume (public name, used by other burned-in renderings).
window_limits = _window


def render_slice(analysis: Analysis, slice_index: int, window: tuple[float, float]) -> np.ndarray:
    """The RGB ``(rows, columns, 3)`` uint8 image of one slice with the overlay burned in."""
    values = analysis.volume.array[slice_index]
    lower, upper = window
    grey = np.clip((values - lower) / (upper - lower), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    template = analysis.template
    labels = analysis.labels_on(slice_index)
    for label in labels:
        segment = template.segment(label)
        colour = np.asarray(segment.colour, dtype=np.float64)
        mask = analysis.segment_numbers[slice_index] == template.segment_number(label)
        rgb[mask] = (1.0 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * colour
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = colour
    image = Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB")
    _draw_text(analysis, image, slice_index, labels)
    return np.asarray(image, dtype=np.uint8)


def _draw_text(analysis: Analysis, image: Image.Image, slice_index: int, labels: list[int]) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width, height = image.size
    line = max(11, int(draw.textbbox((0, 0), "Ag", font=font)[3]) + 2)
    y = 2
    for label in labels:
        segment = analysis.template.segment(label)
        largest = analysis.largest_slices.get(label) == slice_index
        text = analysis.summary(label) if largest else segment.label
        draw.rectangle((2, y + 1, 2 + line - 4, y + line - 3), fill=tuple(segment.colour))
        draw.text((2 + line, y), text, fill=(255, 255, 255), font=font)
        y += line
    banner = draw.textbbox((0, 0), NOT_FOR_DIAGNOSIS, font=font)
    draw.text(
        (max(2, (width - banner[2]) // 2), height - line),
        NOT_FOR_DIAGNOSIS,
        fill=(255, 255, 0),
        font=font,
    )


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    *,
    template: ResultTemplate,
    orientation: tuple[str, str] | None,
    series: SeriesIdentity,
    sop_instance_uid: str,
    instance_number: int,
    burned_in: bool = True,
    frame_numbers: list[int] | None = None,
) -> hd.sc.SCImage:
    """A Secondary Capture of ``source`` (one of its ``frame_numbers``) showing ``pixels``.

    Parameters
    ----------
    source
        The image captured; its patient, study and body part are copied.
    pixels
        ``(rows, columns, 3)`` uint8 RGB, or ``(rows, columns)`` uint16 grayscale.
    template
        Gives the algorithm, named as the manufacturer and equipment.
    orientation
        Patient Orientation of the rows and columns; None when unknown (left empty).
    burned_in
        Whether annotations are burned into ``pixels`` (Burned In Annotation).

    The capture is ``DERIVED\\SECONDARY`` and references ``source`` in its Source
    Image Sequence; callers add Image Comments and Derivation Description.
    """
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    rgb = pixels.ndim == 3
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=(
            hd.PhotometricInterpretationValues.RGB
            if rgb
            else hd.PhotometricInterpretationValues.MONOCHROME2
        ),
        bits_allocated=8 * pixels.dtype.itemsize,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=series.manufacturer,
        pixel_spacing=((float(spacing[0]), float(spacing[1])) if spacing else None),  # type: ignore[arg-type]  # highdicom annotates ints; PixelSpacing is DS
        # highdicom takes one letter per direction; the full value is set below.
        patient_orientation=(
            (orientation[0][0], orientation[1][0])
            if orientation and orientation[0] and orientation[1]
            else ("L", "P")
        ),
        series_description=series.series_description,
        contributing_equipment=[processing_equipment(template)],
    )
    # Type 2C without Image Orientation (Patient): the full value, or empty when unknown.
    if orientation:
        image.PatientOrientation = list(orientation)
    else:
        image.PatientOrientation = None  # type: ignore[assignment]  # empty (Type 2C)
    image.BurnedInAnnotation = "YES" if burned_in else "NO"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.SourceImageSequence = [source_image_reference(source, frame_numbers)]
    set_general_equipment(image, series)
    copy_body_part(image, source)
    # A paired body part (breast, eye) needs General Series Laterality (Type 2C).
    copy_laterality(image, [source])
    return image


def overlay_comment(source: Dataset, template: ResultTemplate) -> str:
    """Image Comments of a capture with a result overlay: not for diagnostic use."""
    algorithm = template.algorithm
    return (
        f"{NOT_FOR_DIAGNOSTIC_USE_COMMENT} Source image {source.get('InstanceNumber', '')}, "
        f"{algorithm.name} {algorithm.version}"
    )[:10240]


def build_sc_series(
    analysis: Analysis,
    *,
    series: SeriesIdentity,
    sop_instance_uid: dict[str, str],
) -> list[hd.sc.SCImage]:
    """One Secondary Capture image per source slice with a finding, in volume order.

    Parameters
    ----------
    analysis
        The checked prediction.
    series
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`).
    sop_instance_uid
        ``{source SOP Instance UID: SOP Instance UID of its capture}``.
    """
    volume = analysis.volume
    template = analysis.template
    algorithm = template.algorithm
    window = display_window(volume)
    orientation = image_orientation(volume.affine)
    images = []
    for number, slice_index in enumerate(analysis.slices_with_findings, start=1):
        source = volume.datasets[slice_index]
        pixels = render_slice(analysis, slice_index, window)
        image = secondary_capture(
            source,
            pixels,
            template=template,
            orientation=orientation,
            series=series,
            sop_instance_uid=sop_instance_uid[str(source.SOPInstanceUID)],
            instance_number=number,
        )
        image.ImageComments = overlay_comment(source, template)
        image.DerivationDescription = (
            f"Overlay of {algorithm.name} {algorithm.version} burned into a copy of the source"
        )[:1024]
        images.append(image)
    log.info("sc built series_uid=%s images=%d", series.series_instance_uid, len(images))
    return images


NOT_FOR_DIAGNOSTIC_USE_COMMENT = "Result overlay burned in: not for diagnostic use."
