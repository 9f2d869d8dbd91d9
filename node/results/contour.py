"""Outlines of a 2D mask as closed polygons along pixel edges (for SR, GSPS and overlays).

Coordinates are DICOM image coordinates ``(column, row)``: the top-left corner of the
top-left pixel is ``(0, 0)``, its centre ``(0.5, 0.5)`` (PS3.3 C.10.5.1.2 and the SR
SCOORD convention), so a polygon vertex is a pixel corner and the polygon encloses
exactly the pixels of the region. Each 4-connected component gives one polygon around
its outer boundary (holes are filled); the first point is repeated at the end, as
DICOM closed POLYLINEs require.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _trace(region: np.ndarray) -> np.ndarray:
    """Outer boundary of one hole-free 4-connected region, clockwise on screen."""
    padded = np.pad(region, 1)
    inside = padded[1:-1, 1:-1]
    following: dict[tuple[int, int], tuple[int, int]] = {}
    # (neighbour offset, edge start corner, edge end corner) with corners as (dx, dy).
    sides = (
        ((-1, 0), (0, 0), (1, 0)),  # top edge, left to right
        ((0, 1), (1, 0), (1, 1)),  # right edge, downwards
        ((1, 0), (1, 1), (0, 1)),  # bottom edge, right to left
        ((0, -1), (0, 1), (0, 0)),  # left edge, upwards
    )
    for (d_row, d_col), start, end in sides:
        neighbour = padded[
            1 + d_row : padded.shape[0] - 1 + d_row, 1 + d_col : padded.shape[1] - 1 + d_col
        ]
        rows, columns = np.nonzero(inside & ~neighbour)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            following[(column + start[0], row + start[1])] = (column + end[0], row + end[1])
    first = min(following)  # deterministic start: smallest column, then row
    points = [first]
    current = following[first]
    while current != first:
        points.append(current)
        current = following[current]
    points.append(first)
    polygon = np.asarray(points, dtype=np.float64)
    return _drop_collinear(polygon)


def _drop_collinear(closed: np.ndarray) -> np.ndarray:
    """Remove vertices where the boundary goes straight on (keeps the closing point)."""
    ring = closed[:-1]
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept = ring[cross != 0]
    return np.concatenate([kept, kept[:1]])


def outlines(mask2d: np.ndarray) -> list[np.ndarray]:
    """One closed ``(n, 2)`` polygon ``(column, row)`` per 4-connected component.

    Ordered by component size, largest first; an empty mask gives ``[]``.
    """
    labels, count = ndimage.label(np.asarray(mask2d, dtype=bool))
    if count == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    order = np.argsort(-np.asarray(sizes), kind="stable") + 1
    polygons = []
    for component in order:
        region = ndimage.binary_fill_holes(labels == component)
        polygons.append(_trace(np.asarray(region, dtype=bool)))
    return polygons


def polygon_area(polygon: np.ndarray) -> float:
    """Area enclosed by a closed polygon (shoelace), in squared pixel units."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)
