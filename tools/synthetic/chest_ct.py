"""Synthetic chest CT phantom with analytically known lung volumes.

The phantom is built in patient coordinates (DICOM LPS, mm) and sampled at
voxel centres, so its truth does not depend on the image grid:

* air (-1000 HU) outside the body, a patient table (+300 HU) below the body
  and not touching it;
* an elliptical body: fat rim (-100 HU) around soft tissue (+40 HU), a heart
  (+45 HU), ribs and a vertebral column (+700 HU);
* two ellipsoidal lungs (-850 HU) with soft-tissue "vessel" spheres inside,
  fully inside the scanned range (their z extent shrinks with short scans);
* a trachea (air tube, -1000 HU) from the top of the scan down to the carina
  and two main bronchi that enter the lungs;
* in-plane blur (scanner point spread) and Gaussian noise.

The analytic lung volumes include the vessels; the partial-volume blur does not
change them for a threshold halfway between lung and soft tissue.
Everything is deterministic for a given ``seed`` (numpy ``default_rng``).
Synthetic data only: the patient is ``PHANTOM^CHEST``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage
from scipy import ndimage

from tools.synthetic.instance import new_instance, set_grayscale_pixels

log = logging.getLogger(__name__)

AIR_HU = -1000.0
LUNG_HU = -850.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
HEART_HU = 45.0
BONE_HU = 700.0
TABLE_HU = 300.0
#: Stored value = HU - RESCALE_INTERCEPT (unsigned 12-bit, as many scanners do).
RESCALE_INTERCEPT = -1024.0
MAX_STORED = 4095

#: Scan length (mm) the anatomy is designed for; shorter scans shrink it along z.
REFERENCE_SCAN_LENGTH_MM = 300.0
#: Half field of view (mm) the anatomy is designed for; smaller ones shrink it in-plane.
REFERENCE_HALF_FOV_MM = 190.0


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in patient coordinates (LPS, mm)."""

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    @property
    def volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c

    def cap_volume_mm3(self, plane_x_mm: float, keep: str) -> float:
        """Volume of the part on the ``keep`` side (``"below"``/``"above"``) of ``x = plane``."""
        a, b, c = self.semi_axes_mm
        h = plane_x_mm - self.center_mm[0]  # plane position relative to the centre
        h = min(max(h, -a), a)
        # Part with x > h (relative): pi*b*c/a^2 * (a-h)^2 (2a+h) / 3.
        above = math.pi * b * c / (a * a) * (a - h) ** 2 * (2 * a + h) / 3.0
        return above if keep == "above" else self.volume_mm3 - above


@dataclass(frozen=True)
class ChestPhantomTruth:
    """Analytic ground truth of a phantom (volumes in cm3, values in HU).

    Attributes
    ----------
    right_lung_cm3, left_lung_cm3
        Volume of the patient's right (-x) and left (+x) lung, vessels included.
    lung_hu
        Noise-free mean HU inside both lungs together.
    right_lung_hu, left_lung_hu
        Noise-free mean HU inside each lung.
    right_lung, left_lung
        The ellipsoids the lungs are cut from.
    right_lung_max_x_mm, left_lung_min_x_mm
        Sagittal planes clipping the lungs where they touch (``None`` if unclipped).
    trachea_center_xy_mm, trachea_radius_mm, carina_z_mm
        The trachea: a vertical tube from ``carina_z_mm`` to the top of the scan.
    body_cm3
        Volume of the elliptical body cylinder inside the scanned range.
    noise_sd_hu
        Standard deviation of the added noise.
    """

    right_lung_cm3: float
    left_lung_cm3: float
    lung_hu: float
    right_lung_hu: float
    left_lung_hu: float
    right_lung: Ellipsoid
    left_lung: Ellipsoid
    right_lung_max_x_mm: float | None
    left_lung_min_x_mm: float | None
    trachea_center_xy_mm: tuple[float, float]
    trachea_radius_mm: float
    carina_z_mm: float
    body_cm3: float
    noise_sd_hu: float


def _inside_ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, ellipsoid: Ellipsoid
) -> np.ndarray:
    (cx, cy, cz), (a, b, c) = ellipsoid.center_mm, ellipsoid.semi_axes_mm
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0


def _near_segment(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    radius: float,
) -> np.ndarray:
    """Voxels within ``radius`` of the segment ``start``-``end`` (a capsule)."""
    axis = end - start
    length2 = float(axis @ axis)
    px, py, pz = x - start[0], y - start[1], z - start[2]
    t = np.clip((px * axis[0] + py * axis[1] + pz * axis[2]) / length2, 0.0, 1.0)
    dx, dy, dz = px - t * axis[0], py - t * axis[1], pz - t * axis[2]
    return dx * dx + dy * dy + dz * dz <= radius * radius


def _box(axis: np.ndarray, low: float, high: float) -> slice:
    """Index range of the sorted coordinates ``axis`` that lie in ``[low, high]``."""
    return slice(int(np.searchsorted(axis, low)), int(np.searchsorted(axis, high, side="right")))


def _paint_in_box(
    hu: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    low: np.ndarray,
    high: np.ndarray,
    inside: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    value: float,
) -> None:
    """Set ``hu`` to ``value`` where ``inside(x, y, z)`` holds, testing only the bounding box."""
    xs, ys, zs = grid
    sx, sy, sz = _box(xs, low[0], high[0]), _box(ys, low[1], high[1]), _box(zs, low[2], high[2])
    x, y, z = xs[None, None, sx], ys[None, sy, None], zs[sz, None, None]
    view = hu[sz, sy, sx]
    view[inside(x, y, z)] = value


def _vessels(
    rng: np.random.Generator, lung: Ellipsoid, count: int
) -> list[tuple[np.ndarray, float]]:
    """Non-overlapping spheres fully inside ``lung`` (centre, radius in mm)."""
    spheres: list[tuple[np.ndarray, float]] = []
    center = np.asarray(lung.center_mm)
    axes = np.asarray(lung.semi_axes_mm)
    min_axis = float(axes.min())
    # Bounded: a small lung may not fit ``count`` spheres; fewer vessels is fine.
    for _ in range(200 * count):
        if len(spheres) >= count:
            break
        radius = float(rng.uniform(3.0, 6.0))
        # Normalised radius rho of the centre; the ball fits if rho + r/min_axis <= 1.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        rho = float(rng.uniform(0.0, 0.8)) * (1.0 - radius / min_axis)
        position = center + direction * rho * axes
        if all(np.linalg.norm(position - p) > radius + r + 2.0 for p, r in spheres):
            spheres.append((position, radius))
    return spheres


def make_chest_ct(
    n_slices: int = 100,
    rows: int = 256,
    columns: int = 256,
    pixel_spacing_mm: float = 1.5,
    slice_thickness_mm: float = 3.0,
    seed: int = 0,
    series_description: str = "Chest CT phantom",
    study_instance_uid: str | None = None,
    *,
    noise_sd_hu: float = 18.0,
    touching_lungs: bool = False,
    flip_left_right: bool = False,
    modality: str = "CT",
    include_lungs: bool = True,
    series_number: int = 1,
) -> tuple[list[Dataset], ChestPhantomTruth]:
    """Generate a synthetic chest CT series and its analytic truth.

    Parameters
    ----------
    n_slices, rows, columns
        Grid size; slices are contiguous (spacing = ``slice_thickness_mm``).
    pixel_spacing_mm, slice_thickness_mm
        Voxel size in mm.
    seed
        Seeds the noise, the vessel positions and the UIDs.
    series_description
        SeriesDescription of every instance.
    study_instance_uid
        Use this study UID instead of a seed-derived one (e.g. to add a series to a study).
    noise_sd_hu
        Standard deviation of the Gaussian noise.
    touching_lungs
        Move the lungs medially so that they touch along the plane ``x = 0``
        (anterior-junction-like); each lung is clipped by that plane.
    flip_left_right
        Store columns from the patient's left to right (row direction ``[-1, 0, 0]``).
        The anatomy, and so the truth, is unchanged.
    modality
        Modality attribute (the SOP class stays CT Image Storage); for rejection tests.
    include_lungs
        Paint the lungs and airways; ``False`` gives a chest without air inside.
    series_number
        SeriesNumber of the series.

    Returns
    -------
    datasets, truth
        One CT Image Storage dataset per slice (InstanceNumber 1 is the most
        superior slice) and the :class:`ChestPhantomTruth`.
    """
    if n_slices < 1 or rows < 16 or columns < 16:
        raise ValueError("phantom needs at least 1 slice of 16x16 pixels")
    rng = np.random.default_rng(seed)

    # Voxel-centre coordinates (LPS): columns along x, rows along y, slices along z.
    dx = dy = pixel_spacing_mm
    dz = slice_thickness_mm
    xs = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2.0) * dx
    ys = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2.0) * dy
    zs = (np.arange(n_slices, dtype=np.float32) - (n_slices - 1) / 2.0) * dz
    x = xs[None, None, :]
    y = ys[None, :, None]
    z = zs[:, None, None]

    # Anatomy scales down (never up) to fit small fields of view / short scans.
    half_fov = min(columns * dx, rows * dy) / 2.0
    s_xy = min(1.0, half_fov / REFERENCE_HALF_FOV_MM)
    s_z = min(1.0, n_slices * dz / REFERENCE_SCAN_LENGTH_MM)
    lung_z = -25.0 * s_z

    hu = np.full((n_slices, rows, columns), AIR_HU, dtype=np.float32)
    body_a, body_b, body_cy = 165.0 * s_xy, 115.0 * s_xy, -10.0 * s_xy
    ex2 = (x / body_a) ** 2
    body_2d = ex2 + ((y - body_cy) / body_b) ** 2 <= 1.0
    inner_2d = (x / (150.0 * s_xy)) ** 2 + ((y - body_cy) / (100.0 * s_xy)) ** 2 <= 1.0
    hu[:] = np.where(body_2d, FAT_HU, AIR_HU)
    hu[:, inner_2d[0]] = SOFT_TISSUE_HU

    # Table: a slab below (posterior to) the body, separated by a gap.
    table_top = body_cy + body_b + 7.0 * s_xy
    table_2d = (y >= table_top) & (y <= table_top + 14.0 * s_xy) & (np.abs(x) <= 175.0 * s_xy)
    hu[:, table_2d[0]] = TABLE_HU

    heart = Ellipsoid(
        (5.0 * s_xy, -35.0 * s_xy, lung_z - 30.0 * s_z), (45 * s_xy, 42 * s_xy, 50 * s_z)
    )
    hu[_inside_ellipsoid(x, y, z, heart)] = HEART_HU

    # Ribs: an elliptical bony ring interrupted along z (one rib every 25 mm).
    ring = (x / (144.0 * s_xy)) ** 2 + ((y - body_cy) / (96.0 * s_xy)) ** 2
    ring_inner = (x / (137.0 * s_xy)) ** 2 + ((y - body_cy) / (90.0 * s_xy)) ** 2
    ring_2d = (ring <= 1.0) & (ring_inner > 1.0)
    rib_z = np.mod(z - lung_z, 25.0 * max(s_z, 0.2)) < 9.0 * max(s_z, 0.2)
    hu[ring_2d & rib_z] = BONE_HU
    spine_2d = x**2 + (y - 75.0 * s_xy) ** 2 <= (18.0 * s_xy) ** 2
    hu[:, spine_2d[0]] = BONE_HU

    if touching_lungs:
        right = Ellipsoid((-48.0 * s_xy, 0.0, lung_z), (50.0 * s_xy, 70.0 * s_xy, 110.0 * s_z))
        left = Ellipsoid((43.0 * s_xy, 0.0, lung_z), (45.0 * s_xy, 68.0 * s_xy, 105.0 * s_z))
        right_max_x: float | None = 0.0
        left_min_x: float | None = 0.0
    else:
        right = Ellipsoid((-65.0 * s_xy, 0.0, lung_z), (50.0 * s_xy, 70.0 * s_xy, 110.0 * s_z))
        left = Ellipsoid((68.0 * s_xy, 0.0, lung_z), (45.0 * s_xy, 68.0 * s_xy, 105.0 * s_z))
        right_max_x = left_min_x = None

    trachea_xy = (0.0, 38.0 * s_xy)
    trachea_r = 9.0 * s_xy
    carina_z = lung_z + 65.0 * s_z
    right_vessels = _vessels(rng, right, 6)
    left_vessels = _vessels(rng, left, 6)

    if include_lungs:
        right_mask = _inside_ellipsoid(x, y, z, right)
        if right_max_x is not None:
            right_mask &= x < right_max_x
        left_mask = _inside_ellipsoid(x, y, z, left)
        if left_min_x is not None:
            left_mask &= x >= left_min_x
        hu[right_mask | left_mask] = LUNG_HU
        grid = (xs, ys, zs)
        for position, radius in (*right_vessels, *left_vessels):
            sphere = Ellipsoid(
                (float(position[0]), float(position[1]), float(position[2])), (radius,) * 3
            )
            _paint_in_box(
                hu,
                grid,
                position - radius,
                position + radius,
                partial(_inside_ellipsoid, ellipsoid=sphere),
                SOFT_TISSUE_HU,
            )
        # Trachea and main bronchi (air, thinner than the lungs they enter).
        trachea = ((x - trachea_xy[0]) ** 2 + (y - trachea_xy[1]) ** 2 <= trachea_r**2) & (
            z >= carina_z
        )
        hu[trachea] = AIR_HU
        carina = np.array([trachea_xy[0], trachea_xy[1], carina_z])
        bronchus_r = 6.0 * s_xy
        for hilum in (
            np.array([-42.0 * s_xy, 15.0 * s_xy, carina_z - 30.0 * s_z]),
            np.array([44.0 * s_xy, 15.0 * s_xy, carina_z - 35.0 * s_z]),
        ):
            _paint_in_box(
                hu,
                grid,
                np.minimum(carina, hilum) - bronchus_r,
                np.maximum(carina, hilum) + bronchus_r,
                partial(_near_segment, start=carina, end=hilum, radius=bronchus_r),
                AIR_HU,
            )

    stored = _scan(hu, noise_sd_hu, rng)

    def lung_truth(
        lung: Ellipsoid, clip: float | None, keep: str, vessels: list[tuple[np.ndarray, float]]
    ) -> tuple[float, float]:
        volume = lung.volume_mm3 if clip is None else lung.cap_volume_mm3(clip, keep)
        vessel_volume = sum(4.0 / 3.0 * math.pi * r**3 for _, r in vessels)
        mean = ((volume - vessel_volume) * LUNG_HU + vessel_volume * SOFT_TISSUE_HU) / volume
        return volume / 1000.0, mean

    right_cm3, right_hu = lung_truth(right, right_max_x, "below", right_vessels)
    left_cm3, left_hu = lung_truth(left, left_min_x, "above", left_vessels)
    truth = ChestPhantomTruth(
        right_lung_cm3=right_cm3,
        left_lung_cm3=left_cm3,
        lung_hu=(right_cm3 * right_hu + left_cm3 * left_hu) / (right_cm3 + left_cm3),
        right_lung_hu=right_hu,
        left_lung_hu=left_hu,
        right_lung=right,
        left_lung=left,
        right_lung_max_x_mm=right_max_x,
        left_lung_min_x_mm=left_min_x,
        trachea_center_xy_mm=trachea_xy,
        trachea_radius_mm=trachea_r,
        carina_z_mm=carina_z,
        body_cm3=math.pi * body_a * body_b * n_slices * dz / 1000.0,
        noise_sd_hu=noise_sd_hu,
    )

    datasets = _to_datasets(
        stored,
        (xs, ys, zs),
        flip_left_right=flip_left_right,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        uid_name="ainode-chest-ct-phantom",
        uid_variant=f"{touching_lungs}/{flip_left_right}/{include_lungs}/{modality}/{series_number}",
        series_description=series_description,
        study_instance_uid=study_instance_uid,
        modality=modality,
        series_number=series_number,
        seed=seed,
    )
    log.debug(
        "phantom generated seed=%d shape=%s right_cm3=%.1f left_cm3=%.1f",
        seed,
        stored.shape,
        right_cm3,
        left_cm3,
    )
    return datasets, truth


def _stored(hu: np.ndarray) -> np.ndarray:
    """Stored values (``HU - RESCALE_INTERCEPT``, rounded, clipped to 12 bits) of ``hu``."""
    return np.clip(np.rint(hu - RESCALE_INTERCEPT), 0, MAX_STORED).astype(np.uint16)


def _scan(hu: np.ndarray, noise_sd_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Stored values of ``hu`` after the scanner's in-plane point spread and Gaussian noise."""
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.7, 0.7), mode="nearest")
    hu += rng.normal(0.0, noise_sd_hu, size=hu.shape).astype(np.float32)
    return _stored(hu)


def _to_datasets(
    stored: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    flip_left_right: bool,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    uid_name: str,
    uid_variant: str,
    series_description: str,
    seed: int,
    study_instance_uid: str | None = None,
    modality: str = "CT",
    series_number: int = 1,
) -> list[Dataset]:
    """Wrap stored pixel slices into CT Image Storage datasets.

    ``stored`` is ``(slices, rows, columns)`` with slice 0 the most inferior and
    columns along +x; ``grid`` holds the voxel-centre coordinates ``(xs, ys, zs)``.
    With ``flip_left_right`` the columns are stored from the patient's left to right
    (row direction ``[-1, 0, 0]``). UIDs derive from ``uid_name``, the seed, the grid
    and ``uid_variant``.
    """
    xs, ys, z_values = grid
    if flip_left_right:
        stored = stored[:, :, ::-1]
    origin_xy = (float(xs[-1] if flip_left_right else xs[0]), float(ys[0]))
    zs = [float(v) for v in z_values]
    row_direction = (-1.0 if flip_left_right else 1.0, 0.0, 0.0)
    n_slices, rows, columns = stored.shape
    uid_entropy = [
        uid_name,
        str(seed),
        f"{n_slices}x{rows}x{columns}",
        f"{pixel_spacing_mm}/{slice_thickness_mm}",
        uid_variant,
    ]
    study_uid = study_instance_uid or pydicom.uid.generate_uid(entropy_srcs=[*uid_entropy, "study"])
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[*uid_entropy, "series"])
    frame_uid = pydicom.uid.generate_uid(entropy_srcs=[*uid_entropy, "frame-of-reference"])
    datasets: list[Dataset] = []
    for instance_number in range(1, n_slices + 1):
        k = n_slices - instance_number  # instance 1 is the most superior slice
        sop_uid = pydicom.uid.generate_uid(entropy_srcs=[*uid_entropy, "sop", str(k)])
        ds = new_instance(CTImageStorage, sop_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240101"
        ds.StudyTime = "090000"
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "090100"
        ds.AccessionNumber = f"SYN{seed:06d}"
        ds.Modality = modality
        ds.Manufacturer = "ainode synthetic"
        ds.ManufacturerModelName = "chest phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic chest CT"
        ds.SeriesDescription = series_description
        ds.PatientName = "PHANTOM^CHEST"
        ds.PatientID = f"PHANTOM{seed:04d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{slice_thickness_mm:g}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance_number
        ds.ImagePositionPatient = [f"{origin_xy[0]:g}", f"{origin_xy[1]:g}", f"{zs[k]:g}"]
        ds.ImageOrientationPatient = [*(f"{v:g}" for v in row_direction), "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{zs[k]:g}"
        ds.PixelSpacing = [f"{pixel_spacing_mm:g}", f"{pixel_spacing_mm:g}"]
        set_grayscale_pixels(ds, stored[k], bits_stored=12)
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        datasets.append(ds)
    return datasets


def write_series(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    """Write one DICOM file per instance (``CT_<instance>.dcm``) and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"CT_{int(ds.InstanceNumber):04d}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
