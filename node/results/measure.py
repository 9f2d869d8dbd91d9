"""Measurements computed by the node from a label map and its volume (template ``compute:``).

Pure array logic (numpy/scipy), no DICOM. Arrays are ``(slices, rows, columns)`` with
voxel spacing ``(slice, row, column)`` in mm, as in :class:`~node.contract.volume.Volume`.

What each computation means:

``volume``
    voxel count times voxel volume.
``mean``, ``min``, ``max``, ``std``
    statistics of the volume's real-world values (HU for CT) over the segment's voxels
    (population standard deviation).
``largest_axial_diameter``
    the largest distance between two points of the segment's outline within one slice
    (the acquisition plane: axial for an axial series), over all slices. The outline
    runs through the midpoints of the edges between inside and outside pixels (where
    marching squares puts it), so a digitised disc of diameter *d* measures about *d*.
``surface_area``
    Cauchy-Crofton estimate from the number of inside/outside transitions along the
    13 lattice directions of the 3x3x3 neighbourhood, each weighted by the solid angle
    of its Voronoi cell on the unit sphere (computed for the actual voxel spacing). It
    is unbiased for isotropic surfaces, unlike counting voxel faces (+50 % on a sphere).

A computation on an empty segment gives NaN (the SR leaves it out) except ``volume``
(0) and ``surface_area`` (0).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy.spatial import ConvexHull, QhullError

log = logging.getLogger(__name__)

Spacing = tuple[float, float, float]

#: The 13 primitive lattice directions of the 3x3x3 neighbourhood (one of each ± pair).
LATTICE_DIRECTIONS: tuple[tuple[int, int, int], ...] = tuple(
    (a, b, c)
    for a, b, c in itertools.product((-1, 0, 1), repeat=3)
    if (a, b, c) > (0, 0, 0)  # lexicographically positive: one of each ± pair
)

#: Conversion from the base unit of each geometric computation to template units.
_UNIT_SCALE: dict[str, float] = {
    "mm3": 1.0,
    "cm3": 1e-3,
    "mL": 1e-3,
    "mm": 1.0,
    "cm": 0.1,
    "mm2": 1.0,
    "cm2": 1e-2,
}


def voxel_volume_mm3(spacing: Spacing) -> float:
    return float(spacing[0] * spacing[1] * spacing[2])


def volume_mm3(mask: np.ndarray, spacing: Spacing) -> float:
    """Voxel count times voxel volume."""
    return float(np.count_nonzero(mask)) * voxel_volume_mm3(spacing)


def value_statistic(values: np.ndarray, mask: np.ndarray, statistic: str) -> float:
    """``mean``/``min``/``max``/``std`` of ``values`` over ``mask`` (NaN when empty)."""
    selected = values[mask]
    if selected.size == 0:
        return math.nan
    functions: dict[str, Callable[[np.ndarray], float]] = {
        "mean": lambda a: float(a.mean(dtype=np.float64)),
        "min": lambda a: float(a.min()),
        "max": lambda a: float(a.max()),
        "std": lambda a: float(a.std(dtype=np.float64)),
    }
    return functions[statistic](selected)


def outline_points(mask2d: np.ndarray) -> np.ndarray:
    """Midpoints of the edges between inside and outside pixels, as ``(row, column)``.

    Pixel ``(r, c)`` has its centre at ``(r, c)``; an inside pixel whose upper
    neighbour is outside contributes ``(r - 0.5, c)``, and so on for the four sides
    (pixels beyond the image count as outside).
    """
    padded = np.pad(mask2d.astype(bool), 1)
    inside = padded[1:-1, 1:-1]
    points = []
    for d_row, d_col in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[
            1 + d_row : padded.shape[0] - 1 + d_row, 1 + d_col : padded.shape[1] - 1 + d_col
        ]
        rows, columns = np.nonzero(inside & ~neighbour)
        points.append(np.stack([rows + 0.5 * d_row, columns + 0.5 * d_col], axis=1))
    return np.concatenate(points).astype(np.float64)


def _max_pairwise_distance(points: np.ndarray) -> float:
    if len(points) < 2:
        return 0.0
    if len(points) > 8:
        # All points on a line: no hull, but the extremes are among the points anyway.
        with contextlib.suppress(QhullError):
            points = points[ConvexHull(points).vertices]
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


#: In-slice directions whose widths bound each slice's diameter from above.
_WIDTH_DIRECTIONS = 16
_DIRECTIONS = np.stack(
    [
        np.cos(np.arange(_WIDTH_DIRECTIONS) * math.pi / _WIDTH_DIRECTIONS),
        np.sin(np.arange(_WIDTH_DIRECTIONS) * math.pi / _WIDTH_DIRECTIONS),
    ]
)
#: The diameter is at most the largest width over those directions divided by this.
_WIDTH_TO_DIAMETER = 1.0 / math.cos(math.pi / (2 * _WIDTH_DIRECTIONS))
#: Projected coordinates computed at a time (8 bytes each).
_PROJECTED_VALUES = 2**20


def _first_last(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First and last True along the last axis, and whether there is one."""
    first = np.argmax(occupied, axis=-1)
    last = occupied.shape[-1] - 1 - np.argmax(occupied[..., ::-1], axis=-1)
    found = np.take_along_axis(occupied, first[..., None], axis=-1)[..., 0]
    return first, last, found


def hull_candidates(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outline midpoints of each slice that can be convex hull vertices, ``(row, column)``.

    On each line of constant row coordinate only the outline's first and last points
    can be hull vertices: on a whole row ``r``, the left edge of its first inside
    pixel and the right edge of its last; on the half row ``r - 0.5``, the first and
    last column where rows ``r - 1`` and ``r`` differ (an upper or lower edge).

    Returns
    -------
    points
        ``(slices, 4 * rows + 2, 2)`` half-integer coordinates within ``mask``.
    valid
        ``(slices, 4 * rows + 2)``: which points exist (an empty row has none; a half
        row with one differing column has one).
    """
    mask = np.asarray(mask, dtype=bool)  # argmax finds the first True, not a nonzero
    slices, rows, _ = mask.shape
    first, last, found = _first_last(mask)  # (slices, rows)
    padded = np.zeros((slices, rows + 2, mask.shape[2]), dtype=bool)
    padded[:, 1:-1] = mask
    differs = padded[:, 1:] ^ padded[:, :-1]  # half row r - 0.5 for r in 0..rows
    h_first, h_last, h_found = _first_last(differs)  # (slices, rows + 1)
    whole = np.broadcast_to(np.arange(rows, dtype=np.float64), (slices, rows))
    half = np.broadcast_to(np.arange(rows + 1, dtype=np.float64) - 0.5, (slices, rows + 1))
    row_coordinates = np.concatenate([whole, whole, half, half], axis=1)
    column_coordinates = np.concatenate(
        [first - 0.5, last + 0.5, h_first.astype(np.float64), h_last.astype(np.float64)], axis=1
    )
    valid = np.concatenate([found, found, h_found, h_found & (h_last != h_first)], axis=1)
    return np.stack([row_coordinates, column_coordinates], axis=-1), valid


def largest_axial_diameter_mm(
    mask: np.ndarray, spacing: Spacing, origin: tuple[int, int] = (0, 0)
) -> float:
    """Largest in-slice distance across the segment's outline, over all slices (NaN if empty).

    ``origin`` is the ``(row, column)`` of ``mask[:, 0, 0]`` in the whole slice when
    ``mask`` is a box of it: the outline's coordinates are those of the whole slice, so
    the distances are computed from the very same numbers.

    Only the outline points that can be hull vertices are kept (:func:`hull_candidates`,
    for every slice at once). Their widths along 16 directions bound each slice's
    diameter from above (within 0.5 %); slices are measured exactly (convex hull, then
    every pair of its vertices) in decreasing order of that bound until none left can
    beat the largest diameter found. The extreme pair is among the vertices either way,
    and each distance is computed from the same coordinates: the value of measuring
    every outline point of every slice.
    """
    if mask.size == 0:
        return math.nan
    points, valid = hull_candidates(mask)
    present = np.flatnonzero(valid.any(axis=1))
    if present.size == 0:
        return math.nan
    scale = np.asarray([spacing[1], spacing[2]], dtype=np.float64)
    start = np.asarray(origin, dtype=np.float64)
    # Whole-slice coordinates, as exact half-integers, then in mm.
    millimetres = (points[present] + start) * scale
    valid = valid[present]
    # Missing points take the place of a slice's first point: the same widths.
    first = millimetres[np.arange(len(present)), np.argmax(valid, axis=1)]
    filled = np.where(valid[:, :, None], millimetres, first[:, None, :]).transpose(0, 2, 1)
    bounds = np.empty(len(present))
    step = max(1, _PROJECTED_VALUES // (millimetres.shape[1] * _WIDTH_DIRECTIONS))
    for start_slice in range(0, len(present), step):
        chunk = slice(start_slice, start_slice + step)
        projections = _DIRECTIONS.T @ filled[chunk]  # (slices, directions, points)
        widths = projections.max(axis=2) - projections.min(axis=2)
        bounds[chunk] = widths.max(axis=1) * _WIDTH_TO_DIAMETER
    bounds = bounds * (1 + 1e-9) + 1e-9  # stays an upper bound under rounding
    best = math.nan
    for order in np.argsort(-bounds, kind="stable"):
        if not math.isnan(best) and bounds[order] <= best:
            break
        diameter = _max_pairwise_distance(millimetres[order][valid[order]])
        if math.isnan(best) or diameter > best:
            best = diameter
    return best


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest ``(slices, rows, columns)`` box holding every voxel of ``mask``."""
    slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if slices.size == 0:
        return None
    first, last = int(slices[0]), int(slices[-1]) + 1
    plane = np.any(mask[first:last], axis=0)
    rows = np.flatnonzero(np.any(plane, axis=1))
    columns = np.flatnonzero(np.any(plane, axis=0))
    return (
        slice(first, last),
        slice(int(rows[0]), int(rows[-1]) + 1),
        slice(int(columns[0]), int(columns[-1]) + 1),
    )


@functools.lru_cache(maxsize=64)  # one entry per voxel spacing: bounded
def crofton_weights(spacing: Spacing, samples: int = 40_000) -> tuple[float, ...]:
    """Solid-angle share of each lattice direction's Voronoi cell on the unit sphere.

    Estimated with a deterministic Fibonacci lattice of ``samples`` points; the
    shares of ``d`` and ``-d`` are summed. They add up to 1.
    """
    directions = np.asarray(LATTICE_DIRECTIONS, dtype=np.float64) * np.asarray(spacing)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    both = np.concatenate([directions, -directions])
    index = np.arange(samples) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / samples)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    sphere = np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1
    )
    nearest = np.argmax(sphere @ both.T, axis=1) % len(directions)
    counts = np.bincount(nearest, minlength=len(directions))
    return tuple(float(c) / samples for c in counts)


def surface_area_mm2(mask: np.ndarray, spacing: Spacing) -> float:
    """Cauchy-Crofton surface area estimate (see the module docstring).

    The inside/outside transitions along each direction are counted as
    ``2 * (voxels - pairs of inside voxels)``, the pairs on the mask padded with zeros
    and packed 64 columns to a word (bit ``j`` of word ``k`` is column ``64 k + j``), as
    one flat array: a step across rows or slices is a step across words, and a pair
    that wraps around a row or the mask's end has a padding voxel (no pair).
    """
    slices, rows, columns = mask.shape
    words = (columns + 2 + 63) // 64
    padded = np.zeros((slices + 2, rows + 2, 64 * words), dtype=bool)
    padded[1:-1, 1:-1, 1 : columns + 1] = mask
    voxels = int(np.count_nonzero(padded))
    packed = np.packbits(padded, axis=2, bitorder="little").view("<u8").reshape(-1)
    # Column + 1 in the same bit: the word shifted down, the next word's bit 0 on top.
    next_column = packed >> np.uint64(1)
    next_column[:-1] |= packed[1:] << np.uint64(63)
    voxel = voxel_volume_mm3(spacing)
    weights = crofton_weights(spacing)
    total = 0.0
    for offset, weight in zip(LATTICE_DIRECTIONS, weights, strict=True):
        # A column step of -1 counts the pairs of the opposite direction: the same.
        sign = -1 if offset[2] < 0 else 1
        step = sign * (offset[0] * (rows + 2) + offset[1]) * words
        other = next_column if offset[2] else packed
        size = packed.size - abs(step)
        here = packed[max(0, -step) :][:size]
        there = other[max(0, step) :][:size]
        pairs = int(np.bitwise_count(here & there).sum(dtype=np.int64))
        transitions = 2 * (voxels - pairs)
        length = math.sqrt(sum((o * s) ** 2 for o, s in zip(offset, spacing, strict=True)))
        total += weight * transitions * voxel / length
    return 2.0 * total


def largest_area_slice(mask: np.ndarray) -> int | None:
    """Index of the slice where the segment has the most pixels (first of ties); None if empty."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        return None
    return int(np.argmax(areas))


def compute(
    kind: str,
    unit: str,
    mask: np.ndarray,
    values: np.ndarray,
    spacing: Spacing,
    *,
    origin: tuple[int, int, int] = (0, 0, 0),
) -> float:
    """One template measurement of one segment, in the template's ``unit``.

    Parameters
    ----------
    kind
        The template's ``compute`` (``volume``, ``mean``…).
    unit
        The template's UCUM unit; geometric results are converted to it,
        statistics are in the units of ``values``.
    mask
        Boolean segment mask ``(slices, rows, columns)``.
    values
        Real-world values on the same grid.
    spacing
        Voxel spacing ``(slice, row, column)`` in mm.
    origin
        Index of ``mask[0, 0, 0]`` in the volume when ``mask`` and ``values`` are a box
        of it (the diameter is computed in whole-slice coordinates: the same value).
    """
    if kind == "volume":
        return volume_mm3(mask, spacing) * _UNIT_SCALE[unit]
    if kind == "largest_axial_diameter":
        return largest_axial_diameter_mm(mask, spacing, origin[1:]) * _UNIT_SCALE[unit]
    if kind == "surface_area":
        # Within the segment's box: the same transitions (the box is padded by one).
        box = bounding_box(mask)
        if box is None:
            return 0.0
        return surface_area_mm2(mask[box], spacing) * _UNIT_SCALE[unit]
    if kind in ("mean", "min", "max", "std"):
        box = bounding_box(mask)
        if box is None:
            return math.nan
        # The box keeps the selected values and their order: the same result.
        return value_statistic(values[box], mask[box], kind)
    raise ValueError(f"unknown computation {kind!r}")


def compute_measurements(
    label_map: np.ndarray,
    values: np.ndarray,
    spacing: Spacing,
    requests: Mapping[int, Mapping[str, tuple[str, str]]],
) -> dict[int, dict[str, float]]:
    """Compute ``{label: {key: (kind, unit)}}`` requests; returns ``{label: {key: value}}``."""
    results: dict[int, dict[str, float]] = {}
    for label, wanted in requests.items():
        if not wanted:
            continue
        mask = label_map == label
        results[label] = {
            key: compute(kind, unit, mask, values, spacing) for key, (kind, unit) in wanted.items()
        }
    return results
