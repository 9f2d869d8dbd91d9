"""Building a :class:`~node.contract.volume.Volume` from a series' datasets.

Cross-sectional series (CT, MR, PET...) are sorted along the slice normal and stacked
with their geometry checked; series of 2D images (DX, MG, OP...) go to
:func:`~node.contract.images.assemble_images`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.contract.image_attributes import is_localizer
from node.contract.images import assemble_images, is_image_series
from node.contract.pixels import SourceFile, fill_slices, read_source, read_whole
from node.contract.volume import (
    ORIENTATION_TOLERANCE,
    SHEAR_TOLERANCE,
    SPACING_TOLERANCE,
    Volume,
    strip_pixels,
)
from node.errors import VolumeError


def _slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    return np.cross(row, col)


@dataclass(frozen=True)
class _Geometry:
    """The slice order of a cross-sectional series and the grid it spans."""

    order: list[int]
    spacing: tuple[float, float, float]
    affine: np.ndarray


def assemble_volume(datasets: Iterable[Dataset]) -> Volume:
    """Sort, check and stack single-frame images into a :class:`Volume`.

    Localizers are dropped. A series of 2D images (DX, MG, OP...) is assembled
    by :func:`node.contract.images.assemble_images` instead. Raises
    :class:`~node.errors.VolumeError` when the series has mixed orientations or
    sizes, missing geometry, duplicate positions, a gap in slice spacing, or positions
    that drift in the image plane (gantry tilt: not resampled).
    """
    images = [ds for ds in datasets if not is_localizer(ds)]
    if not images:
        raise VolumeError("series has no non-localizer images")
    if is_image_series(images):
        return assemble_images(images)
    geometry = _geometry(images)
    images = [images[i] for i in geometry.order]
    slices = []
    for ds in images:
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels * slope + intercept)
    array = np.stack(slices).astype(np.float32, copy=False)
    return Volume(
        array=array,
        spacing=geometry.spacing,
        affine=geometry.affine,
        datasets=tuple(strip_pixels(ds) for ds in images),
    )


def _all_close(
    first: Sequence[float],
    others: Sequence[Sequence[float]],
    rtol: float = 1e-5,
    atol: float = 1e-8,
) -> bool:
    """``np.allclose(first, other, rtol, atol)`` for every one of ``others``, at once
    (values of another length compared one by one, as ``np.allclose`` would)."""
    if any(len(other) != len(first) for other in others):
        return all(np.allclose(first, other, rtol=rtol, atol=atol) for other in others)
    if not others:
        return True
    close = np.isclose(np.asarray(first)[None, :], np.asarray(others), rtol=rtol, atol=atol)
    return bool(close.all())


def _geometry(images: Sequence[Dataset]) -> _Geometry:
    """Check the headers of a cross-sectional series and sort it (see
    :func:`assemble_volume` for what is refused)."""
    for ds in images:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise VolumeError(f"instance {ds.SOPInstanceUID} lacks {keyword}")
    orientation = [float(v) for v in images[0].ImageOrientationPatient]
    others = [[float(v) for v in ds.ImageOrientationPatient] for ds in images[1:]]
    if not _all_close(orientation, others, atol=ORIENTATION_TOLERANCE):
        raise VolumeError("series mixes image orientations")
    size = (int(images[0].Rows), int(images[0].Columns))
    if any((int(ds.Rows), int(ds.Columns)) != size for ds in images):
        raise VolumeError("series mixes image sizes")
    pixel_spacing = tuple(float(v) for v in images[0].PixelSpacing)
    spacings = [[float(v) for v in ds.PixelSpacing] for ds in images]
    if not _all_close(pixel_spacing, spacings, rtol=1e-4):
        raise VolumeError("series mixes pixel spacings")

    normal = _slice_normal(orientation)
    origins = [[float(v) for v in ds.ImagePositionPatient] for ds in images]
    positions = [float(np.dot(normal, origin)) for origin in origins]
    order = [int(i) for i in np.argsort(positions, kind="stable")]
    images = [images[i] for i in order]
    sorted_positions = np.asarray([positions[i] for i in order])

    if len(images) > 1:
        # Gantry tilt (or any shear): positions drift in the image plane from slice to slice.
        # Stacked as if they did not, every voxel would be misplaced by up to that drift.
        ordered = np.asarray([origins[i] for i in order])
        offsets = ordered - ordered[0]
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

    row_cos = np.asarray(orientation[:3])
    col_cos = np.asarray(orientation[3:6])
    origin = np.asarray(origins[order[0]])
    affine = np.eye(4)
    # DICOM PixelSpacing is (row spacing, column spacing): column index moves along
    # the row direction by the column spacing.
    affine[:3, 0] = row_cos * pixel_spacing[1]
    affine[:3, 1] = col_cos * pixel_spacing[0]
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = origin

    return _Geometry(order, (slice_spacing, pixel_spacing[0], pixel_spacing[1]), affine)


def load_volume(paths: Iterable[Path]) -> Volume:
    """Read spooled files and assemble them; a file that cannot be parsed is named.

    The same volume as :func:`assemble_volume` of the parsed files, read faster: each
    header is parsed once without its pixel data, the geometry checked on the headers,
    and the pixels written straight into their slice (:mod:`node.contract.pixels`).
    Series of 2D images are read whole and assembled by :func:`assemble_images`.
    """
    return assemble_sources([read_source(path) for path in paths])[0]


def assemble_sources(sources: Sequence[SourceFile]) -> tuple[Volume, tuple[SourceFile, ...]]:
    """:func:`load_volume` of files whose headers were read already (:func:`read_source`),
    and the files of the volume's slices in its order (none for a series of 2D images,
    which is assembled from whole files)."""
    kept = [source for source in sources if not is_localizer(source.header)]
    if not kept:
        raise VolumeError("series has no non-localizer images")
    if is_image_series([source.header for source in kept]):
        return assemble_volume(read_whole(source.path) for source in sources), ()
    geometry = _geometry([source.header for source in kept])
    kept = [kept[i] for i in geometry.order]
    rows, columns = int(kept[0].header.Rows), int(kept[0].header.Columns)
    array = np.empty((len(kept), rows, columns), dtype=np.float32)
    headers = fill_slices(kept, array)
    volume = Volume(
        array=array,
        spacing=geometry.spacing,
        affine=geometry.affine,
        datasets=tuple(strip_pixels(header) for header in headers),
    )
    return volume, tuple(kept)
