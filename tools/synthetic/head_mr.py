"""Small synthetic head MR series with a spherical "lesion" of known size.

An ellipsoidal brain (signal 600) with a brighter sphere (1200) inside, on a dark
background, with Gaussian noise; MR Image Storage, 16-bit unsigned, no rescale (as MR
usually is). ``orientation`` stores the slices axially (default) or coronally, so
result code is tested on a non-axial grid too. Deterministic for a given ``seed``.
Synthetic data only: the patient is ``PHANTOM^HEAD``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from tools.synthetic.instance import new_instance, set_grayscale_pixels

BRAIN_SIGNAL = 600.0
LESION_SIGNAL = 1200.0

#: (row direction, column direction, slice normal) in LPS per orientation.
_AXES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
}


@dataclass(frozen=True)
class HeadPhantomTruth:
    """The lesion: centre (LPS mm), radius (mm), volume (cm3); brain semi-axes (mm)."""

    lesion_center_mm: tuple[float, float, float]
    lesion_radius_mm: float
    brain_semi_axes_mm: tuple[float, float, float]

    @property
    def lesion_cm3(self) -> float:
        return 4.0 / 3.0 * math.pi * self.lesion_radius_mm**3 / 1000.0


def make_head_mr(
    n_slices: int = 24,
    rows: int = 64,
    columns: int = 64,
    pixel_spacing_mm: float = 3.0,
    slice_thickness_mm: float = 5.0,
    seed: int = 0,
    orientation: Literal["axial", "coronal"] = "axial",
    lesion_radius_mm: float = 18.0,
) -> tuple[list[Dataset], HeadPhantomTruth]:
    """Generate the series (one dataset per slice, in slice-normal order) and its truth."""
    rng = np.random.default_rng(seed)
    row_dir, col_dir, normal = (np.asarray(v) for v in _AXES[orientation])
    columns_mm = (np.arange(columns) - (columns - 1) / 2.0) * pixel_spacing_mm
    rows_mm = (np.arange(rows) - (rows - 1) / 2.0) * pixel_spacing_mm
    slices_mm = (np.arange(n_slices) - (n_slices - 1) / 2.0) * slice_thickness_mm
    k, r, c = np.meshgrid(slices_mm, rows_mm, columns_mm, indexing="ij")
    points = k[..., None] * normal + r[..., None] * col_dir + c[..., None] * row_dir
    half = min(columns * pixel_spacing_mm, rows * pixel_spacing_mm, n_slices * slice_thickness_mm)
    axes = (0.42 * half, 0.45 * half, 0.4 * half)
    brain = ((points / np.asarray(axes)) ** 2).sum(axis=-1) <= 1.0
    center = (0.2 * axes[0], -0.1 * axes[1], 0.0)
    radius = min(lesion_radius_mm, 0.45 * min(axes))
    lesion = ((points - np.asarray(center)) ** 2).sum(axis=-1) <= radius**2
    signal = np.where(brain, BRAIN_SIGNAL, 20.0)
    signal[lesion] = LESION_SIGNAL
    signal += rng.normal(0.0, 25.0, size=signal.shape)
    stored = np.clip(np.rint(signal), 0, 4095).astype(np.uint16)

    entropy = ["ainode-head-mr-phantom", str(seed), f"{n_slices}x{rows}x{columns}", orientation]
    study_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"])
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"])
    frame_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "frame"])
    datasets = []
    for index in range(n_slices):
        origin = slices_mm[index] * normal + rows_mm[0] * col_dir + columns_mm[0] * row_dir
        sop_uid = pydicom.uid.generate_uid(entropy_srcs=[*entropy, "sop", str(index)])
        ds = new_instance(MRImageStorage, sop_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = "100000"
        ds.SeriesTime = ds.ContentTime = "100100"
        ds.AccessionNumber = f"SYNMR{seed:04d}"
        ds.Modality = "MR"
        ds.Manufacturer = "ainode synthetic"
        ds.ManufacturerModelName = "head phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic head MR"
        ds.SeriesDescription = f"T1 {orientation} phantom"
        ds.PatientName = "PHANTOM^HEAD"
        ds.PatientID = f"PHANTOMMR{seed:04d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTrainLength = 1
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = f"{slice_thickness_mm:g}"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 3
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PixelSpacing = [f"{pixel_spacing_mm:g}", f"{pixel_spacing_mm:g}"]
        set_grayscale_pixels(ds, stored[index], bits_stored=12)
        datasets.append(ds)
    truth = HeadPhantomTruth(
        lesion_center_mm=(float(center[0]), float(center[1]), float(center[2])),
        lesion_radius_mm=float(radius),
        brain_semi_axes_mm=(float(axes[0]), float(axes[1]), float(axes[2])),
    )
    return datasets, truth
