"""Label-map clean-up after inference (array logic only, no I/O).

Organ models make small false positives far from the organ (e.g. liver-like tissue at
the ends of a scan). An organ has a known number of connected parts — one liver, two
lungs, two kidneys — so every component beyond the largest ``n`` is reassigned.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage


def keep_largest_components(
    label_map: np.ndarray, components: Mapping[int, int], fill: int = 0
) -> np.ndarray:
    """Keep the ``n`` largest 26-connected components of each listed label.

    Parameters
    ----------
    label_map
        Integer label map (any number of dimensions).
    components
        ``{label value: n}``: how many connected parts that structure has.
        Labels not listed are left alone.
    fill
        Label value given to the voxels removed.

    Returns
    -------
    numpy.ndarray
        A cleaned copy with the same shape and dtype.
    """
    cleaned = label_map.copy()
    structure = np.ones((3,) * label_map.ndim, dtype=bool)
    for label, keep in components.items():
        if keep < 1:
            raise ValueError(f"label {label}: keep at least one component, not {keep}")
        parts, count = ndimage.label(label_map == label, structure=structure)
        if count <= keep:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:keep] + 1
        cleaned[(parts > 0) & ~np.isin(parts, kept)] = fill
    return cleaned
