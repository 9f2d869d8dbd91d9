"""A synthetic *prior* chest CT of the same phantom patient, rigidly moved.

Follow-up reads compare a current study with a prior one of the same patient,
acquired on another day: the patient lies differently on the table and the
scanner gives the study its own Frame of Reference. This module makes such a
prior for the chest phantom of :mod:`tools.synthetic.chest_ct`:

* the anatomy is the current phantom's (same ``seed``: same patient, lungs and
  vessels), generated noise-free on a long grid;
* it is sampled (trilinear) at the prior's voxel centres mapped by a known rigid
  transform, on a different grid (pixel spacing, matrix, slice spacing and range);
* it gets its own noise, StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID,
  accession number and an earlier study date.

:attr:`PriorTruth.matrix` maps the prior's patient coordinates to the current
series' patient coordinates, which is what a registration must recover.
Synthetic data only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from tools.synthetic.chest_ct import (
    AIR_HU,
    RESCALE_INTERCEPT,
    ChestPhantomTruth,
    _stored,
    _to_datasets,
    make_chest_ct,
)

log = logging.getLogger(__name__)

#: Slices of the noise-free anatomy the prior is sampled from (3 mm: 480 mm long, so a
#: prior moved by tens of mm still lies inside the body's extent).
_ANATOMY_SLICES = 160


@dataclass(frozen=True)
class PriorTruth:
    """What the prior is, relative to the current phantom.

    Attributes
    ----------
    matrix
        4x4 rigid matrix mapping prior patient coordinates to current ones.
    rotation_deg, translation_mm
        The parameters it was built from (rotations about x, then y, then z).
    anatomy
        Truth of the phantom anatomy, in the current patient coordinates.
    """

    matrix: np.ndarray
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    anatomy: ChestPhantomTruth

    def to_current(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(n, 3)`` prior patient coordinates to current ones."""
        points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        return points @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def to_prior(self, points_mm: np.ndarray) -> np.ndarray:
        """Map ``(n, 3)`` current patient coordinates to prior ones."""
        points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        return (points - self.matrix[:3, 3]) @ self.matrix[:3, :3]


def rigid_matrix(
    rotation_deg: tuple[float, float, float], translation_mm: tuple[float, float, float]
) -> np.ndarray:
    """4x4 matrix of a rotation about x, then y, then z (degrees), then a translation (mm)."""
    ax, ay, az = (math.radians(a) for a in rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = translation_mm
    return matrix


def _anatomy(seed: int) -> tuple[np.ndarray, np.ndarray, ChestPhantomTruth]:
    """Noise-free HU of the phantom on a long grid, its voxel-to-patient affine and truth."""
    datasets, truth = make_chest_ct(n_slices=_ANATOMY_SLICES, seed=seed, noise_sd_hu=0.0)
    ordered = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack(
        [np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns) for ds in ordered]
    ).astype(np.float32) + np.float32(RESCALE_INTERCEPT)
    first = ordered[0]
    spacing_rc = [float(v) for v in first.PixelSpacing]
    slice_step = float(ordered[1].ImagePositionPatient[2]) - float(first.ImagePositionPatient[2])
    # Index (slice, row, column) -> patient (x, y, z); the phantom is axis-aligned.
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    steps = np.array([slice_step, spacing_rc[0], spacing_rc[1]])
    return hu, np.concatenate([origin, steps]), truth


def make_prior_ct(
    seed: int = 0,
    *,
    rotation_deg: tuple[float, float, float] = (3.0, -2.0, 4.0),
    translation_mm: tuple[float, float, float] = (12.0, -18.0, 30.0),
    n_slices: int = 110,
    rows: int = 300,
    columns: int = 300,
    pixel_spacing_mm: float = 1.3,
    slice_thickness_mm: float = 2.5,
    noise_sd_hu: float = 18.0,
    study_date: str = "20230601",
    series_description: str = "Chest CT phantom prior",
) -> tuple[list[Dataset], PriorTruth]:
    """A prior chest CT of phantom patient ``seed`` and the transform to its current CT.

    The current CT is ``make_chest_ct(seed=seed)`` with its default field of view and at
    least 100 slices of 3 mm (shorter or narrower scans shrink the phantom's anatomy).

    Parameters
    ----------
    seed
        The phantom patient (PatientID ``PHANTOM<seed>``) and the prior's noise.
    rotation_deg, translation_mm
        The rigid transform from prior to current patient coordinates.
    n_slices, rows, columns, pixel_spacing_mm, slice_thickness_mm
        The prior's grid (axis-aligned in its own Frame of Reference, centred on 0).
    noise_sd_hu
        Standard deviation of the prior's own Gaussian noise.
    study_date
        StudyDate (and series, acquisition and content dates) of the prior, ``YYYYMMDD``.

    Returns
    -------
    datasets, truth
        CT Image Storage datasets of the prior and its :class:`PriorTruth`.
    """
    if min(rows, columns) * pixel_spacing_mm < 300.0 or n_slices < 2:
        raise ValueError("the prior's field of view must be at least 300 mm and 2 slices")
    matrix = rigid_matrix(rotation_deg, translation_mm)
    hu, grid, anatomy = _anatomy(seed)
    origin, steps = grid[:3], grid[3:]

    xs = (np.arange(columns) - (columns - 1) / 2.0) * pixel_spacing_mm
    ys = (np.arange(rows) - (rows - 1) / 2.0) * pixel_spacing_mm
    zs = (np.arange(n_slices) - (n_slices - 1) / 2.0) * slice_thickness_mm
    # Prior index (slice, row, column) -> prior patient (x, y, z) -> current patient
    # -> anatomy index (slice, row, column): one affine map, sampled without big grids.
    to_prior = np.array(
        [[0.0, 0.0, pixel_spacing_mm], [0.0, pixel_spacing_mm, 0.0], [slice_thickness_mm, 0, 0]]
    )
    prior_origin = np.array([xs[0], ys[0], zs[0]])
    to_anatomy = np.array(
        [[0.0, 0.0, 1.0 / steps[0]], [0.0, 1.0 / steps[1], 0.0], [1.0 / steps[2], 0.0, 0.0]]
    )
    linear = to_anatomy @ matrix[:3, :3] @ to_prior
    offset = to_anatomy @ (matrix[:3, :3] @ prior_origin + matrix[:3, 3] - origin)
    sampled = ndimage.affine_transform(
        hu,
        linear,
        offset=offset,
        output_shape=(n_slices, rows, columns),
        order=1,
        mode="constant",
        cval=AIR_HU,
    )
    prior_hu = sampled.reshape(n_slices, rows, columns).astype(np.float32)
    rng = np.random.default_rng([seed, 7001])
    prior_hu += rng.normal(0.0, noise_sd_hu, size=prior_hu.shape).astype(np.float32)
    stored = _stored(prior_hu)

    datasets = _to_datasets(
        stored,
        (xs, ys, zs),
        flip_left_right=False,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        uid_name="ainode-chest-ct-prior",
        uid_variant=f"{rotation_deg}/{translation_mm}/{study_date}",
        series_description=series_description,
        seed=seed,
    )
    for ds in datasets:
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.AccessionNumber = f"SYP{seed:06d}"
        ds.StudyDescription = "Synthetic chest CT (prior)"
    log.debug(
        "prior phantom generated seed=%d shape=%s rotation_deg=%s translation_mm=%s",
        seed,
        stored.shape,
        rotation_deg,
        translation_mm,
    )
    truth = PriorTruth(
        matrix=matrix,
        rotation_deg=rotation_deg,
        translation_mm=translation_mm,
        anatomy=anatomy,
    )
    return datasets, truth
