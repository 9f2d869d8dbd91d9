"""Typed writers of 2D DICOM images: DX, CR, MG and OP (single- and multi-frame).

Each writer takes a numpy pixel array and the acquisition details that matter to
routines (pixel spacing, laterality, view, presentation intent) and returns a
:class:`~pydicom.dataset.Dataset` with file meta information, ready for
``save_as(..., enforce_file_format=True)``, that passes dciodvfy without errors:

* :func:`dx_image` - Digital X-Ray Image Storage, For Presentation or For Processing;
* :func:`cr_image` - Computed Radiography Image Storage;
* :func:`mg_image` - Digital Mammography X-Ray Image Storage, For Presentation or For
  Processing, with ImageLaterality, ViewPosition and its coded ViewCodeSequence;
* :func:`op_image` - Ophthalmic Photography 8 Bit Image Storage, RGB (or MONOCHROME2),
  one frame or several (a multi-frame image).

Input is checked eagerly: a pixel array of the wrong shape, type or range, an
unknown laterality or view raises :class:`ValueError` naming what is wrong.
Identity (patient, study, series) comes from a :class:`SeriesIdentity` shared by the
images of one series. Synthetic data only: patient names are invented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    OphthalmicPhotography8BitImageStorage,
)

from tools.synthetic.instance import new_instance, set_grayscale_pixels

PresentationIntent = Literal["FOR PRESENTATION", "FOR PROCESSING"]
Laterality = Literal["L", "R"]

#: Mammography views (ViewPosition) and their SNOMED CT codes in CID 4014.
MAMMOGRAPHY_VIEWS: dict[str, tuple[str, str]] = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
    "XCCL": ("399192003", "cranio-caudal exaggerated laterally"),
    "XCCM": ("399101009", "cranio-caudal exaggerated medially"),
}

#: Radiograph projections (ViewPosition) and their SNOMED CT codes in CID 4010.
RADIOGRAPH_VIEWS: dict[str, tuple[str, str]] = {
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182008", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}

#: BodyPartExamined -> (SNOMED CT code, meaning) for the AnatomicRegionSequence.
ANATOMIC_REGIONS: dict[str, tuple[str, str]] = {
    "CHEST": ("51185008", "Chest"),
    "BREAST": ("76752008", "Breast"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "SKULL": ("89546000", "Skull"),
}

#: OP: the retina (fundus) as the anatomic region.
_RETINA = ("5665001", "Retina")

#: PatientOrientation (row direction, column direction) of radiograph projections.
_RADIOGRAPH_ORIENTATION = {"PA": ("L", "F"), "AP": ("R", "F"), "LL": ("A", "F"), "RL": ("P", "F")}


def _mammography_orientation(laterality: str, view: str) -> list[str]:
    """PatientOrientation of a mammogram: rows run toward the nipple, columns as viewed."""
    row = "A" if laterality == "L" else "P"
    if view in ("CC", "XCCL", "XCCM"):
        column = "R" if laterality == "L" else "L"
    elif view == "MLO":
        column = "FR" if laterality == "L" else "FL"
    else:
        column = "F"
    return [row, column]


@dataclass(frozen=True)
class SeriesIdentity:
    """Patient, study and series attributes shared by the images of one series.

    UIDs are generated when not given; pass the same instance to every writer
    call for the images of one series. Names are synthetic.
    """

    patient_name: str = "SYNTHETIC^PATIENT"
    patient_id: str = "SYN0001"
    patient_sex: str = "O"
    patient_birth_date: str = ""
    accession_number: str = "SYN0001"
    study_date: str = "20240102"
    study_time: str = "100000"
    study_description: str = "Synthetic 2D study"
    series_description: str = ""
    series_number: int = 1
    study_instance_uid: str = field(default_factory=pydicom.uid.generate_uid)
    series_instance_uid: str = field(default_factory=pydicom.uid.generate_uid)
    frame_of_reference_uid: str = field(default_factory=pydicom.uid.generate_uid)

    def __post_init__(self) -> None:
        if "^" not in self.patient_name and not self.patient_name.isupper():
            raise ValueError(f"patient name {self.patient_name!r} is not a DICOM PN (FAMILY^GIVEN)")
        if self.patient_sex not in ("M", "F", "O"):
            raise ValueError(f"patient sex {self.patient_sex!r} is not M, F or O")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _grayscale(pixels: np.ndarray, bits_stored: int, what: str) -> np.ndarray:
    """Check a 2D grayscale array fits ``bits_stored`` unsigned bits; return it as uint16."""
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise ValueError(f"{what}: pixels must be 2D (rows, columns), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what}: pixels must be integers, got {array.dtype}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"{what}: bits_stored must be 8-16, got {bits_stored}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= 2**bits_stored):
        raise ValueError(
            f"{what}: pixel values {int(array.min())}..{int(array.max())} do not fit "
            f"{bits_stored} unsigned bits"
        )
    return np.ascontiguousarray(array, dtype="<u2")


def _spacing(spacing_mm: float | Sequence[float], what: str) -> list[str]:
    pair = (
        (float(spacing_mm), float(spacing_mm))
        if isinstance(spacing_mm, int | float)
        else tuple(float(v) for v in spacing_mm)
    )
    if len(pair) != 2 or not all(np.isfinite(v) and v > 0 for v in pair):
        raise ValueError(f"{what}: pixel spacing must be one or two positive numbers (row, column)")
    return [f"{v:.6g}" for v in pair]


def _base(
    sop_class_uid: str,
    modality: str,
    identity: SeriesIdentity,
    instance_number: int,
    sop_instance_uid: str | None,
) -> Dataset:
    ds = new_instance(sop_class_uid, sop_instance_uid or pydicom.uid.generate_uid())
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = identity.study_time
    ds.AccessionNumber = identity.accession_number
    ds.Modality = modality
    ds.Manufacturer = "ainode synthetic"
    ds.ManufacturerModelName = "2D writer"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = identity.study_description
    if identity.series_description:
        ds.SeriesDescription = identity.series_description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.StudyID = "1"
    ds.SeriesNumber = identity.series_number
    ds.InstanceNumber = instance_number
    return ds


def _xray_pixels(
    ds: Dataset,
    pixels: np.ndarray,
    bits_stored: int,
    photometric: str,
    intent: PresentationIntent,
) -> None:
    """Image Pixel, DX Image and VOI LUT attributes shared by DX, CR and MG."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric interpretation {photometric!r} is not MONOCHROME1/2")
    set_grayscale_pixels(ds, pixels, bits_stored, photometric)
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    if intent == "FOR PRESENTATION":
        low, high = float(pixels.min()), float(pixels.max())
        ds.WindowCenter = f"{(low + high) / 2:.1f}"
        ds.WindowWidth = f"{max(high - low, 1.0):.1f}"


def _projection_common(
    ds: Dataset,
    *,
    intent: PresentationIntent,
    image_type_3: str,
    laterality: str,
    body_part: str,
    spacing: list[str],
    view_position: str,
    view_codes: dict[str, tuple[str, str]],
) -> None:
    """DX Series, DX Anatomy Imaged, DX Detector and DX Positioning modules."""
    if laterality not in ("L", "R", "U", "B"):
        raise ValueError(f"image laterality {laterality!r} is not L, R, B or U")
    if body_part not in ANATOMIC_REGIONS:
        raise ValueError(f"body part {body_part!r} is not one of {', '.join(ANATOMIC_REGIONS)}")
    if view_position not in view_codes:
        raise ValueError(f"view {view_position!r} is not one of {', '.join(view_codes)}")
    ds.ImageType = [
        "ORIGINAL",
        "PRIMARY",
        image_type_3 if intent == "FOR PRESENTATION" else "",
    ]
    ds.PresentationIntentType = intent
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = body_part
    region, region_meaning = ANATOMIC_REGIONS[body_part]
    ds.AnatomicRegionSequence = DicomSequence([_code(region, "SCT", region_meaning)])
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = spacing
    ds.ViewPosition = view_position
    code, meaning = view_codes[view_position]
    view = _code(code, "SCT", meaning)
    view.ViewModifierCodeSequence = DicomSequence()
    ds.ViewCodeSequence = DicomSequence([view])
    ds.PositionerType = "MAMMOGRAPHIC" if ds.Modality == "MG" else "NONE"
    ds.FrameOfReferenceUID = ds.get("FrameOfReferenceUID", None) or pydicom.uid.generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = DicomSequence()


def _projection_image(
    pixels: np.ndarray,
    *,
    what: str,
    modality: str,
    sop_classes: tuple[str, str],
    identity: SeriesIdentity | None,
    instance_number: int,
    sop_instance_uid: str | None,
    intent: PresentationIntent,
    bits_stored: int,
    laterality: str,
    body_part: str,
    imager_pixel_spacing_mm: float | Sequence[float],
    view_position: str,
    view_codes: dict[str, tuple[str, str]],
) -> tuple[Dataset, np.ndarray]:
    """A DX-family image (DX or MG) up to its modality's own attributes, and its pixels.

    ``sop_classes`` are the For Presentation and For Processing SOP classes; ``intent``
    picks one. Returns the dataset and the checked pixels for :func:`_xray_pixels`.
    """
    identity = identity or SeriesIdentity()
    stored = _grayscale(pixels, bits_stored, what)
    sop_class = sop_classes[0] if intent == "FOR PRESENTATION" else sop_classes[1]
    ds = _base(sop_class, modality, identity, instance_number, sop_instance_uid)
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    _projection_common(
        ds,
        intent=intent,
        image_type_3="",
        laterality=laterality,
        body_part=body_part,
        spacing=_spacing(imager_pixel_spacing_mm, what),
        view_position=view_position,
        view_codes=view_codes,
    )
    return ds, stored


def dx_image(
    pixels: np.ndarray,
    *,
    imager_pixel_spacing_mm: float | Sequence[float],
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
    view_position: str = "PA",
    body_part: str = "CHEST",
    laterality: str = "U",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    intent: PresentationIntent = "FOR PRESENTATION",
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A Digital X-Ray image (e.g. a chest radiograph).

    Parameters
    ----------
    pixels
        Unsigned integers shaped ``(rows, columns)`` that fit ``bits_stored`` bits.
    imager_pixel_spacing_mm
        Detector pixel spacing, one value or ``(row, column)``.
    view_position
        One of :data:`RADIOGRAPH_VIEWS` (``PA``, ``AP``, ``LL``, ``RL``).
    laterality
        ImageLaterality: ``U`` (unpaired, e.g. chest), ``L``, ``R`` or ``B``.
    photometric
        ``MONOCHROME2`` (higher is brighter) or ``MONOCHROME1`` (higher is darker).
    intent
        PresentationIntentType; the SOP class follows it.
    """
    ds, stored = _projection_image(
        pixels,
        what="DX image",
        modality="DX",
        sop_classes=(DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing),
        identity=identity,
        instance_number=instance_number,
        sop_instance_uid=sop_instance_uid,
        intent=intent,
        bits_stored=bits_stored,
        laterality=laterality,
        body_part=body_part,
        imager_pixel_spacing_mm=imager_pixel_spacing_mm,
        view_position=view_position,
        view_codes=RADIOGRAPH_VIEWS,
    )
    ds.PatientOrientation = list(_RADIOGRAPH_ORIENTATION[view_position])
    ds.KVP = "120"
    _xray_pixels(ds, stored, bits_stored, photometric, intent)
    return ds


def cr_image(
    pixels: np.ndarray,
    *,
    pixel_spacing_mm: float | Sequence[float],
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
    view_position: str = "PA",
    body_part: str = "CHEST",
    laterality: str = "U",
    photometric: str = "MONOCHROME1",
    bits_stored: int = 12,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A Computed Radiography image (CR Image Storage; ``MONOCHROME1`` by default, as
    CR readers often write). ``pixel_spacing_mm`` goes to PixelSpacing and
    ImagerPixelSpacing (no magnification correction)."""
    identity = identity or SeriesIdentity()
    stored = _grayscale(pixels, bits_stored, "CR image")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric interpretation {photometric!r} is not MONOCHROME1/2")
    if view_position not in RADIOGRAPH_VIEWS:
        raise ValueError(f"view {view_position!r} is not one of {', '.join(RADIOGRAPH_VIEWS)}")
    if laterality not in ("L", "R", "U", "B"):
        raise ValueError(f"image laterality {laterality!r} is not L, R, B or U")
    spacing = _spacing(pixel_spacing_mm, "CR image")
    ds = _base(ComputedRadiographyImageStorage, "CR", identity, instance_number, sop_instance_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    ds.ImageLaterality = laterality
    ds.PatientOrientation = list(_RADIOGRAPH_ORIENTATION[view_position])
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.KVP = "120"
    set_grayscale_pixels(ds, stored, bits_stored, photometric)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    low, high = float(stored.min()), float(stored.max())
    ds.WindowCenter = f"{(low + high) / 2:.1f}"
    ds.WindowWidth = f"{max(high - low, 1.0):.1f}"
    return ds


def mg_image(
    pixels: np.ndarray,
    *,
    laterality: Laterality,
    view: str,
    imager_pixel_spacing_mm: float | Sequence[float],
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
    intent: PresentationIntent = "FOR PRESENTATION",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A Digital Mammography X-Ray image of one breast.

    Parameters
    ----------
    pixels
        Unsigned integers shaped ``(rows, columns)`` that fit ``bits_stored`` bits.
    laterality
        ``L`` or ``R`` (ImageLaterality).
    view
        ViewPosition, one of :data:`MAMMOGRAPHY_VIEWS` (``CC``, ``MLO``...); the
        ViewCodeSequence carries its code.
    intent
        ``FOR PRESENTATION`` or ``FOR PROCESSING``; the SOP class follows it.
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"mammogram laterality {laterality!r} is not L or R")
    ds, stored = _projection_image(
        pixels,
        what="MG image",
        modality="MG",
        sop_classes=(
            DigitalMammographyXRayImageStorageForPresentation,
            DigitalMammographyXRayImageStorageForProcessing,
        ),
        identity=identity,
        instance_number=instance_number,
        sop_instance_uid=sop_instance_uid,
        intent=intent,
        bits_stored=bits_stored,
        laterality=laterality,
        body_part="BREAST",
        imager_pixel_spacing_mm=imager_pixel_spacing_mm,
        view_position=view,
        view_codes=MAMMOGRAPHY_VIEWS,
    )
    ds.PatientOrientation = _mammography_orientation(laterality, view)
    ds.KVP = "28"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.OrganExposed = "BREAST"
    ds.AnodeTargetMaterial = "TUNGSTEN"
    ds.FilterMaterial = "RHODIUM"
    ds.CompressionForce = "100"
    ds.BodyPartThickness = "50"
    ds.PositionerPrimaryAngle = "0" if view == "CC" else "45"
    ds.DistanceSourceToDetector = "660"
    ds.DistanceSourceToPatient = "600"
    ds.EstimatedRadiographicMagnificationFactor = "1.1"
    _xray_pixels(ds, stored, bits_stored, photometric, intent)
    return ds


def op_image(
    pixels: np.ndarray,
    *,
    laterality: Laterality,
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
    pixel_spacing_mm: float | Sequence[float] | None = None,
    frame_time_ms: float = 100.0,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """An Ophthalmic Photography 8 Bit image (a fundus photograph of one eye).

    Parameters
    ----------
    pixels
        ``uint8`` shaped ``(rows, columns, 3)`` (RGB), ``(rows, columns)``
        (MONOCHROME2), or with a leading frame axis ``(frames, ...)`` for a
        multi-frame image.
    laterality
        ``L`` or ``R``: the eye (ImageLaterality; the series-level Laterality is then
        absent, as the IOD requires).
    pixel_spacing_mm
        PixelSpacing at the retina when known (``(row, column)`` or one value).
    frame_time_ms
        FrameTime of a multi-frame image (the Cine module's frame increment).
    """
    identity = identity or SeriesIdentity()
    if laterality not in ("L", "R"):
        raise ValueError(f"eye laterality {laterality!r} is not L or R")
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        raise ValueError(f"OP image: pixels must be uint8, got {array.dtype}")
    rgb = array.ndim in (3, 4) and array.shape[-1] == 3
    if array.ndim == (3 if rgb else 2):
        frames = 1
    elif array.ndim == (4 if rgb else 3):
        frames = int(array.shape[0])
    else:
        raise ValueError(
            "OP image: pixels must be (rows, columns[, 3]) or (frames, rows, columns[, 3]), "
            f"got shape {array.shape}"
        )
    if frames < 1:
        raise ValueError("OP image: no frames")
    rows, columns = (int(n) for n in (array.shape[-3:-1] if rgb else array.shape[-2:]))
    ds = _base(
        OphthalmicPhotography8BitImageStorage, "OP", identity, instance_number, sop_instance_uid
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "EYE"
    ds.PatientOrientation = ""
    ds.PatientEyeMovementCommanded = "NO"
    ds.AnatomicRegionSequence = DicomSequence([_code(_RETINA[0], "SCT", _RETINA[1])])
    ds.AcquisitionDateTime = identity.study_date + identity.study_time
    ds.AcquisitionDeviceTypeCodeSequence = DicomSequence(
        [_code("409899009", "SCT", "Fundus Camera")]
    )
    ds.IlluminationTypeCodeSequence = DicomSequence()
    ds.LightPathFilterTypeStackCodeSequence = DicomSequence()
    ds.ImagePathFilterTypeStackCodeSequence = DicomSequence()
    ds.LensesCodeSequence = DicomSequence()
    ds.DetectorType = "CCD"
    ds.EmmetropicMagnification = 1.0
    ds.IntraOcularPressure = 15.0
    ds.HorizontalFieldOfView = 45.0
    ds.PupilDilated = "NO"
    # Synchronization module: acquisition times are not synchronised to an external clock.
    ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"  # UTC
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.RefractiveStateSequence = DicomSequence()
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = _spacing(pixel_spacing_mm, "OP image")
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    else:
        ds.PresentationLUTShape = "IDENTITY"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.FrameTime = f"{frame_time_ms:g}"
    ds.PixelData = np.ascontiguousarray(array).tobytes()
    return ds
