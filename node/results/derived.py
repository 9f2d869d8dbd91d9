"""A new image from an image-to-image routine, as a derived series of the source's IOD.

Each source image gets one derived image of the same SOP class (CT Image Storage for
CT…) with the source's geometry (Image Position/Orientation, Pixel Spacing, Frame of
Reference) and its patient/study/acquisition attributes, but:

* Image Type ``DERIVED\\SECONDARY`` (later values, e.g. ``AXIAL``, kept);
* a new series and SOP Instance UID, the node's series number and description;
* Source Image Sequence referencing the source image (purpose DCM 121322 "Source image
  for image processing operation"), Derivation Description and Derivation Code
  Sequence, and the algorithm as Contributing Equipment;
* pixel data re-quantised to 16 bits stored with the source's Rescale Slope and
  Intercept (the intercept moves when the derived values leave the stored range; what
  still does not fit is clipped, and the count logged).

:func:`build_derived_sc_series` writes the same image as Secondary Capture (16-bit
grayscale with the rescale) for a PACS that does not take derived series of the IOD.
"""

from __future__ import annotations

import copy
import datetime
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from node.errors import TemplateError
from node.results.provenance import processing_equipment
from node.results.sc import image_orientation, secondary_capture, source_image_reference
from node.results.template import ResultTemplate
from node.runtime.plugin import DerivedImage
from node.runtime.volume import Volume

log = logging.getLogger(__name__)

#: Derivation Code Sequence item (CID 7203 Image Derivation).
DERIVATION = codes.DCM.ImageProcessing
#: Purpose of reference of each Source Image Sequence item.
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
#: Attributes of the source that do not describe the derived image.
_DROPPED = (
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "SourceImageSequence",
    "DerivationDescription",
    "DerivationCodeSequence",
    "ReferencedImageSequence",
    "ContributingEquipmentSequence",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "IconImageSequence",
    "DigitalSignaturesSequence",
    "EncryptedAttributesSequence",
)


def _code_item(code: hd.sr.CodedConcept) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def check_derived(volume: Volume, derived: DerivedImage) -> np.ndarray:
    """The derived values as float64, after checking they lie on the source grid."""
    values = np.asarray(derived.values)
    if values.shape != volume.shape:
        raise TemplateError(
            f"derived image shape {values.shape} differs from the source volume {volume.shape}"
        )
    return values.astype(np.float64, copy=False)


def stored_values(
    values: np.ndarray, slope: float, intercept: float, signed: bool
) -> tuple[np.ndarray, int]:
    """Real-world values as 16-bit stored values; also how many had to be clipped."""
    low, high = (-32768, 32767) if signed else (0, 65535)
    raw = np.rint((values - intercept) / slope)
    clipped = int(np.count_nonzero((raw < low) | (raw > high)))
    return np.clip(raw, low, high).astype(np.int16 if signed else np.uint16), clipped


def fitted_intercept(values: np.ndarray, slope: float, intercept: float, signed: bool) -> float:
    """``intercept``, or a whole-number shift of it when ``values`` fall outside the range.

    The source's Rescale Intercept is kept where the derived values fit the 16-bit stored
    range; otherwise the range is moved to start at the smallest value (values still
    wider than 65536 steps of ``slope`` are clipped at the top).
    """
    low = -32768 if signed else 0
    high = low + 65535
    smallest, largest = float(values.min()), float(values.max())
    if intercept + low * slope <= smallest and largest <= intercept + high * slope:
        return intercept
    return float(np.floor(smallest - low * slope))


def _rescale(source: Dataset, values: np.ndarray) -> tuple[float, float, bool]:
    """Slope, intercept and signedness for one derived image of ``source``."""
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    signed = int(source.get("PixelRepresentation", 0)) == 1
    return slope, fitted_intercept(values, slope, intercept, signed), signed


def _source_reference(source: Dataset) -> Dataset:
    """Source Image Sequence item of a derived image: ``source``, for image processing."""
    reference = source_image_reference(source)
    reference.PurposeOfReferenceCodeSequence = [
        _code_item(hd.sr.CodedConcept.from_code(SOURCE_PURPOSE))
    ]
    return reference


def _derivation_text(template: ResultTemplate, derived: DerivedImage) -> str:
    algorithm = template.algorithm
    return f"{derived.description}; {algorithm.name} {algorithm.version}"[:1024]


def build_derived_series(
    volume: Volume,
    derived: DerivedImage,
    template: ResultTemplate,
    *,
    series_instance_uid: str,
    sop_instance_uid: dict[str, str],
    series_number: int,
    series_description: str,
) -> list[Dataset]:
    """One derived image of the source's SOP class per source image, in volume order.

    Parameters
    ----------
    volume
        The source series (its headers are copied).
    derived
        The routine's new image on the source grid, in real-world values.
    template
        Gives the algorithm identification.
    series_instance_uid, series_number, series_description
        Identity of the new series.
    sop_instance_uid
        ``{source SOP Instance UID: SOP Instance UID of its derived image}``.

    Raises
    ------
    TemplateError
        The derived image is not on the source grid.
    """
    values = check_derived(volume, derived)
    now = datetime.datetime.now()
    equipment = processing_equipment(template)
    algorithm = template.algorithm
    images: list[Dataset] = []
    total_clipped = 0
    for index, source in enumerate(volume.datasets):
        image = copy.deepcopy(source)
        for keyword in _DROPPED:
            if keyword in image:
                delattr(image, keyword)
        image.remove_private_tags()
        uid = sop_instance_uid[str(source.SOPInstanceUID)]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = source.SOPClassUID
        meta.MediaStorageSOPInstanceUID = UID(uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        image.file_meta = meta
        image.SOPInstanceUID = uid
        image.SeriesInstanceUID = series_instance_uid
        image.SeriesNumber = series_number
        image.SeriesDescription = series_description
        image.SeriesDate = image.ContentDate = now.strftime("%Y%m%d")
        image.SeriesTime = image.ContentTime = now.strftime("%H%M%S")
        later = [str(v) for v in source.get("ImageType", [])][2:]
        image.ImageType = ["DERIVED", "SECONDARY", *later]
        image.DerivationDescription = _derivation_text(template, derived)
        image.DerivationCodeSequence = [_code_item(hd.sr.CodedConcept.from_code(DERIVATION))]
        image.SourceImageSequence = [_source_reference(source)]
        image.ContributingEquipmentSequence = [equipment]
        image.BurnedInAnnotation = "NO"
        slope, intercept, signed = _rescale(source, values[index])
        pixels, clipped = stored_values(values[index], slope, intercept, signed)
        total_clipped += clipped
        image.SamplesPerPixel = 1
        image.PhotometricInterpretation = source.get("PhotometricInterpretation", "MONOCHROME2")
        image.BitsAllocated = 16
        image.BitsStored = 16
        image.HighBit = 15
        image.PixelRepresentation = 1 if signed else 0
        image.RescaleSlope = f"{slope:g}"
        image.RescaleIntercept = f"{intercept:g}"
        image.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        images.append(image)
    if total_clipped:
        log.warning(
            "derived values outside the stored range were clipped series_uid=%s voxels=%d",
            series_instance_uid,
            total_clipped,
        )
    log.info(
        "derived series built series_uid=%s images=%d algorithm=%s",
        series_instance_uid,
        len(images),
        algorithm.name,
    )
    return images


def build_derived_sc_series(
    volume: Volume,
    derived: DerivedImage,
    template: ResultTemplate,
    *,
    series_instance_uid: str,
    sop_instance_uid: dict[str, str],
    series_number: int,
    series_description: str,
) -> list[hd.sc.SCImage]:
    """The derived image as Secondary Capture: 16-bit grayscale, one per source image.

    Stored values carry the source's Rescale Slope/Intercept (the Modality LUT), so a
    viewer shows real-world values; the source's window is copied. Same parameters as
    :func:`build_derived_series`.
    """
    values = check_derived(volume, derived)
    orientation = image_orientation(volume.affine)
    images = []
    for index, source in enumerate(volume.datasets):
        slope, intercept, signed = _rescale(source, values[index])
        if signed:  # Secondary Capture stores unsigned values: move the intercept down.
            intercept -= 32768 * slope
        pixels, _ = stored_values(values[index], slope, intercept, signed=False)
        image = secondary_capture(
            source,
            pixels,
            template=template,
            orientation=orientation,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid[str(source.SOPInstanceUID)],
            instance_number=index + 1,
            series_description=series_description,
            burned_in=False,
        )
        image.RescaleSlope = f"{slope:g}"
        image.RescaleIntercept = f"{intercept:g}"
        image.RescaleType = "HU" if str(source.get("Modality", "")) == "CT" else "US"
        for keyword in ("WindowCenter", "WindowWidth"):
            if keyword in source:
                setattr(image, keyword, source[keyword].value)
        image.DerivationDescription = _derivation_text(template, derived)
        image.SourceImageSequence = [_source_reference(source)]
        image.DerivationCodeSequence = [_code_item(hd.sr.CodedConcept.from_code(DERIVATION))]
        images.append(image)
    log.info("derived sc built series_uid=%s images=%d", series_instance_uid, len(images))
    return images
