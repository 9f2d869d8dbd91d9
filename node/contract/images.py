"""Assemble a series of 2D images into a :class:`~node.contract.volume.Volume` of frames.

Projection radiographs (DX, CR, MG), photographs (OP, VL) and captures have no
ImagePositionPatient: their images are independent views, not slices of one
grid. Each single-frame instance becomes one frame and each frame of a
multi-frame instance one frame, in InstanceNumber order (then SOP Instance UID), so
``volume.array[k]``, ``volume.datasets[k]`` and ``volume.frames[k]`` (instance
and frame number to reference in results) describe the same image.

Conventions for routines:

* grayscale frames are ``float32`` after the modality rescale; MONOCHROME1 frames
  are inverted (``v -> low + high - v`` over the range BitsStored can hold, after
  rescale) so that higher is brighter everywhere, and ``volume.inverted`` says so;
* colour frames keep their colour: ``(frames, rows, columns, 3)`` RGB, values
  0-255 (YBR is converted to RGB, PALETTE COLOR expanded through its LUT);
* the pixel spacing is PixelSpacing, else ImagerPixelSpacing (at the detector),
  else unknown (nominal 1 mm, ``volume.pixel_spacing_attribute == ""``).

Frames of one series must share size, samples per pixel and pixel spacing:
routines get one array; a series that mixes them is refused naming the mix.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

from node.contract import image_attributes
from node.contract.volume import IMAGES_LAYOUT, Volume, strip_pixels
from node.errors import VolumeError


class ImageDeclarations(Protocol):
    """The 2D part of what a routine accepts (:class:`~node.contract.plugin.Accepts`)."""

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]: ...
    @property
    def sop_classes(self) -> tuple[str, ...]: ...
    @property
    def photometric_interpretations(self) -> tuple[str, ...]: ...
    @property
    def samples_per_pixel(self) -> tuple[int, ...]: ...
    @property
    def bits_stored(self) -> tuple[int, ...]: ...
    @property
    def lateralities(self) -> tuple[str, ...]: ...
    @property
    def views(self) -> tuple[str, ...]: ...


#: Photometric interpretations read as grayscale and as colour.
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")


def is_image_series(datasets: list[Dataset]) -> bool:
    """True when every instance is of a 2D image SOP class (see
    :data:`~node.contract.image_attributes.IMAGE_SOP_CLASSES`); ``VolumeError`` when
    a series mixes 2D images with cross-sectional ones."""
    flags = {image_attributes.is_image_sop_class(str(ds.get("SOPClassUID", ""))) for ds in datasets}
    if len(flags) > 1:
        raise VolumeError("series mixes 2D image SOP classes with cross-sectional ones")
    return flags == {True}


def _order(ds: Dataset) -> tuple[int, str]:
    """InstanceNumber, then the SOP Instance UID: the same order whatever the arrival order."""
    try:
        number = int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        number = 2**31
    return number, str(ds.get("SOPInstanceUID", ""))


def _frames(ds: Dataset) -> tuple[np.ndarray, bool]:
    """Pixel data as ``(frames, rows, columns[, 3])`` float32 and whether it was inverted."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    name = str(ds.SOPInstanceUID)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise VolumeError(f"instance {name}: cannot decode pixel data: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        photometric = "RGB"
    colour = photometric in COLOUR
    if not colour and photometric not in GRAYSCALE:
        raise VolumeError(
            f"instance {name}: photometric interpretation {photometric!r} is not supported"
        )
    if frames == 1:
        pixels = pixels[np.newaxis]
    expected = 4 if colour else 3
    if pixels.ndim != expected:
        raise VolumeError(f"instance {name}: pixel data shaped {pixels.shape} is not {photometric}")
    array = pixels.astype(np.float32)
    if colour:
        if int(ds.get("BitsStored", 8)) > 8:
            array *= 255.0 / float(2 ** int(ds.BitsStored) - 1)
        return array, False
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    array = array * slope + intercept
    if photometric != "MONOCHROME1":
        return array, False
    return inversion_sum(ds) - array, True


def inversion_sum(ds: Dataset) -> float:
    """``s`` of the MONOCHROME1 inversion ``v -> s - v`` of ``ds``'s real-world values.

    The sum of the lowest and highest values BitsStored can hold, after the rescale;
    applying the inversion again gives the source's own values back.
    """
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    bits = int(ds.get("BitsStored", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return (low * slope + intercept) + (high * slope + intercept)


def assemble_images(datasets: list[Dataset]) -> Volume:
    """Read 2D images (single- or multi-frame) into a :class:`Volume` of frames.

    Raises :class:`~node.errors.VolumeError` naming the problem when images
    differ in size, samples per pixel or pixel spacing, or cannot be decoded.
    """
    if not datasets:
        raise VolumeError("series has no images")
    images = sorted(datasets, key=_order)
    arrays: list[np.ndarray] = []
    headers: list[Dataset] = []
    numbers: list[int | None] = []
    inverted = False
    spacings: set[tuple[tuple[float, float] | None, str]] = set()
    for ds in images:
        array, flipped = _frames(ds)
        inverted |= flipped
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise VolumeError(
                f"series mixes image sizes or colour: {arrays[0].shape[1:]} and "
                f"{array.shape[1:]} (instance {ds.SOPInstanceUID})"
            )
        arrays.append(array)
        header = strip_pixels(ds)
        multi = "NumberOfFrames" in ds and int(ds.NumberOfFrames or 1) > 1
        for index in range(array.shape[0]):
            headers.append(header)
            numbers.append(index + 1 if multi else None)
        spacing, attribute = image_attributes.pixel_spacing(ds)
        rounded = None if spacing is None else (round(spacing[0], 4), round(spacing[1], 4))
        spacings.add((rounded, attribute if spacing is not None else ""))
    known = {spacing for spacing, _ in spacings}
    if len(known) > 1:
        listed = ", ".join(
            "none" if s is None else f"{s[0]:g}x{s[1]:g} mm"
            for s in sorted(known, key=lambda s: (s is None, s))
        )
        raise VolumeError(f"series mixes pixel spacings: {listed}")
    pixel_spacing = known.pop()
    attributes = {attribute for _, attribute in spacings}
    attribute = next((a for a in ("PixelSpacing", "ImagerPixelSpacing") if a in attributes), "")
    row_mm, column_mm = pixel_spacing if pixel_spacing is not None else (1.0, 1.0)
    array = np.concatenate(arrays).astype(np.float32, copy=False)
    affine = np.diag([column_mm, row_mm, 1.0, 1.0])
    return Volume(
        array=array,
        spacing=(1.0, row_mm, column_mm),
        affine=affine,
        datasets=tuple(headers),
        layout=IMAGES_LAYOUT,
        frame_numbers=tuple(numbers) if any(n is not None for n in numbers) else (),
        pixel_spacing_attribute=attribute,
        inverted=inverted,
    )


def _which(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:5])
    return (
        f"frame {shown}"
        if len(indices) == 1
        else f"frames {shown}{'...' if len(indices) > 5 else ''}"
    )


def _per_frame_problems(what: str, values: tuple[str, ...], accepted: tuple[str, ...]) -> list[str]:
    """``what`` of each frame against the accepted values (case-insensitive)."""
    wanted = {a.upper() for a in accepted}
    bad: dict[str, list[int]] = {}
    for index, value in enumerate(values):
        if value.upper() not in wanted:
            bad.setdefault(value, []).append(index)
    return [
        f"{_which(indices)}: {what} {value or 'not given'} is not {'/'.join(accepted)}"
        for value, indices in bad.items()
    ]


def image_problems(accepts: ImageDeclarations, volume: Volume) -> list[str]:
    """The 2D declarations of ``accepts`` checked on ``volume`` (any layout).

    SOP classes, photometric interpretation (of the source, before MONOCHROME1
    inversion), samples per pixel, bits stored, and per-frame laterality and view;
    for 2D images also the pixel spacing, which must be known when a range is declared.
    """
    found: list[str] = []
    headers = list({id(ds): ds for ds in volume.datasets}.values())
    if accepts.sop_classes:
        wanted = {image_attributes.sop_class_uid(name) for name in accepts.sop_classes}
        for uid in sorted({str(ds.get("SOPClassUID", "")) for ds in headers} - wanted):
            found.append(
                f"SOP class {image_attributes.sop_class_name(uid)} is not "
                + " or ".join(image_attributes.sop_class_name(w) for w in sorted(wanted))
            )
    if accepts.photometric_interpretations:
        wanted_pi = {p.upper() for p in accepts.photometric_interpretations}
        for value in sorted(
            {str(ds.get("PhotometricInterpretation", "")).upper() for ds in headers} - wanted_pi
        ):
            found.append(
                f"photometric interpretation {value or 'not given'} is not "
                + "/".join(accepts.photometric_interpretations)
            )
    if accepts.samples_per_pixel and volume.samples_per_pixel not in accepts.samples_per_pixel:
        found.append(
            f"{volume.samples_per_pixel} samples per pixel; "
            + " or ".join(str(n) for n in accepts.samples_per_pixel)
            + " accepted"
        )
    if accepts.bits_stored:
        for bits in sorted({int(ds.get("BitsStored", 0)) for ds in headers}):
            if bits not in accepts.bits_stored:
                found.append(
                    f"{bits} bits stored; "
                    + " or ".join(str(n) for n in accepts.bits_stored)
                    + " accepted"
                )
    if accepts.lateralities:
        found += _per_frame_problems("laterality", volume.lateralities, accepts.lateralities)
    if accepts.views:
        found += _per_frame_problems("view", volume.views, accepts.views)
    if volume.is_2d:
        low, high = accepts.pixel_spacing_mm
        if volume.pixel_spacing_attribute == "":
            if low > 0 or high < 1e6:  # a bound of 1e6 mm or more is no bound
                found.append(
                    f"pixel spacing is not given (neither PixelSpacing nor ImagerPixelSpacing); "
                    f"{low:g}-{high:g} mm is required"
                )
        elif not all(low <= spacing <= high for spacing in volume.spacing[1:]):
            row, column = volume.spacing[1:]
            found.append(
                f"pixel spacing {row:.3g}x{column:.3g} mm ({volume.pixel_spacing_attribute}) "
                f"is outside {low:g}-{high:g} mm"
            )
    return found
