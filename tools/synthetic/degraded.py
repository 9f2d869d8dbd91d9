"""Synthetic CT series made to fail the input-quality gate's checks (for tests and demos).

Each function takes the instances of a series (e.g. from
:func:`tools.synthetic.chest_ct.make_chest_ct`) and returns changed copies; the
inputs are left as they are. Stored values stay 16-bit unsigned with the
series' rescale, except :func:`to_8_bit`.

:func:`insert_metal` and :func:`add_motion` are the two causes of streaks the gate's
streak index (:func:`node.engine.quality.streak_index`) looks for; motion has no
metal, so only the streak check catches it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage


def _hu(ds: Dataset) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float32) * slope + intercept


def _store(ds: Dataset, hu: np.ndarray) -> Dataset:
    """A copy of ``ds`` holding ``hu`` (16-bit stored values, clipped to BitsStored)."""
    out = copy.deepcopy(ds)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    top = 2 ** int(ds.BitsStored) - 1
    stored = np.clip(np.rint((hu - intercept) / slope), 0, top).astype("<u2")
    out.PixelData = np.ascontiguousarray(stored).tobytes()
    return out


def add_noise(datasets: Sequence[Dataset], sd_hu: float, seed: int = 0) -> list[Dataset]:
    """Extra Gaussian noise of ``sd_hu`` on every slice (a low-dose or wrong-kernel series)."""
    rng = np.random.default_rng(seed)
    return [_store(ds, _hu(ds) + rng.normal(0.0, sd_hu, _hu(ds).shape)) for ds in datasets]


def drop_slice(datasets: Sequence[Dataset], index: int) -> list[Dataset]:
    """The series without instance ``index`` (a slice lost in transfer)."""
    return [copy.deepcopy(ds) for k, ds in enumerate(datasets) if k != index]


def duplicate_slice(datasets: Sequence[Dataset], index: int) -> list[Dataset]:
    """The series plus a second instance (new SOP Instance UID) at slice ``index``'s position."""
    copies = [copy.deepcopy(ds) for ds in datasets]
    extra = copy.deepcopy(datasets[index])
    extra.SOPInstanceUID = generate_uid()
    extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
    extra.InstanceNumber = len(datasets) + 1
    return [*copies, extra]


def insert_metal(
    datasets: Sequence[Dataset],
    slices: Sequence[int],
    *,
    centre: tuple[int, int] | None = None,
    radius_px: int = 3,
    hu: float = 3000.0,
    streak_hu: float = 300.0,
    streaks: int = 30,
) -> list[Dataset]:
    """A metal insert (``hu``) on ``slices`` with radial bright/dark streaks around it."""
    out = []
    for k, ds in enumerate(datasets):
        image = _hu(ds)
        if k in slices:
            rows, columns = image.shape
            cy, cx = centre if centre is not None else (rows // 2, columns // 2)
            y, x = np.mgrid[0:rows, 0:columns]
            angle = np.arctan2(y - cy, x - cx)
            distance = np.hypot(y - cy, x - cx)
            pattern = np.cos(streaks * angle) * np.exp(-distance / (0.5 * max(rows, columns)))
            image = image + streak_hu * np.sign(pattern) * (np.abs(pattern) > 0.3)
            image[distance <= radius_px] = hu
        out.append(_store(ds, image))
    return out


def add_motion(
    datasets: Sequence[Dataset],
    slices: Sequence[int],
    *,
    shift_mm: float = 6.0,
    ghost: float = 0.35,
    streak_hu: float = 150.0,
    streak_period_mm: float = 6.0,
    view_deg: float = 30.0,
) -> list[Dataset]:
    """Patient motion (a breath or a jerk) during the rotations that made ``slices``.

    Filtered back projection assumes the patient holds still for a full rotation.
    When the anatomy moves by ``shift_mm`` part way through, the projections taken
    before and after disagree, and the reconstruction shows both:

    * a **ghost**: the anatomy a second time, displaced by the motion (along the
      rows here, as for breathing), with weight ``ghost`` (the share of views taken
      after the move), so every edge is doubled;
    * **streaks**: the inconsistency between the first and the last view is
      back-projected along that view's direction (``view_deg``, from the rows), as
      sharp parallel bright and dark bands of ``streak_hu`` every ``streak_period_mm``
      across the slice.

    Neighbouring slices are untouched, as when one breath spoils a few rotations.
    """
    out = []
    for k, ds in enumerate(datasets):
        image = _hu(ds)
        if k in slices:
            spacing = float(ds.PixelSpacing[0]) if "PixelSpacing" in ds else 1.0
            moved = ndimage.shift(image, (shift_mm / spacing, 0.0), order=1, mode="nearest")
            image = (1.0 - ghost) * image + ghost * moved
            rows, columns = image.shape
            y, x = np.mgrid[0:rows, 0:columns] * spacing
            theta = np.deg2rad(view_deg)
            # Distance across the bands, perpendicular to the view direction.
            across = -x * np.sin(theta) + y * np.cos(theta)
            wave = np.cos(2.0 * np.pi * across / streak_period_mm)
            image = image + streak_hu * np.sign(wave) * (np.abs(wave) > 0.7)
        out.append(_store(ds, image))
    return out


def to_8_bit(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The series stored in 8 bits (slope 8 from -1024 HU): coarse steps, top clipped."""
    out = []
    for ds in datasets:
        image = _hu(ds)
        copy_ = copy.deepcopy(ds)
        stored = np.clip(np.rint((image + 1024.0) / 8.0), 0, 255).astype(np.uint8)
        copy_.BitsAllocated = 8
        copy_.BitsStored = 8
        copy_.HighBit = 7
        copy_.PixelRepresentation = 0
        copy_.RescaleSlope = "8"
        copy_.RescaleIntercept = "-1024"
        copy_.PixelData = np.ascontiguousarray(stored).tobytes()
        out.append(copy_)
    return out


def clip_hu(datasets: Sequence[Dataset], low: float, high: float) -> list[Dataset]:
    """Values clipped to ``low``-``high`` HU (a series exported through a narrow window)."""
    return [_store(ds, np.clip(_hu(ds), low, high)) for ds in datasets]


def with_header(datasets: Sequence[Dataset], **values: object) -> list[Dataset]:
    """Copies with header attributes set (e.g. ``ConvolutionKernel="BONE"``)."""
    out = []
    for ds in datasets:
        changed = copy.deepcopy(ds)
        for keyword, value in values.items():
            setattr(changed, keyword, value)
        out.append(changed)
    return out


__all__ = [
    "add_motion",
    "add_noise",
    "clip_hu",
    "drop_slice",
    "duplicate_slice",
    "insert_metal",
    "to_8_bit",
    "with_header",
]
