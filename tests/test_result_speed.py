"""The faster measurement and analysis paths give exactly what the plain ones gave.

``largest_axial_diameter_mm`` measures slices in order of their box's diagonal and stops
early; surface area and statistics run inside the segment's bounding box;
``segment_numbers_map`` counts labels with ``bincount`` and re-codes slice by slice.
Each is compared, value for value, with the straightforward computation it replaced.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from node.results.analysis import label_values
from node.results.measure import (
    _max_pairwise_distance,
    bounding_box,
    compute,
    outline_points,
    surface_area_mm2,
    value_statistic,
)


def _diameter_every_slice(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The diameter as computed before: every slice, whole slices, unique points."""
    best = math.nan
    scale = np.asarray([spacing[1], spacing[2]], dtype=np.float64)
    for index in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        points = outline_points(mask[index]) * scale
        diameter = _max_pairwise_distance(np.unique(points, axis=0))
        if math.isnan(best) or diameter > best:
            best = diameter
    return best


_spacing = st.tuples(
    st.sampled_from([0.5, 1.0, 2.5, 3.0]),
    st.sampled_from([0.3, 0.7, 1.0, 1.5]),
    st.sampled_from([0.3, 0.7, 1.0, 2.0]),
)


@st.composite
def _masks(draw: st.DrawFn) -> np.ndarray:
    """Blobs (ellipsoids, boxes) and noise on a small grid, sometimes empty."""
    shape = draw(st.tuples(st.integers(1, 6), st.integers(1, 20), st.integers(1, 20)))
    mask = np.zeros(shape, dtype=bool)
    z, y, x = np.indices(shape)
    for _ in range(draw(st.integers(0, 3))):
        centre = [draw(st.floats(0, n - 1)) for n in shape]
        radii = [draw(st.floats(0.4, n)) for n in shape]
        mask |= (
            sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii, strict=True)) <= 1.0
        )
    if draw(st.booleans()):
        mask |= draw(arrays(np.bool_, shape, elements=st.booleans())) & draw(
            arrays(np.bool_, shape, elements=st.booleans())
        )
    return mask


@settings(max_examples=200, deadline=None)
@given(_masks(), _spacing)
def test_measurements_equal_the_whole_volume_computation(
    mask: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    values = np.random.default_rng(int(mask.sum())).normal(0, 100, mask.shape).astype(np.float32)
    diameter = compute("largest_axial_diameter", "mm", mask, values, spacing)
    expected = _diameter_every_slice(mask, spacing)
    assert diameter == expected or (math.isnan(diameter) and math.isnan(expected))
    assert compute("surface_area", "mm2", mask, values, spacing) == surface_area_mm2(mask, spacing)
    for statistic in ("mean", "min", "max", "std"):
        got = compute(statistic, "[hnsf'U]", mask, values, spacing)
        want = value_statistic(values, mask, statistic)
        assert got == want or (math.isnan(got) and math.isnan(want))


def test_bounding_box_holds_every_voxel() -> None:
    mask = np.zeros((5, 6, 7), dtype=bool)
    assert bounding_box(mask) is None
    mask[1, 2, 3] = mask[3, 4, 1] = True
    assert bounding_box(mask) == (slice(1, 4), slice(2, 5), slice(1, 4))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.bool_, np.int16, np.int64])
def test_label_values_are_the_distinct_values(dtype: type) -> None:
    rng = np.random.default_rng(3)
    high = 2 if dtype is np.bool_ else 60
    label_map = rng.integers(0, high, (4, 9, 11)).astype(dtype)
    label_map[label_map == 7] = 0
    if dtype is np.uint16:
        label_map[0, 0, 0] = 65535
    assert label_values(label_map).tolist() == np.unique(label_map).tolist()
    assert label_values(np.zeros((0, 3, 3), dtype=dtype)).tolist() == []
