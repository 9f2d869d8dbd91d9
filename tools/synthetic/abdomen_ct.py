"""Synthetic chest-abdomen CT phantom with a voxel-exact organ label map.

Built like :mod:`tools.synthetic.chest_ct` (patient coordinates, LPS, mm,
sampled at voxel centres) but covering the lower chest and the upper abdomen
in a portal-venous contrast phase:

* air outside the body, a patient table below it;
* an elliptical body: subcutaneous fat (-100 HU) around muscle/soft tissue
  (+45 HU), a vertebral column (+700 HU), ribs above the kidneys, an aorta
  (+170 HU) and a heart (+50 HU);
* lungs (-850 HU, soft-tissue vessel spheres inside), a liver (two lobes,
  +105 HU), a crescent-shaped spleen (+120 HU) and two bean-shaped kidneys
  (+185 HU, a hilum notch, surrounded by perirenal fat);
* in-plane blur and Gaussian noise.

Every structure's size, position and attenuation varies with ``seed`` (within
plausible adult ranges) so that a model trained on some seeds can be tested on
others. Organs are painted in a fixed order (later ones win where shapes
overlap, e.g. the liver dome under the right lung base); the label map is
painted with the same masks, so it is exact on the image grid. Synthetic data
only: the patient is ``PHANTOM^ABDOMEN``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from tools.synthetic.chest_ct import (
    AIR_HU,
    Ellipsoid,
    _box,
    _inside_ellipsoid,
    _scan,
    _to_datasets,
)

log = logging.getLogger(__name__)

#: Label values of :attr:`AbdomenPhantomTruth.labels` (0 is outside the body).
BODY, LUNGS, LIVER, SPLEEN, KIDNEYS = 1, 2, 3, 4, 5
LABEL_NAMES: dict[int, str] = {
    BODY: "body",
    LUNGS: "lungs",
    LIVER: "liver",
    SPLEEN: "spleen",
    KIDNEYS: "kidneys",
}

Grid = tuple[np.ndarray, np.ndarray, np.ndarray]
Inside = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AbdomenPhantomTruth:
    """Ground truth of an abdomen phantom.

    Attributes
    ----------
    labels
        ``uint8`` array ``(slices, rows, columns)`` in volume order (slice 0 is
        the most inferior, as :func:`~node.contract.assemble.assemble_volume`
        sorts it: with ``flip_left_right`` the normal points down, so slice 0
        is the most superior): :data:`BODY` ... :data:`KIDNEYS`.
    volumes_cm3
        Voxel-count volume of each label on this grid.
    hu
        Noise-free attenuation used for each organ label.
    noise_sd_hu
        Standard deviation of the added noise.
    """

    labels: np.ndarray
    volumes_cm3: dict[int, float]
    hu: dict[int, float]
    noise_sd_hu: float


def _paint(
    hu: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    low: np.ndarray,
    high: np.ndarray,
    inside: Inside,
    value: float,
    label: int | None,
) -> None:
    """Paint ``value`` (and ``label`` unless None) where ``inside`` holds, within a box."""
    xs, ys, zs = grid
    sx, sy, sz = _box(xs, low[0], high[0]), _box(ys, low[1], high[1]), _box(zs, low[2], high[2])
    x, y, z = xs[None, None, sx], ys[None, sy, None], zs[sz, None, None]
    mask = inside(x, y, z)
    hu[sz, sy, sx][mask] = value
    if label is not None:
        labels[sz, sy, sx][mask] = label


def _ellipsoid_box(e: Ellipsoid, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    c, a = np.asarray(e.center_mm), np.asarray(e.semi_axes_mm) + margin
    return c - a, c + a


def _paint_ellipsoid(
    hu: np.ndarray,
    labels: np.ndarray,
    grid: Grid,
    e: Ellipsoid,
    value: float,
    label: int | None,
    minus: tuple[Ellipsoid, ...] = (),
) -> None:
    def inside(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        mask = _inside_ellipsoid(x, y, z, e)
        for cut in minus:
            mask &= ~_inside_ellipsoid(x, y, z, cut)
        return mask

    low, high = _ellipsoid_box(e)
    _paint(hu, labels, grid, low, high, inside, value, label)


def make_abdomen_ct(
    n_slices: int = 120,
    rows: int = 192,
    columns: int = 192,
    pixel_spacing_mm: float = 2.5,
    slice_thickness_mm: float = 3.0,
    seed: int = 0,
    series_description: str = "Abdomen CT phantom",
    study_instance_uid: str | None = None,
    *,
    noise_sd_hu: float | None = None,
    z_offset_mm: float | None = None,
    flip_left_right: bool = False,
    series_number: int = 1,
) -> tuple[list[Dataset], AbdomenPhantomTruth]:
    """Generate a synthetic chest-abdomen CT series and its label map.

    Parameters
    ----------
    n_slices, rows, columns
        Grid size; slices are contiguous (spacing = ``slice_thickness_mm``).
    pixel_spacing_mm, slice_thickness_mm
        Voxel size in mm.
    seed
        Seeds anatomy variation, noise and UIDs.
    series_description, study_instance_uid, series_number
        As in :func:`~tools.synthetic.chest_ct.make_chest_ct`.
    noise_sd_hu
        Noise standard deviation; drawn from 8-20 HU when omitted.
    z_offset_mm
        Shift of the anatomy along z relative to the scan centre (positive:
        the scan shows more of the abdomen); drawn from ±25 mm when omitted.
    flip_left_right
        Store columns from the patient's left to right; the label map follows.

    Returns
    -------
    datasets, truth
        One CT Image Storage dataset per slice (InstanceNumber 1 is the most
        superior slice) and the :class:`AbdomenPhantomTruth`.
    """
    if n_slices < 1 or rows < 16 or columns < 16:
        raise ValueError("phantom needs at least 1 slice of 16x16 pixels")
    rng = np.random.default_rng([seed, 0xAB])
    u = rng.uniform

    def jitter(scale: float) -> float:
        return float(u(-scale, scale))

    noise = float(u(8.0, 20.0)) if noise_sd_hu is None else noise_sd_hu
    shift_z = jitter(25.0) if z_offset_mm is None else z_offset_mm
    size = float(u(0.88, 1.12))  # overall patient size
    organ = float(u(0.9, 1.1))  # organ size relative to the body

    dx = dy = pixel_spacing_mm
    dz = slice_thickness_mm
    xs = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2.0) * dx
    ys = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * dy
    # z = 0 is near the liver dome; the scan centre sits 30 mm below it by default.
    zs = (np.arange(n_slices, dtype=np.float32) - (n_slices - 1) / 2.0) * dz - 30.0 + shift_z
    grid = (xs, ys, zs)
    x, y = xs[None, None, :], ys[None, :, None]

    hu = np.full((n_slices, rows, columns), AIR_HU, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)

    # Body: elliptical cylinder, fat rim around soft tissue.
    body_a, body_b = 160.0 * size * float(u(0.92, 1.08)), 112.0 * size * float(u(0.92, 1.08))
    body_cy = jitter(8.0)
    fat = float(u(8.0, 22.0)) * size
    body_2d = (x / body_a) ** 2 + ((y - body_cy) / body_b) ** 2 <= 1.0
    inner_2d = (x / (body_a - fat)) ** 2 + ((y - body_cy) / (body_b - fat)) ** 2 <= 1.0
    soft_hu = float(u(35.0, 55.0))
    hu[:, body_2d[0]] = -100.0 + jitter(10.0)
    hu[:, inner_2d[0]] = soft_hu
    labels[:, body_2d[0]] = BODY

    table_top = body_cy + body_b + 8.0
    table_2d = (y >= table_top) & (y <= table_top + 14.0) & (np.abs(x) <= 180.0)
    hu[:, table_2d[0]] = 300.0

    s = size * organ
    bone_hu = float(u(600.0, 800.0))
    spine_y = body_cy + body_b - 45.0 * size
    spine_2d = x**2 + (y - spine_y) ** 2 <= (17.0 * size) ** 2
    hu[:, spine_2d[0]] = bone_hu
    aorta_2d = (x - 20.0 * size) ** 2 + (y - spine_y + 35.0 * size) ** 2 <= (11.0 * size) ** 2
    hu[:, aorta_2d[0]] = float(u(150.0, 200.0))

    # Lungs: superior, with soft-tissue vessels; the heart between them.
    lung_hu = float(u(-880.0, -820.0))
    lung_z = 100.0 * s + jitter(10.0)
    lungs = [
        Ellipsoid(
            (side * 70.0 * s + jitter(6.0), body_cy - 5.0 + jitter(6.0), lung_z + jitter(8.0)),
            (52.0 * s * float(u(0.9, 1.1)), 75.0 * s * float(u(0.9, 1.1)), 125.0 * s),
        )
        for side in (-1.0, 1.0)
    ]
    for lung in lungs:
        _paint_ellipsoid(hu, labels, grid, lung, lung_hu, LUNGS)
        for _ in range(5):
            r = float(u(3.0, 6.0))
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            rho = float(u(0.0, 0.7))
            centre = np.asarray(lung.center_mm) + direction * rho * np.asarray(lung.semi_axes_mm)
            sphere = Ellipsoid((float(centre[0]), float(centre[1]), float(centre[2])), (r, r, r))
            # Vessels are inside the lung: labelled lung, painted soft tissue.
            _paint_ellipsoid(hu, labels, grid, sphere, soft_hu, None)
    heart = Ellipsoid((10.0 * s, body_cy - 40.0 * s, 45.0 * s), (50.0 * s, 45.0 * s, 50.0 * s))
    _paint_ellipsoid(hu, labels, grid, heart, float(u(40.0, 60.0)), BODY)

    # Ribs: a bony ring above the kidneys (one rib every 25 mm).
    ring = (x / (body_a - fat - 4.0)) ** 2 + ((y - body_cy) / (body_b - fat - 4.0)) ** 2
    ring_in = (x / (body_a - fat - 11.0)) ** 2 + ((y - body_cy) / (body_b - fat - 11.0)) ** 2
    ring_2d = (ring <= 1.0) & (ring_in > 1.0)
    rib_slices = (np.mod(zs, 25.0) < 9.0) & (zs > -60.0 * s)
    for k in np.flatnonzero(rib_slices):
        plane = hu[k]
        plane[ring_2d[0] & (labels[k] == BODY)] = bone_hu

    # Liver: a large right lobe and a smaller left lobe reaching across the midline.
    liver_hu = float(u(95.0, 120.0))
    right_lobe = Ellipsoid(
        (-62.0 * s + jitter(8.0), body_cy - 5.0 * s + jitter(6.0), -50.0 * s + jitter(8.0)),
        (65.0 * s * float(u(0.9, 1.1)), 72.0 * s * float(u(0.9, 1.1)), 70.0 * s),
    )
    left_lobe = Ellipsoid(
        (15.0 * s + jitter(8.0), body_cy - 45.0 * s, right_lobe.center_mm[2] + 25.0 * s),
        (50.0 * s, 32.0 * s, 35.0 * s * float(u(0.85, 1.15))),
    )
    for lobe in (right_lobe, left_lobe):
        _paint_ellipsoid(hu, labels, grid, lobe, liver_hu, LIVER)

    # Spleen: left, posterior; a concave medial surface (a crescent).
    spleen_hu = float(u(110.0, 135.0))
    spleen = Ellipsoid(
        (88.0 * s + jitter(6.0), body_cy + 40.0 * s + jitter(6.0), -45.0 * s + jitter(8.0)),
        (24.0 * s, 48.0 * s * float(u(0.85, 1.15)), 50.0 * s * float(u(0.85, 1.15))),
    )
    hollow = Ellipsoid(
        (spleen.center_mm[0] - 30.0 * s, spleen.center_mm[1] - 8.0 * s, spleen.center_mm[2]),
        (20.0 * s, 40.0 * s, 60.0 * s),
    )
    _paint_ellipsoid(hu, labels, grid, spleen, spleen_hu, SPLEEN, minus=(hollow,))

    # Kidneys: perirenal fat, then a bean (ellipsoid minus a medial hilum notch).
    kidney_hu = float(u(170.0, 200.0))
    kidney_z = -150.0 * s + jitter(10.0)
    for side in (-1.0, 1.0):
        kidney = Ellipsoid(
            (
                side * (72.0 * s + jitter(5.0)),
                spine_y - 8.0 * s + jitter(5.0),
                kidney_z - (12.0 * s if side < 0 else 0.0) + jitter(6.0),  # right sits lower
            ),
            (28.0 * s, 24.0 * s, 52.0 * s * float(u(0.9, 1.1))),
        )
        cx, cy, cz = kidney.center_mm
        fat_shell = Ellipsoid(kidney.center_mm, tuple(a + 8.0 for a in kidney.semi_axes_mm))  # type: ignore[arg-type]
        _paint_ellipsoid(hu, labels, grid, fat_shell, float(u(-110.0, -80.0)), BODY)
        notch = Ellipsoid((cx - side * 26.0 * s, cy - 6.0 * s, cz), (12.0 * s, 12.0 * s, 16.0 * s))
        _paint_ellipsoid(hu, labels, grid, kidney, kidney_hu, KIDNEYS, minus=(notch,))

    stored = _scan(hu, noise, rng)

    voxel_cm3 = dx * dy * dz / 1000.0
    counts = np.bincount(labels.ravel(), minlength=len(LABEL_NAMES) + 1)
    # Mirrored columns also reverse the slice normal, so assembled volumes run downwards.
    truth_labels = labels[::-1, :, ::-1] if flip_left_right else labels
    truth = AbdomenPhantomTruth(
        labels=np.ascontiguousarray(truth_labels),
        volumes_cm3={label: float(counts[label]) * voxel_cm3 for label in LABEL_NAMES},
        hu={LIVER: liver_hu, SPLEEN: spleen_hu, KIDNEYS: kidney_hu, LUNGS: lung_hu},
        noise_sd_hu=noise,
    )
    datasets = _to_datasets(
        stored,
        grid,
        flip_left_right=flip_left_right,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        uid_name="ainode-abdomen-ct-phantom",
        uid_variant=f"{noise}/{shift_z}/{flip_left_right}/{series_number}",
        series_description=series_description,
        study_instance_uid=study_instance_uid,
        series_number=series_number,
        seed=seed,
    )
    for ds in datasets:
        ds.ManufacturerModelName = "abdomen phantom"
        ds.StudyDescription = "Synthetic abdomen CT"
        ds.PatientName = "PHANTOM^ABDOMEN"
        ds.BodyPartExamined = "ABDOMEN"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
    log.debug("abdomen phantom generated seed=%d shape=%s", seed, stored.shape)
    return datasets, truth
