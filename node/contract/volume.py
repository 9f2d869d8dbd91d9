"""The input of every routine: a geometrically checked volume (or a set of 2D frames).

A :class:`Volume` is built once per job (:mod:`node.contract.assemble`), sorted along
the slice normal, with geometry validated before any model runs. It keeps the source
headers (without pixel data) so result objects can reference them exactly.

Series of 2D images (DX, CR, MG, OP, secondary captures: see
:mod:`node.contract.images`) are assembled as a volume of independent *frames*
(``layout == "images"``): one frame per single-frame instance and per frame of a
multi-frame instance, in instance order, with no slice geometry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import RE_VALID_UID, UID
from pydicom.valuerep import VR

from node.contract import image_attributes

log = logging.getLogger(__name__)

#: Relative tolerance on slice spacing before a gap is reported.
SPACING_TOLERANCE = 0.05
#: Tolerance on direction cosines when comparing orientations.
ORIENTATION_TOLERANCE = 1e-3
#: Largest drift of the slice positions in the image plane across the series, in pixels.
SHEAR_TOLERANCE = 0.5

#: :attr:`Volume.layout` of stacked slices with 3D geometry (CT, MR).
VOLUME_LAYOUT = "volume"
#: :attr:`Volume.layout` of independent 2D images or frames (projection radiographs,
#: photographs, multi-frame images).
IMAGES_LAYOUT = "images"


@dataclass(frozen=True)
class FrameSource:
    """The image (and frame) a frame of a :class:`Volume` was read from.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid
        The source instance.
    frame_number
        1-based frame number within a multi-frame instance (the value of
        ReferencedFrameNumber); None for a single-frame instance.
    """

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None


@dataclass(frozen=True)
class Volume:
    """Pixel data in real-world values plus the geometry of its source series.

    Attributes
    ----------
    array
        ``float32`` array shaped ``(slices, rows, columns)``, rescaled to
        real-world values (Hounsfield units for CT). Colour images (RGB, or YBR
        converted to RGB) keep their samples on a last axis:
        ``(frames, rows, columns, 3)``, values 0-255.
    spacing
        Voxel spacing in mm as ``(slice, row, column)``; slice spacing is the
        distance between consecutive slice positions along the normal. For 2D
        images the slice value is a nominal 1.0 and the pixel spacing comes from
        PixelSpacing, else ImagerPixelSpacing (see :attr:`pixel_spacing_attribute`).
    affine
        4x4 matrix mapping voxel index ``(column, row, slice, 1)`` to patient
        coordinates (LPS, mm), as in DICOM. For 2D images it only scales indices
        by the pixel spacing: projections have no patient coordinates.
    datasets
        Source headers (pixel data removed) in volume order: ``datasets[k]`` is
        slice ``k`` of ``array``. A multi-frame instance appears once per frame
        (the same header); :attr:`frames` says which frame each one is.
    layout
        :data:`VOLUME_LAYOUT` (slices of one 3D grid) or :data:`IMAGES_LAYOUT`
        (independent 2D images or frames).
    frame_numbers
        Per frame of ``array``: its 1-based frame number in a multi-frame
        instance, None for a single-frame one; empty when every image is single-frame.
    pixel_spacing_attribute
        Where the pixel spacing came from: ``PixelSpacing``, ``ImagerPixelSpacing``,
        or ``""`` when the images do not say (the spacing is then a nominal 1 mm).
    inverted
        True when MONOCHROME1 images were inverted so that, as for every
        grayscale volume, higher values are brighter.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    datasets: tuple[Dataset, ...] = field(repr=False)
    layout: str = VOLUME_LAYOUT
    frame_numbers: tuple[int | None, ...] = ()
    pixel_spacing_attribute: str = "PixelSpacing"
    inverted: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices or frames, rows, columns)``, without the colour axis."""
        s, r, c = self.array.shape[:3]
        return (s, r, c)

    @property
    def is_2d(self) -> bool:
        """True for independent 2D images or frames (no slice geometry)."""
        return self.layout == IMAGES_LAYOUT

    @property
    def samples_per_pixel(self) -> int:
        """3 for colour (``array`` has a last axis of samples), else 1."""
        return int(self.array.shape[3]) if self.array.ndim == 4 else 1

    @property
    def photometric_interpretation(self) -> str:
        """The source's PhotometricInterpretation (before any inversion or conversion)."""
        return str(self.datasets[0].get("PhotometricInterpretation", "")) if self.datasets else ""

    def frame_number(self, index: int) -> int | None:
        """1-based frame number of frame ``index`` in its instance; None if single-frame."""
        return self.frame_numbers[index] if self.frame_numbers else None

    @property
    def frames(self) -> tuple[FrameSource, ...]:
        """Per frame of ``array``: the instance (and frame) to reference in results."""
        return tuple(
            FrameSource(str(ds.SOPClassUID), str(ds.SOPInstanceUID), self.frame_number(k))
            for k, ds in enumerate(self.datasets)
        )

    @property
    def sop_class_uids(self) -> tuple[str, ...]:
        """Per frame: the SOP Class UID of its instance."""
        return tuple(str(ds.get("SOPClassUID", "")) for ds in self.datasets)

    @property
    def lateralities(self) -> tuple[str, ...]:
        """Per frame: ``L``, ``R``, ``B``, ``U`` or ``""`` (ImageLaterality, else
        FrameLaterality, else Laterality)."""
        return tuple(
            image_attributes.laterality(ds, self.frame_number(k))
            for k, ds in enumerate(self.datasets)
        )

    @property
    def views(self) -> tuple[str, ...]:
        """Per frame: the view (``CC``, ``MLO``, ``PA``...; ViewPosition, else the
        ViewCodeSequence code), ``""`` when unknown."""
        return tuple(image_attributes.view(ds) for ds in self.datasets)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(self.spacing[0] * self.spacing[1] * self.spacing[2])

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", ""))

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].get("FrameOfReferenceUID", ""))

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """Per slice or frame (a multi-frame instance repeats its UID)."""
        return tuple(uid_value(ds, _SOP_INSTANCE_UID) for ds in self.datasets)

    @property
    def orientation(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.datasets[0].ImageOrientationPatient)


_SOP_INSTANCE_UID = BaseTag(0x00080018)


def uid_value(ds: Dataset, tag: BaseTag) -> str:
    """``str(ds[tag].value)`` of a UI element, converted once and kept in ``ds`` as
    pydicom keeps what it converts.

    Every header of a series has its own SOP Instance UID, so no value is shared and
    each is converted: about 150 us through pydicom's hooks, value validation and
    ``DataElement`` checks, 0.15 s for a 1000-slice series read by the result UIDs, the
    SEG and the SR. A raw value that is one valid UID is converted here in ~5 us, to
    the same element; anything else (absent, empty, several values, not a valid UID,
    not ASCII) goes through pydicom, with its warnings.
    """
    raw = ds._dict.get(tag)
    if isinstance(raw, RawDataElement) and raw.VR in (VR.UI, None):
        value = raw.value
        if isinstance(value, bytes):
            text = value.decode("latin-1").rstrip("\0 ")  # as pydicom's convert_UI
            # pydicom's own test of a valid UID (PS3.5 9.1), as its validation applies it
            if len(text) <= 64 and RE_VALID_UID.fullmatch(text):
                uid = UID(text, validation_mode=config.IGNORE)
                element = DataElement(
                    tag, VR.UI, uid, raw.value_tell, False, True, validation_mode=config.IGNORE
                )
                # validated above; later assignments are checked as pydicom's would be
                element.validation_mode = config.settings.reading_validation_mode
                ds._dict[tag] = element
                return uid
    return str(ds[tag].value)


def strip_pixels(ds: Dataset) -> Dataset:
    """A new dataset with ``ds``'s file meta and every element outside group 7FE0.

    Elements not yet decoded are copied as read (``Dataset.elements()``): each is decoded
    when first used, not all of them for every slice of every series.
    """
    plain: dict[BaseTag, DataElement | RawDataElement] = {}
    rest = []
    for tag, elem in ds.items():
        if tag >> 16 == 0x7FE0:
            continue
        if tag.is_private or (isinstance(elem, DataElement) and elem.VR == VR.SQ):
            rest.append((tag, elem))  # Dataset.__setitem__ does more for these
        else:
            plain[tag] = elem  # what __setitem__ would do: store it
    header = Dataset(plain)
    header.file_meta = ds.file_meta
    for tag, elem in sorted(rest, key=lambda item: item[0]):
        header[tag] = elem
    return header
