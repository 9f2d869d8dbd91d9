"""Generic per-label statistics of a label map on its source volume."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np

from node.contract.volume import Volume
from node.errors import PluginError

log = logging.getLogger(__name__)


def label_statistics(
    volume: Volume, label_map: np.ndarray, labels: Iterable[int]
) -> dict[int, dict[str, float]]:
    """Volume and real-world value statistics of each label.

    Parameters
    ----------
    volume
        The source volume; its ``array`` holds real-world values (HU for CT).
    label_map
        Integer array shaped like ``volume.array``.
    labels
        Label values to measure.

    Returns
    -------
    dict
        ``{label: {"voxel_count", "volume_cm3", "mean", "std"}}``. The volume is
        the voxel count times the voxel volume; ``mean``/``std`` are over the
        label's voxels (NaN for an empty label, whose volume is 0).

    Raises
    ------
    PluginError
        If the label map does not have the volume's shape.
    """
    if label_map.shape != volume.array.shape:
        raise PluginError(
            f"label map shape {label_map.shape} differs from volume shape {volume.array.shape}"
        )
    voxel_cm3 = volume.voxel_volume_mm3 / 1000.0
    statistics: dict[int, dict[str, float]] = {}
    for label in labels:
        values = volume.array[label_map == label]
        count = int(values.size)
        if count:
            mean = float(values.mean(dtype=np.float64))
            std = float(values.std(dtype=np.float64))
        else:
            mean = std = math.nan
        statistics[int(label)] = {
            "voxel_count": float(count),
            "volume_cm3": count * voxel_cm3,
            "mean": mean,
            "std": std,
        }
    return statistics
