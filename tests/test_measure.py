"""Per-label statistics on a small hand-made volume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.contract.volume import Volume
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
