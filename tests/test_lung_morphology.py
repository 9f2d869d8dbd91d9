"""Torch morphology of ct_lungs against scipy.ndimage on random and structured masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from plugins.ct_lungs.morphology import (
    PLANAR_AXES,
    VOLUME_AXES,
    close,
    dilate,
    downsample_mean,
    erode,
    fill_holes_planar,
    label_components,
    touching_border,
    upsample_nearest,
)
from plugins.ct_lungs.segmentation import reorientation_from_affine


def _structure(axes: tuple[int, ...]) -> np.ndarray:
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, 1, 1] = True
    for axis in axes:
        index = [1, 1, 1]
        for offset in (0, 2):
            index[axis] = offset
            structure[tuple(index)] = True
    return structure


def _same_partition(labels: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> bool:
    pairs = np.unique(np.stack([labels[mask], reference[mask]]), axis=1)
    return pairs.shape[1] == len(np.unique(labels[mask])) == len(np.unique(reference[mask]))


@pytest.mark.parametrize("axes", [VOLUME_AXES, PLANAR_AXES])
@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_labels_match_scipy(axes: tuple[int, ...], density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((12, 40, 37)) < density
    labels = label_components(torch.from_numpy(mask), axes).numpy()
    reference, count = ndimage.label(mask, _structure(axes))
    assert (labels[~mask] == 0).all()
    assert len(np.unique(labels[mask])) == count
    assert _same_partition(labels, reference, mask)


def test_labelling_a_long_spiral_converges() -> None:
    # A one-voxel-wide path winding through the volume: worst case for propagation.
    mask = np.zeros((4, 31, 31), dtype=bool)
    mask[:, ::2, :] = True
    mask[:, 1::4, -1] = True
    mask[:, 3::4, 0] = True
    mask[1:3] = False
    labels = label_components(torch.from_numpy(mask)).numpy()
    reference, count = ndimage.label(mask, _structure(VOLUME_AXES))
    assert count == 2
    assert _same_partition(labels, reference, mask)


def test_empty_mask_has_no_labels() -> None:
    labels = label_components(torch.zeros((3, 4, 5), dtype=torch.bool))
    assert not labels.any()


def test_dilate_erode_close_match_scipy() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((10, 30, 30)) < 0.1
    cube = np.ones((3, 3, 3), dtype=bool)
    tensor = torch.from_numpy(mask)
    assert np.array_equal(dilate(tensor).numpy(), ndimage.binary_dilation(mask, cube))
    dense = ~mask
    expected = ndimage.binary_erosion(dense, cube, border_value=1)
    assert np.array_equal(erode(torch.from_numpy(dense)).numpy(), expected)
    closed = close(tensor).numpy()
    assert (closed >= mask).all()


def test_fill_holes_planar_fills_enclosed_regions_only() -> None:
    mask = np.zeros((2, 9, 9), dtype=bool)
    mask[:, 2:7, 2:7] = True
    mask[:, 4, 4] = False  # enclosed hole
    mask[0, 2, 4] = False  # notch open to the outside
    filled = fill_holes_planar(torch.from_numpy(mask)).numpy()
    assert filled[:, 4, 4].all()
    assert not filled[0, 2, 4]
    assert not filled[:, 0, 0].any()


def test_touching_border_keeps_only_connected_to_sides() -> None:
    mask = np.zeros((3, 10, 10), dtype=bool)
    mask[:, 0:2, 3] = True  # touches the row border
    mask[:, 5, 5] = True  # enclosed
    result = touching_border(torch.from_numpy(mask)).numpy()
    assert result[:, 0:2, 3].all()
    assert not result[:, 5, 5].any()


def test_downsample_and_upsample_round_trip_shape() -> None:
    values = torch.arange(5 * 7 * 9, dtype=torch.float32).reshape(5, 7, 9)
    coarse = downsample_mean(values, (1, 2, 3))
    assert coarse.shape == (5, 4, 3)
    assert float(coarse[0, 0, 0]) == pytest.approx(float(values[0, 0:2, 0:3].mean()))
    assert upsample_nearest(coarse, (1, 2, 3), values.shape).shape == values.shape


def test_reorientation_brings_any_axial_storage_to_lps_order() -> None:
    # Columns run to the patient's right (-x), rows anterior (-y), slices downwards (-z).
    affine = np.diag([-0.7, -0.8, -2.0, 1.0])
    reorientation, obliquity = reorientation_from_affine(affine)
    assert obliquity == pytest.approx(0.0)
    assert reorientation.permutation == (0, 1, 2)
    assert reorientation.flips == (0, 1, 2)
    assert reorientation.canonical_spacing((2.0, 0.8, 0.7)) == (2.0, 0.8, 0.7)
    array = torch.arange(24).reshape(2, 3, 4)
    canonical = reorientation.to_canonical(array)
    assert canonical[0, 0, 0] == array[-1, -1, -1]
    assert torch.equal(reorientation.from_canonical(canonical), array)
    # Rows along x and columns along y (transposed storage).
    transposed = np.zeros((4, 4))
    transposed[:3, 0] = [0, 0.5, 0]  # column index moves along +y
    transposed[:3, 1] = [0.6, 0, 0]  # row index moves along +x
    transposed[:3, 2] = [0, 0, 1.0]
    transposed[3, 3] = 1
    reorientation, _ = reorientation_from_affine(transposed)
    assert reorientation.permutation == (0, 2, 1)
    assert reorientation.canonical_spacing((1.0, 0.6, 0.5)) == (1.0, 0.5, 0.6)
