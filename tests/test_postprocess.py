"""Connected-component clean-up of label maps (node/engine/postprocess.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from node.engine.postprocess import keep_largest_components


def test_keeps_the_n_largest_parts_and_fills_the_rest() -> None:
    labels = np.zeros((10, 20, 20), dtype=np.uint8)
    labels[1:4, 1:6, 1:6] = 3  # 75 voxels: the organ
    labels[6:8, 10:12, 10:12] = 3  # 8 voxels: a stray piece
    labels[1:3, 14:18, 14:18] = 5  # kidney 1 (32)
    labels[6:9, 14:18, 14:18] = 5  # kidney 2 (48)
    labels[9, 0, 0] = 5  # stray voxel
    cleaned = keep_largest_components(labels, {3: 1, 5: 2}, fill=1)
    assert cleaned.dtype == labels.dtype and cleaned.shape == labels.shape
    assert (cleaned == 3).sum() == 75
    assert (cleaned[6:8, 10:12, 10:12] == 1).all()
    assert (cleaned == 5).sum() == 80
    assert cleaned[9, 0, 0] == 1
    assert (labels == 3).sum() == 83  # the input is not modified


def test_diagonal_neighbours_are_one_part_and_unlisted_labels_stay() -> None:
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 4
    labels[2, 2, 2] = 2
    cleaned = keep_largest_components(labels, {4: 1})
    np.testing.assert_array_equal(cleaned, labels)


def test_zero_components_is_refused() -> None:
    with pytest.raises(ValueError, match="label 3"):
        keep_largest_components(np.zeros((2, 2), dtype=np.uint8), {3: 0})


def _whole_grid(labels: np.ndarray, components: dict[int, int], fill: int) -> np.ndarray:
    """The clean-up done the plain way, labelling each structure on the whole grid."""
    cleaned = labels.copy()
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for label, keep in components.items():
        parts, count = ndimage.label(labels == label, structure=structure)
        if count > keep:
            kept = np.argsort(np.bincount(parts.ravel())[1:])[::-1][:keep] + 1
            cleaned[(parts > 0) & ~np.isin(parts, kept)] = fill
    return cleaned


@pytest.mark.parametrize("seed", range(6))
def test_bounding_box_labelling_matches_the_whole_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = np.ones((18, 20, 22), dtype=np.uint8)
    for _ in range(40):  # blobs and specks of labels 2-5, some touching
        z, y, x = rng.integers(0, (16, 18, 20))
        labels[z : z + rng.integers(1, 4), y : y + rng.integers(1, 5), x : x + 3] = rng.integers(
            2, 6
        )
    components = {2: 2, 3: 1, 4: 1, 5: 2, 7: 1}  # 7 is absent
    expected = _whole_grid(labels, components, fill=1)
    assert np.array_equal(keep_largest_components(labels, components, fill=1), expected)
    assert np.array_equal(
        keep_largest_components(labels.astype(np.int16), components, fill=1), expected
    )
