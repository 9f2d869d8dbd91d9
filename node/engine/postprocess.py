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
    for label, keep in components.items():
        if keep < 1:
            raise ValueError(f"label {label}: keep at least one component, not {keep}")
    cleaned = label_map.copy()
    if not components or label_map.size == 0:
        return cleaned
    structure = np.ones((3,) * label_map.ndim, dtype=bool)
    # One pass finds every label's bounding box and each label is labelled inside its own
    # box: the same components in the same order as on the whole grid, at a fraction of
    # the cost when an organ is compact (the clean-up was 5.4 s of a 6.7-s ct_organs run
    # on a GPU for 300 x 512 x 512).
    integer = label_map.dtype.kind in "ui"
    boxes = ndimage.find_objects(label_map, max(components)) if integer else []
    whole = tuple(slice(None) for _ in label_map.shape)
    for label, keep in components.items():
        if integer and 0 < label <= len(boxes):
            box = boxes[label - 1]
            if box is None:  # the label is absent
                continue
        else:
            box = whole
        crop = label_map[box]
        parts, count = ndimage.label(crop == label, structure=structure)
        if count <= keep:
            continue
        sizes = np.bincount(parts.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:keep] + 1
        removed = np.ones(count + 1, dtype=bool)
        removed[0] = False
        removed[kept] = False
        cleaned[box][removed[parts]] = fill
    return cleaned
