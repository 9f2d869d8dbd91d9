"""The fast measurements give the values of the implementations they replaced, kept
here as the reference: bit for bit.

The largest axial diameter used to take every outline midpoint of every slice whose
bounding box could hold a larger one; now only the points that can be hull vertices,
and only the slices whose widths along 16 directions could.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import ConvexHull, QhullError

from node.results import measure


def _max_pairwise_distance(points: np.ndarray) -> float:
    if len(points) < 2:
        return 0.0
    if len(points) > 8:
        with contextlib.suppress(QhullError):
            points = points[ConvexHull(points).vertices]
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


def _reference_diameter(
    mask: np.ndarray, spacing: tuple[float, float, float], origin: tuple[int, int]
) -> float:
    """Round 3's ``largest_axial_diameter_mm``: all outline points, box-diagonal bounds."""
    rows_in = np.any(mask, axis=2)
    columns_in = np.any(mask, axis=1)
    present = np.flatnonzero(np.any(rows_in, axis=1))
    if present.size == 0:
        return math.nan

    def extent(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = np.argmax(occupied, axis=1)
        return first, occupied.shape[1] - np.argmax(occupied[:, ::-1], axis=1)

    row_first, row_end = extent(rows_in[present])
    column_first, column_end = extent(columns_in[present])
    bounds = np.hypot((row_end - row_first) * spacing[1], (column_end - column_first) * spacing[2])
    bounds = bounds * (1 + 1e-9) + 1e-9
    best = math.nan
    scale = np.asarray([spacing[1], spacing[2]], dtype=np.float64)
    for order in np.argsort(-bounds, kind="stable"):
        if not math.isnan(best) and bounds[order] <= best:
            break
        r0, r1 = int(row_first[order]), int(row_end[order])
        c0, c1 = int(column_first[order]), int(column_end[order])
        start = np.asarray([r0 + origin[0], c0 + origin[1]], dtype=np.float64)
        points = (measure.outline_points(mask[present[order], r0:r1, c0:c1]) + start) * scale
        diameter = _max_pairwise_distance(points)
        if math.isnan(best) or diameter > best:
            best = diameter
    return best


def _same(got: float, want: float) -> bool:
    return (math.isnan(got) and math.isnan(want)) or got == want


@st.composite
def _masks(draw: st.DrawFn) -> np.ndarray:
    """Empty, one voxel, several ellipses (components, holes), lines, sparse noise."""
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 24), st.integers(1, 24)))
    mask = np.zeros(shape, dtype=bool)
    z, y, x = np.indices(shape)
    for _ in range(draw(st.integers(0, 4))):
        centre = [draw(st.floats(-1, n)) for n in shape]
        radii = [draw(st.floats(0.3, n + 1)) for n in shape]
        inside = sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii, strict=True))
        mask[inside <= 1.0] = draw(st.booleans())
    if draw(st.booleans()):
        noise = draw(arrays(np.bool_, shape, elements=st.booleans()))
        keep = draw(arrays(np.bool_, shape, elements=st.booleans()))
        mask = np.where(keep, mask, noise)
    if draw(st.booleans()):
        mask[tuple(draw(st.integers(0, n - 1)) for n in shape)] = True
    return mask


_SPACINGS = st.tuples(
    st.sampled_from([0.5, 1.0, 2.5]),
    st.sampled_from([0.3, 0.7, 1.5, 1 / 3]),
    st.sampled_from([0.3, 1.0, 2.0, 0.1 + 0.2]),
)


@settings(max_examples=400, deadline=None)
@given(
    mask=_masks(),
    spacing=_SPACINGS,
    origin=st.tuples(st.integers(0, 300), st.integers(0, 300)),
)
def test_diameter_equals_reference(
    mask: np.ndarray, spacing: tuple[float, float, float], origin: tuple[int, int]
) -> None:
    got = measure.largest_axial_diameter_mm(mask, spacing, origin)
    assert _same(got, _reference_diameter(mask, spacing, origin)), got


def test_diameter_of_special_cases() -> None:
    spacing = (1.0, 0.7, 0.4)
    empty = np.zeros((3, 5, 6), dtype=bool)
    assert math.isnan(measure.largest_axial_diameter_mm(empty, spacing))
    one = empty.copy()
    one[1, 2, 3] = True  # one pixel: across its longer side
    got = measure.largest_axial_diameter_mm(one, spacing)
    assert got == _reference_diameter(one, spacing, (0, 0)) and abs(got - 0.7) < 1e-12
    line = empty.copy()
    line[2, 1, :] = True  # collinear outline: no hull, every pair
    assert measure.largest_axial_diameter_mm(line, spacing) == _reference_diameter(
        line, spacing, (0, 0)
    )
    assert math.isnan(measure.largest_axial_diameter_mm(np.zeros((2, 3, 0), bool), spacing))
    counts = np.zeros((1, 4, 5), dtype=np.uint8)  # a non-boolean mask: nonzero is inside
    counts[0, 1, 1:4] = (1, 3, 2)
    assert measure.largest_axial_diameter_mm(counts, spacing) == _reference_diameter(
        counts, spacing, (0, 0)
    )
    assert measure.surface_area_mm2(counts, spacing) == _reference_surface_area(counts, spacing)
    two = np.zeros((2, 40, 40), dtype=bool)
    two[0, 2:6, 2:6] = True  # two components on one slice: across both
    two[0, 30:38, 30:38] = True
    two[1, 10:20, 10:20] = True
    assert measure.largest_axial_diameter_mm(two, spacing, (7, 9)) == _reference_diameter(
        two, spacing, (7, 9)
    )


def test_diameter_of_a_disc() -> None:
    """A digitised disc of diameter 200 px measures 200 px (a large, many-sided hull)."""
    y, x = np.indices((220, 220))
    disc = ((y - 109.5) ** 2 + (x - 109.5) ** 2 <= 100**2)[None]
    got = measure.largest_axial_diameter_mm(disc, (1.0, 0.5, 0.5))
    assert got == _reference_diameter(disc, (1.0, 0.5, 0.5), (0, 0))
    assert abs(got - 100.0) < 0.5


def _reference_surface_area(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Round 3's ``surface_area_mm2``: one boolean comparison per lattice direction."""
    padded = np.pad(mask.astype(bool), 1)
    voxel = measure.voxel_volume_mm3(spacing)
    weights = measure.crofton_weights(spacing)
    total = 0.0
    for offset, weight in zip(measure.LATTICE_DIRECTIONS, weights, strict=True):
        here = tuple(
            slice(max(0, -o), padded.shape[axis] - max(0, o)) for axis, o in enumerate(offset)
        )
        there = tuple(
            slice(max(0, o), padded.shape[axis] - max(0, -o)) for axis, o in enumerate(offset)
        )
        transitions = int(np.count_nonzero(padded[here] != padded[there]))
        length = math.sqrt(sum((o * s) ** 2 for o, s in zip(offset, spacing, strict=True)))
        total += weight * transitions * voxel / length
    return 2.0 * total


@settings(max_examples=300, deadline=None)
@given(mask=_masks(), spacing=_SPACINGS)
def test_surface_area_equals_reference(
    mask: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    """Packed pair counts give the transitions' counts: the same area, bit for bit
    (column counts around multiples of 8 included)."""
    assert measure.surface_area_mm2(mask, spacing) == _reference_surface_area(mask, spacing)


def test_surface_area_across_byte_boundaries() -> None:
    for columns in (6, 7, 8, 9, 15, 16, 17):
        mask = np.zeros((3, 4, columns), dtype=bool)
        mask[1, 1:3, :] = True
        mask[0, 2, columns // 2 :] = True
        assert measure.surface_area_mm2(mask, (1.0, 0.7, 0.4)) == _reference_surface_area(
            mask, (1.0, 0.7, 0.4)
        )


@settings(max_examples=60, deadline=None)
@given(mask=_masks(), spacing=_SPACINGS)
def test_diameter_bounds_in_small_chunks(
    mask: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    """The slices' bounds computed a few slices at a time give the same diameter."""
    original = measure._PROJECTED_VALUES
    measure._PROJECTED_VALUES = 1  # one slice per chunk
    try:
        got = measure.largest_axial_diameter_mm(mask, spacing)
    finally:
        measure._PROJECTED_VALUES = original
    assert _same(got, _reference_diameter(mask, spacing, (0, 0)))
