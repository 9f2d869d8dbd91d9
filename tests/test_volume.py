"""Volume assembly: ordering, rescaling, geometry checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from node.contract.assemble import assemble_volume, load_volume
from node.errors import VolumeError
from tools.synthetic.chest_ct import make_chest_ct, write_series


@pytest.fixture(scope="module")
def series():
    datasets, _ = make_chest_ct(n_slices=24, rows=64, columns=64, seed=9)
    return datasets


def test_slices_are_sorted_along_the_normal_whatever_the_order(series):
    shuffled = list(reversed(series))
    shuffled[3], shuffled[10] = shuffled[10], shuffled[3]
    volume = assemble_volume(shuffled)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z)
    assert volume.shape == (24, 64, 64)
    assert volume.spacing == pytest.approx((3.0, 1.5, 1.5))
    # Rescaled to HU: outside the body is air.
    assert volume.array[0, 0, 0] == pytest.approx(-1000, abs=100)
    assert "PixelData" not in volume.datasets[0]


def test_affine_maps_voxels_to_patient_positions(series):
    volume = assemble_volume(series)
    k = 5
    ds = volume.datasets[k]
    position = volume.affine @ np.array([7, 3, k, 1.0])  # column 7, row 3, slice k
    expected = np.array([float(v) for v in ds.ImagePositionPatient])
    expected += 7 * 1.5 * np.array([1, 0, 0]) + 3 * 1.5 * np.array([0, 1, 0])
    assert position[:3] == pytest.approx(expected)


def test_localizers_are_dropped(series):
    localizer = copy.deepcopy(series[0])
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    volume = assemble_volume([localizer, *series])
    assert volume.shape[0] == 24


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: s.pop(10), "slice spacing is not uniform"),
        (lambda s: s.append(copy.deepcopy(s[4])), "same slice position"),
        (lambda s: setattr(s[2], "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "orientations"),
        (lambda s: setattr(s[2], "PixelSpacing", [0.7, 0.7]), "pixel spacings"),
        (lambda s: delattr(s[2], "ImagePositionPatient"), "lacks ImagePositionPatient"),
    ],
)
def test_inconsistent_geometry_is_refused(series, breakage, message):
    broken = [copy.deepcopy(ds) for ds in series]
    breakage(broken)
    with pytest.raises(VolumeError, match=message):
        assemble_volume(broken)


def test_unreadable_file_is_named(series, tmp_path):
    paths = write_series(series, tmp_path)
    paths[3].write_bytes(b"not dicom at all")
    with pytest.raises(VolumeError, match=paths[3].name):
        load_volume(paths)
