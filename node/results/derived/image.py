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

:func:`node.results.sc.derived.build_derived_sc_series` writes the same image as Secondary
Capture (16-bit grayscale with the rescale) for a PACS that does not take derived series
of the IOD.
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

from node.contract.images import inversion_sum
from node.contract.plugin import DerivedImage
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.analysis import first_value
from node.results.identity import SeriesIdentity
from node.results.provenance import processing_equipment
from node.results.source import source_image_reference

log = logging.getLogger(__name__)

#: Derivation Code Sequence item (CID 7203 Image Derivation).
DERIVATION = codes.DCM.ImageProcessing
#: Purpose of reference of each Source Image Sequence item.
SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
#: Ophthalmic Photography 8 Bit Image Storage.
OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
#: Ophthalmic Photography 8 and 16 Bit Image Storage (Image Type value 2 is PRIMARY).
OPHTHALMIC_PHOTOGRAPHY = (OP_8BIT, "1.2.840.10008.5.1.4.1.1.77.1.5.2")
#: SOP classes whose IOD has no Modality LUT (Rescale Slope/Intercept): MR Image Storage
#: (PS3.3 A.4). Their derived images store the real-world values themselves.
NO_RESCALE = ("1.2.840.10008.5.1.4.1.1.4",)
#: Image Type value 3 of a derived OP image whose source has none (a defined term of
#: the OP IOD is only MONTAGE, which a processed photograph is not).
OP_VALUE_3 = "PROCESSED"
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


def code_item(code: hd.sr.CodedConcept) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def check_derived(volume: Volume, derived: DerivedImage) -> np.ndarray:
    """The derived values as float64, after checking they lie on the source grid.

    ``volume.shape`` (grayscale), or for a colour source also ``volume.array.shape``
    (RGB samples on a last axis).
    """
    values = np.asarray(derived.values)
    allowed = {volume.shape, tuple(volume.array.shape)}
    if values.shape not in allowed:
        raise TemplateError(
            f"derived image shape {values.shape} differs from the source volume "
            f"{' or '.join(str(shape) for shape in sorted(allowed))}"
        )
    return values.astype(np.float64, copy=False)


def source_instances(volume: Volume) -> list[tuple[Dataset, list[int]]]:
    """``(source header, indices of its frames in the volume)`` per source instance.

    One entry per slice of a CT or MR volume and per 2D image; a multi-frame image
    (OP) is one instance with all its frames.
    """
    instances: dict[str, tuple[Dataset, list[int]]] = {}
    for index, source in enumerate(volume.datasets):
        instances.setdefault(str(source.SOPInstanceUID), (source, []))[1].append(index)
    return list(instances.values())


def is_eight_bit(source: Dataset) -> bool:
    """True when the source IOD stores 8-bit pixels without a rescale (OP 8 Bit, colour).

    Its derived images are 8-bit too (values rounded and clipped to 0-255), as the
    Ophthalmic Photography 8 Bit IOD requires.
    """
    return str(source.SOPClassUID) == OP_8BIT or (
        int(source.get("BitsAllocated", 16)) == 8 and "RescaleSlope" not in source
    )


def derived_image_type(source: Dataset) -> list[str]:
    """Image Type of a derived image of ``source``.

    ``DERIVED\\SECONDARY`` with the source's later values, except where the IOD
    enumerates value 2: Ophthalmic Photography allows only ``PRIMARY`` there and needs
    a value 3 for derived images (the source's, else :data:`OP_VALUE_3`).
    """
    later = [str(v) for v in source.get("ImageType", [])][2:]
    if str(source.SOPClassUID) in OPHTHALMIC_PHOTOGRAPHY:
        return ["DERIVED", "PRIMARY", *(later or [OP_VALUE_3])]
    return ["DERIVED", "SECONDARY", *later]


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


def rescale(source: Dataset, values: np.ndarray) -> tuple[float, float, bool]:
    """Slope, intercept and signedness for one derived image of ``source``."""
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    signed = int(source.get("PixelRepresentation", 0)) == 1
    return slope, fitted_intercept(values, slope, intercept, signed), signed


def source_reference(source: Dataset, frame_numbers: list[int] | None = None) -> Dataset:
    """Source Image Sequence item of a derived image: ``source`` (one of its frames), for
    image processing."""
    reference = source_image_reference(source, frame_numbers)
    reference.PurposeOfReferenceCodeSequence = [
        code_item(hd.sr.CodedConcept.from_code(SOURCE_PURPOSE))
    ]
    return reference


def derivation_text(template: ResultTemplate, derived: DerivedImage) -> str:
    algorithm = template.algorithm
    return f"{derived.description}; {algorithm.name} {algorithm.version}"[:1024]


def _set_eight_bit_pixels(image: Dataset, values: np.ndarray, rgb: bool) -> int:
    """8-bit pixels, RGB or MONOCHROME2; returns how many values had to be clipped."""
    raw = np.rint(values)
    clipped = int(np.count_nonzero((raw < 0) | (raw > 255)))
    pixels = np.clip(raw, 0, 255).astype(np.uint8)
    image.SamplesPerPixel = 3 if rgb else 1
    image.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        image.PlanarConfiguration = 0
    elif "PlanarConfiguration" in image:
        del image.PlanarConfiguration
    image.BitsAllocated = 8
    image.BitsStored = 8
    image.HighBit = 7
    image.PixelRepresentation = 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter",
                    "WindowWidth"):  # fmt: skip
        if keyword in image:
            delattr(image, keyword)
    image.PixelData = pixels.tobytes()
    return clipped


def _set_rescaled_pixels(
    image: Dataset, source: Dataset, values: np.ndarray, rgb: bool, inverted: bool
) -> int:
    """16-bit grayscale pixels with the source's rescale; returns how many clipped.

    An IOD without a Modality LUT (:data:`NO_RESCALE`, e.g. MR) gets the rounded values
    themselves and no Rescale Slope/Intercept.

    Values of a MONOCHROME1 source come inverted (higher is brighter); they are inverted
    back so that the derived image keeps the source's photometric interpretation.
    """
    if rgb:
        raise TemplateError(
            f"an RGB derived image cannot be stored as {source.get('Modality', '')} "
            "(the IOD is grayscale)"
        )
    photometric = str(source.get("PhotometricInterpretation", "MONOCHROME2"))
    bits = 16
    if inverted and photometric == "MONOCHROME1":
        # The inversion depends on Bits Stored and the rescale: both stay the source's,
        # and what leaves the source's stored range is clipped.
        values = inversion_sum(source) - values
        slope, intercept, signed = rescale(source, values)
        intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
        bits = int(source.get("BitsStored", 16))
        low = -(2 ** (bits - 1)) if signed else 0
        raw = np.rint((values - intercept) / slope)
        clipped = int(np.count_nonzero((raw < low) | (raw > low + 2**bits - 1)))
        pixels = np.clip(raw, low, low + 2**bits - 1).astype(np.int16 if signed else np.uint16)
    elif str(source.SOPClassUID) in NO_RESCALE:
        # No Modality LUT in the IOD: the stored values are the real-world values (rounded),
        # signed when the source is or when the derived values go below zero.
        signed = int(source.get("PixelRepresentation", 0)) == 1 or float(values.min()) < 0
        pixels, clipped = stored_values(values, 1.0, 0.0, signed)
        _set_grayscale(image, photometric, bits, signed, pixels)
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            if keyword in image:
                delattr(image, keyword)
        return clipped
    else:
        slope, intercept, signed = rescale(source, values)
        pixels, clipped = stored_values(values, slope, intercept, signed)
    _set_grayscale(image, photometric, bits, signed, pixels)
    image.RescaleSlope = f"{slope:g}"
    image.RescaleIntercept = f"{intercept:g}"
    return clipped


def _set_grayscale(
    image: Dataset, photometric: str, bits: int, signed: bool, pixels: np.ndarray
) -> None:
    """One-sample pixel data and its Image Pixel attributes (16 bits allocated)."""
    image.SamplesPerPixel = 1
    image.PhotometricInterpretation = photometric
    image.BitsAllocated = 16
    image.BitsStored = bits
    image.HighBit = bits - 1
    image.PixelRepresentation = 1 if signed else 0
    image.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def build_derived_series(
    volume: Volume,
    derived: DerivedImage,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: dict[str, str],
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
    series
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`).
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
    for source, frames in source_instances(volume):
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
        image.SeriesInstanceUID = series.series_instance_uid
        image.SeriesNumber = series.series_number
        image.SeriesDescription = series.series_description
        image.SeriesDate = image.ContentDate = now.strftime("%Y%m%d")
        image.SeriesTime = image.ContentTime = now.strftime("%H%M%S")
        image.ImageType = derived_image_type(source)
        image.DerivationDescription = derivation_text(template, derived)
        image.DerivationCodeSequence = [code_item(hd.sr.CodedConcept.from_code(DERIVATION))]
        image.SourceImageSequence = [source_reference(source)]
        image.ContributingEquipmentSequence = [equipment]
        image.BurnedInAnnotation = "NO"
        frame_values = values[frames] if "NumberOfFrames" in source else values[frames[0]]
        rgb = values.ndim == 4
        if is_eight_bit(source):
            total_clipped += _set_eight_bit_pixels(image, frame_values, rgb)
        else:
            total_clipped += _set_rescaled_pixels(image, source, frame_values, rgb, volume.inverted)
        images.append(image)
    if total_clipped:
        log.warning(
            "derived values outside the stored range were clipped series_uid=%s voxels=%d",
            series.series_instance_uid,
            total_clipped,
        )
    log.info(
        "derived series built series_uid=%s images=%d algorithm=%s",
        series.series_instance_uid,
        len(images),
        algorithm.name,
    )
    return images


def copy_window(image: Dataset, source: Dataset, inverted: bool) -> None:
    """The source's first window, moved with the values when they were inverted."""
    if "WindowCenter" not in source or "WindowWidth" not in source:
        return
    center = float(first_value(source.WindowCenter))
    width = float(first_value(source.WindowWidth))
    if inverted and str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        center = inversion_sum(source) - center
    image.WindowCenter = f"{center:g}"
    image.WindowWidth = f"{width:g}"
