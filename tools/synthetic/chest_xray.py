"""Synthetic PA chest radiographs with ground truth (lungs, heart, nodules).

A frontal projection drawn from simple shapes: a soft-tissue thorax, two lung
fields (dark: high transmission), a heart silhouette between them shifted to the
patient's left (the image right in a PA view), a spine, faint ribs and diaphragm
domes, optional round nodules in the lungs, and noise. Pixel values are in the
MONOCHROME2 sense (bone bright, lung dark); ``photometric="MONOCHROME1"`` stores
them inverted, as many CR/DX units do.

The truth gives every mask, each nodule's centre, radius and box in DICOM
SCOORD image coordinates (``x`` along columns, ``y`` along rows, pixel
``(r, c)`` covering ``[c, c + 1] x [r, r + 1]``), and the cardiothoracic ratio,
so classifiers ("nodule present", "cardiomegaly") and detectors can be scored.
Deterministic for a given ``seed``. Synthetic data only: the patient is
``PHANTOM^CHEST XRAY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tools.synthetic.projection import SeriesIdentity, cr_image, dx_image

#: Cardiothoracic ratio above which the heart is enlarged (the usual PA threshold).
CARDIOMEGALY_RATIO = 0.5


@dataclass(frozen=True)
class Nodule:
    """A round nodule: centre ``(x, y)`` and radius in pixels (SCOORD image coordinates)."""

    center: tuple[float, float]
    radius_px: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` around the nodule."""
        x, y = self.center
        r = self.radius_px
        return (x - r, y - r, x + r, y + r)


@dataclass(frozen=True)
class ChestXrayTruth:
    """What was drawn.

    Attributes
    ----------
    right_lung, left_lung, heart
        Boolean masks ``(rows, columns)``; the patient's right lung is on the image left.
    nodules
        Every nodule drawn (possibly none).
    cardiothoracic_ratio
        Widest heart width over widest inner thorax width.
    """

    right_lung: np.ndarray
    left_lung: np.ndarray
    heart: np.ndarray
    nodules: tuple[Nodule, ...]
    cardiothoracic_ratio: float

    @property
    def has_nodule(self) -> bool:
        return bool(self.nodules)

    @property
    def cardiomegaly(self) -> bool:
        return self.cardiothoracic_ratio > CARDIOMEGALY_RATIO


def _ellipse(
    rr: np.ndarray, cc: np.ndarray, center: tuple[float, float], axes: tuple[float, float]
) -> np.ndarray:
    return ((rr - center[0]) / axes[0]) ** 2 + ((cc - center[1]) / axes[1]) ** 2 <= 1.0


def chest_xray_pixels(
    rows: int = 256,
    columns: int = 256,
    *,
    nodules: int = 0,
    cardiomegaly: bool = False,
    seed: int = 0,
    bits_stored: int = 12,
) -> tuple[np.ndarray, ChestXrayTruth]:
    """The radiograph as unsigned integers (MONOCHROME2 sense) and its truth."""
    if rows < 64 or columns < 64:
        raise ValueError(f"a chest radiograph needs at least 64x64 pixels, got {rows}x{columns}")
    if nodules < 0:
        raise ValueError(f"nodules must be 0 or more, got {nodules}")
    rng = np.random.default_rng(seed)
    rr, cc = np.meshgrid(np.arange(rows) + 0.5, np.arange(columns) + 0.5, indexing="ij")
    mid_c = columns / 2.0 + rng.uniform(-0.02, 0.02) * columns
    thorax_axes = (0.46 * rows, rng.uniform(0.40, 0.44) * columns)
    thorax = _ellipse(rr, cc, (0.52 * rows, mid_c), thorax_axes)
    lung_axes = (rng.uniform(0.30, 0.33) * rows, rng.uniform(0.15, 0.17) * columns)
    lung_row = 0.45 * rows
    offset = 0.19 * columns
    right_lung = _ellipse(rr, cc, (lung_row, mid_c - offset), lung_axes)
    left_lung = _ellipse(rr, cc, (lung_row, mid_c + offset), lung_axes)
    ratio_target = rng.uniform(0.56, 0.64) if cardiomegaly else rng.uniform(0.36, 0.46)
    inner_width = 2.0 * (offset + lung_axes[1])
    heart_half = 0.5 * ratio_target * inner_width
    heart_center = (0.62 * rows, mid_c + 0.25 * heart_half)
    heart = _ellipse(rr, cc, heart_center, (0.16 * rows, heart_half))
    right_lung &= ~heart
    left_lung &= ~heart
    # Diaphragm domes: below them the lungs are hidden by the abdomen.
    for lung, centre_c in ((right_lung, mid_c - offset), (left_lung, mid_c + offset)):
        dome = 0.72 * rows - 0.05 * rows * np.cos((cc - centre_c) / lung_axes[1] * np.pi / 2)
        lung &= rr < dome

    signal = np.full((rows, columns), 150.0)
    signal[thorax] = 1800.0
    signal[right_lung | left_lung] = 700.0
    signal[heart] = 2000.0
    spine = np.abs(cc - mid_c) < 0.045 * columns
    signal[spine & thorax] += 600.0
    ribs = np.sin((rr + 0.15 * np.abs(cc - mid_c)) / rows * 2 * np.pi * 9) > 0.85
    signal[ribs & (right_lung | left_lung)] += 350.0

    drawn: list[Nodule] = []
    lungs = right_lung | left_lung
    candidates = np.argwhere(lungs)
    for _ in range(nodules):
        radius = float(rng.uniform(0.02, 0.035) * min(rows, columns))
        for _attempt in range(200):
            r, c = candidates[rng.integers(len(candidates))]
            y, x = float(r) + 0.5, float(c) + 0.5
            disc = (rr - y) ** 2 + (cc - x) ** 2 <= radius**2
            apart = all(np.hypot(x - n.center[0], y - n.center[1]) > 3 * radius for n in drawn)
            if lungs[disc].all() and apart:
                break
        else:
            raise ValueError(f"no room for {nodules} separate nodules in the lungs")
        bump = np.exp(-((rr - y) ** 2 + (cc - x) ** 2) / (2 * (0.6 * radius) ** 2))
        signal += 900.0 * bump * disc
        drawn.append(Nodule(center=(x, y), radius_px=radius))

    signal += rng.normal(0.0, 25.0, size=signal.shape)
    stored = np.clip(np.rint(signal), 0, 2**bits_stored - 1).astype(np.uint16)

    heart_columns = np.flatnonzero(heart.any(axis=0))
    heart_width = float(heart_columns[-1] - heart_columns[0] + 1)
    truth = ChestXrayTruth(
        right_lung=right_lung,
        left_lung=left_lung,
        heart=heart,
        nodules=tuple(drawn),
        cardiothoracic_ratio=heart_width / inner_width,
    )
    return stored, truth


def make_chest_xray(
    rows: int = 256,
    columns: int = 256,
    *,
    pixel_spacing_mm: float = 1.4,
    nodules: int = 0,
    cardiomegaly: bool = False,
    seed: int = 0,
    modality: Literal["DX", "CR"] = "DX",
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    identity: SeriesIdentity | None = None,
) -> tuple[Dataset, ChestXrayTruth]:
    """A PA chest radiograph as a DX (For Presentation) or CR image, and its truth."""
    pixels, truth = chest_xray_pixels(
        rows, columns, nodules=nodules, cardiomegaly=cardiomegaly, seed=seed
    )
    if photometric == "MONOCHROME1":
        pixels = (4095 - pixels).astype(np.uint16)
    entropy = ["ainode-chest-xray", str(seed), f"{rows}x{columns}", str(nodules), modality]
    identity = identity or SeriesIdentity(
        patient_name="PHANTOM^CHEST XRAY",
        patient_id=f"PHANTOMCXR{seed:04d}",
        accession_number=f"SYNCXR{seed:04d}",
        study_description="Synthetic chest radiograph",
        series_description=f"Chest PA phantom ({modality})",
        study_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"]),
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"]),
        frame_of_reference_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "frame"]),
    )
    sop_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, identity.series_instance_uid])
    if modality == "CR":
        ds = cr_image(
            pixels,
            pixel_spacing_mm=pixel_spacing_mm,
            identity=identity,
            photometric=photometric,
            sop_instance_uid=sop_uid,
        )
    else:
        ds = dx_image(
            pixels,
            imager_pixel_spacing_mm=pixel_spacing_mm,
            identity=identity,
            photometric=photometric,
            sop_instance_uid=sop_uid,
        )
    return ds, truth
