"""Per-label statistics on a small hand-made volume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.contract.volume import Volume
from node.engine import measure
from node.engine.measure import label_statistics
from node.errors import PluginError


def _volume(array: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    return Volume(array=array, spacing=spacing, affine=affine, datasets=())


def test_volume_and_mean_per_label() -> None:
    array = np.zeros((4, 5, 6), dtype=np.float32)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[0:2, 0:5, 0:2] = 1  # 20 voxels
    array[labels == 1] = -800.0
    array[0, 0, 0] = -700.0
    labels[3, 4, 5] = 2
    array[3, 4, 5] = 50.0
    stats = label_statistics(_volume(array, (2.0, 1.0, 0.5)), labels, [1, 2, 3])
    assert stats[1]["voxel_count"] == 20
    assert stats[1]["volume_cm3"] == pytest.approx(20 * 1.0 / 1000)  # 1 mm3 voxels
    assert stats[1]["mean"] == pytest.approx((19 * -800 - 700) / 20)
    assert stats[2] == {"voxel_count": 1, "volume_cm3": 0.001, "mean": 50.0, "std": 0.0}
    assert stats[3]["volume_cm3"] == 0.0
    assert math.isnan(stats[3]["mean"])


def test_shape_mismatch_is_an_error() -> None:
    volume = _volume(np.zeros((2, 3, 4), dtype=np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(PluginError, match="shape"):
        label_statistics(volume, np.zeros((2, 3, 5), dtype=np.uint8), [1])


def _reference(array: np.ndarray, label_map: np.ndarray, label: int) -> tuple[float, ...]:
    values = array[label_map == label]
    if not values.size:
        return (0.0, math.nan, math.nan)
    return (
        float(values.size),
        float(values.mean(dtype=np.float64)),
        float(values.std(dtype=np.float64)),
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
def test_many_labels_measured_in_their_boxes_give_the_whole_volume_values(dtype) -> None:
    """Above FULL_PASS_LABELS labels each is measured inside its bounding box: the same
    voxels in the same order, so the same numbers to the last bit."""
    rng = np.random.default_rng(7)
    array = rng.normal(0.0, 300.0, (40, 48, 56)).astype(np.float32)
    label_map = np.zeros(array.shape, dtype=dtype)
    for label in range(1, 21):  # compact blobs, plus a few stray voxels of each label
        z, y, x = rng.integers(0, 30), rng.integers(0, 38), rng.integers(0, 46)
        label_map[z : z + 10, y : y + 10, x : x + 10] = label
        label_map[tuple(rng.integers(0, s, 3) for s in array.shape)] = label
    if np.dtype(dtype).kind == "i":
        label_map[0, 0, :5] = -3  # never boxed: measured over the whole volume
    array[label_map == 4] = np.nan  # NaN stays NaN
    asked = [*range(0, 23), 300, -3]  # 0 (background), absent labels, a negative one
    stats = label_statistics(_volume(array, (1.0, 1.0, 1.0)), label_map, asked)
    assert len(asked) > measure.FULL_PASS_LABELS
    for label in asked:
        got = stats[label]
        expected = _reference(array, label_map, label)
        assert got["voxel_count"] == expected[0], label
        np.testing.assert_equal((got["mean"], got["std"]), expected[1:], err_msg=str(label))
    assert math.isnan(stats[4]["mean"]) and stats[4]["voxel_count"] > 0
    assert stats[300]["voxel_count"] == 0 and stats[21]["volume_cm3"] == 0.0
