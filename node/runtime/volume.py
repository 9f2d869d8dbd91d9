"""Assemble a series of single-frame images into a geometrically checked volume.

A :class:`Volume` is built once per job, sorted along the slice normal, with
geometry validated before any model runs. It keeps the source headers (without
pixel data) so result objects can reference them exactly.

Series of 2D images (DX, CR, MG, OP, secondary captures: see
:mod:`node.runtime.images`) are assembled as a volume of independent *frames*
(``layout == "images"``): one frame per single-frame instance and per frame of a
multi-frame instance, in instance order, with no slice geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.errors import VolumeError
from node.runtime import image_attributes

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
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def orientation(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.datasets[0].ImageOrientationPatient)


def _is_localizer(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return "LOCALIZER" in image_type


def _slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    return np.cross(row, col)


def _strip_pixels(ds: Dataset) -> Dataset:
    header = Dataset()
    header.file_meta = ds.file_meta
    for elem in ds:
        if elem.tag.group == 0x7FE0:
            continue
        header.add(elem)
    return header


def assemble_volume(datasets: Iterable[Dataset]) -> Volume:
    """Sort, check and stack single-frame images into a :class:`Volume`.

    Localizers are dropped. A series of 2D images (DX, MG, OP...) is assembled
    by :func:`node.runtime.images.assemble_images` instead. Raises
    :class:`~node.errors.VolumeError` when the series has mixed orientations or
    sizes, missing geometry, duplicate positions, a gap in slice spacing, or positions
    that drift in the image plane (gantry tilt: not resampled).
    """
    images = [ds for ds in datasets if not _is_localizer(ds)]
    if not images:
        raise VolumeError("series has no non-localizer images")
    from node.runtime.images import assemble_images, is_image_series  # uses Volume

    if is_image_series(images):
        return assemble_images(images)
    for ds in images:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise VolumeError(f"instance {ds.SOPInstanceUID} lacks {keyword}")
    orientation = [float(v) for v in images[0].ImageOrientationPatient]
    for ds in images[1:]:
        other = [float(v) for v in ds.ImageOrientationPatient]
        if not np.allclose(orientation, other, atol=ORIENTATION_TOLERANCE):
            raise VolumeError("series mixes image orientations")
    size = (int(images[0].Rows), int(images[0].Columns))
    if any((int(ds.Rows), int(ds.Columns)) != size for ds in images):
        raise VolumeError("series mixes image sizes")
    pixel_spacing = tuple(float(v) for v in images[0].PixelSpacing)
    if any(
        not np.allclose(pixel_spacing, [float(v) for v in ds.PixelSpacing], rtol=1e-4)
        for ds in images
    ):
        raise VolumeError("series mixes pixel spacings")

    normal = _slice_normal(orientation)
    positions = [
        float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for ds in images
    ]
    order = np.argsort(positions, kind="stable")
    images = [images[i] for i in order]
    sorted_positions = np.asarray([positions[i] for i in order])

    if len(images) > 1:
        # Gantry tilt (or any shear): positions drift in the image plane from slice to slice.
        # Stacked as if they did not, every voxel would be misplaced by up to that drift.
        origins = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in images])
        offsets = origins - origins[0]
        unit = normal / np.linalg.norm(normal)
        in_plane = offsets - np.outer(offsets @ unit, unit)
        drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
        if drift > SHEAR_TOLERANCE * min(pixel_spacing):
            tilt = images[0].get("GantryDetectorTilt")
            raise VolumeError(
                f"slice positions drift {drift:.2f} mm in the image plane (a sheared series"
                f"{f', gantry tilt {float(tilt):g} degrees' if tilt not in (None, '') else ''});"
                " it is not resampled"
            )
        steps = np.diff(sorted_positions)
        if np.any(steps < 1e-3):
            raise VolumeError("series has two images at the same slice position")
        slice_spacing = float(np.median(steps))
        if np.any(np.abs(steps - slice_spacing) > SPACING_TOLERANCE * slice_spacing):
            worst = int(np.argmax(np.abs(steps - slice_spacing)))
            raise VolumeError(
                f"slice spacing is not uniform: gap of {steps[worst]:.3f} mm after slice "
                f"{worst} where {slice_spacing:.3f} mm is expected"
            )
    else:
        slice_spacing = float(images[0].get("SliceThickness", 1.0) or 1.0)

    slices = []
    for ds in images:
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels * slope + intercept)
    array = np.stack(slices).astype(np.float32, copy=False)

    row_cos = np.asarray(orientation[:3])
    col_cos = np.asarray(orientation[3:6])
    origin = np.asarray([float(v) for v in images[0].ImagePositionPatient])
    affine = np.eye(4)
    # DICOM PixelSpacing is (row spacing, column spacing): column index moves along
    # the row direction by the column spacing.
    affine[:3, 0] = row_cos * pixel_spacing[1]
    affine[:3, 1] = col_cos * pixel_spacing[0]
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = origin

    return Volume(
        array=array,
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        affine=affine,
        datasets=tuple(_strip_pixels(ds) for ds in images),
    )


def load_volume(paths: Iterable[Path]) -> Volume:
    """Read spooled files and assemble them; a file that cannot be parsed is named."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:  # pydicom raises many types for corrupt input
            raise VolumeError(f"cannot read {path}: {exc}") from exc
    return assemble_volume(datasets)
