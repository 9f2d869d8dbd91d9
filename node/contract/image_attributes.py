"""What 2D routines need from an image header: SOP class names, laterality, view, spacing.

Plain functions on pydicom datasets, shared by the volume assembly, the plugin
``Accepts`` checks and the routing rules. No pixel data is read here.
"""

from __future__ import annotations

import re

import pydicom.uid
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    OphthalmicPhotography8BitImageStorage,
    OphthalmicPhotography16BitImageStorage,
    SecondaryCaptureImageStorage,
    VideoPhotographicImageStorage,
    VLEndoscopicImageStorage,
    VLMicroscopicImageStorage,
    VLPhotographicImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

#: SOP classes whose instances are 2D images (projections, photographs, captures):
#: their frames are independent images, never slices of a geometric volume.
IMAGE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForPresentation,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForPresentation,
        DigitalIntraOralXRayImageStorageForProcessing,
        OphthalmicPhotography8BitImageStorage,
        OphthalmicPhotography16BitImageStorage,
        VLPhotographicImageStorage,
        VLEndoscopicImageStorage,
        VLMicroscopicImageStorage,
        VideoPhotographicImageStorage,
        XRayAngiographicImageStorage,
        XRayRadiofluoroscopicImageStorage,
        SecondaryCaptureImageStorage,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)

#: Coded views (SNOMED CT, and the SNOMED-RT codes older modalities send) -> ViewPosition.
VIEW_CODES: dict[str, str] = {
    "399162004": "CC",
    "R-10242": "CC",
    "399368009": "MLO",
    "R-10226": "MLO",
    "399260004": "ML",
    "R-10224": "ML",
    "399352003": "LM",
    "R-10228": "LM",
    "399192003": "XCCL",
    "R-1024A": "XCCL",
    "399101009": "XCCM",
    "R-1024B": "XCCM",
    "399348003": "PA",
    "R-10214": "PA",
    "399182008": "AP",
    "R-10206": "AP",
    "399173006": "LL",
    "R-10236": "LL",
    "399198007": "RL",
    "R-10232": "RL",
}


_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def sop_class_uid(name: str) -> str:
    """A SOP class UID from its keyword or its UID; ``ValueError`` for anything else.

    >>> sop_class_uid("DigitalMammographyXRayImageStorageForPresentation")
    '1.2.840.10008.5.1.4.1.1.1.2'
    """
    text = name.strip()
    named = getattr(pydicom.uid, text, None) if text.isidentifier() else None
    if isinstance(named, UID) and named.type == "SOP Class":
        return str(named)
    if _UID_PATTERN.match(text) and len(text) <= 64:
        uid = UID(text)
        if uid.type == "SOP Class" or not uid.keyword:
            return text  # a known SOP class UID, or one pydicom does not know (private, newer)
    raise ValueError(f"{name!r} is neither a SOP class keyword nor a UID")


def sop_class_name(uid: str) -> str:
    """The keyword of a SOP class UID, or the UID itself when unknown."""
    return UID(uid).keyword or uid


def is_image_sop_class(uid: str) -> bool:
    """Whether instances of this SOP class are 2D images rather than volume slices."""
    return uid in IMAGE_SOP_CLASSES


def _functional_group_value(ds: Dataset, frame_number: int, sequence: str, keyword: str) -> str:
    """A value from the per-frame, else shared, functional groups of a multi-frame image."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups: list[Dataset] = []
    if per_frame is not None and 0 < frame_number <= len(per_frame):
        groups.append(per_frame[frame_number - 1])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return str(items[0].get(keyword) or "").strip()
    return ""


def laterality(ds: Dataset, frame_number: int | None = None) -> str:
    """``L``, ``R``, ``B`` or ``U`` for an image (frame), ``""`` when the header does not say.

    ImageLaterality first, then FrameLaterality of the frame's functional groups
    (enhanced multi-frame images), then the series-level Laterality.
    """
    value = str(ds.get("ImageLaterality", "") or "").strip().upper()
    if not value and frame_number is not None:
        value = _functional_group_value(
            ds, frame_number, "FrameAnatomySequence", "FrameLaterality"
        ).upper()
    if not value:
        value = str(ds.get("Laterality", "") or "").strip().upper()
    return value


def view(ds: Dataset) -> str:
    """The view of a projection image (``CC``, ``MLO``, ``PA``...), ``""`` when unknown.

    ViewPosition first, else the code of the first ViewCodeSequence item.
    """
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value:
        return value
    codes = ds.get("ViewCodeSequence")
    if codes:
        return VIEW_CODES.get(str(codes[0].get("CodeValue", "")), "")
    return ""


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """``((row, column) mm, attribute it came from)``; ``(None, "")`` when absent.

    PixelSpacing (spacing in the patient, or at the retina) wins; projection
    radiographs often give only ImagerPixelSpacing (at the detector, not corrected
    for magnification), which is used when PixelSpacing is absent.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            row, column = float(value[0]), float(value[1])
            if row > 0 and column > 0:
                return (row, column), keyword
    return None, ""


def is_localizer(ds: Dataset) -> bool:
    """A scout/localizer image (``ImageType`` contains LOCALIZER): never part of a volume."""
    return "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]
