"""Lung segmentation from Hounsfield units (pure tensor logic, no DICOM).

The volume is first put in *canonical* order: axes ``(z, y, x)`` with indices
increasing towards the patient's superior, posterior and left (DICOM LPS), so
that "right lung" means "smaller x index" whatever the acquisition stored.

Algorithm (on a ~3 mm working grid, then refined on the source grid):

1. Air = HU below ``AIR_THRESHOLD_HU``. Air 3-D connected to the in-plane border
   of the volume is outside the patient; the body is the largest remaining
   non-outside component (this drops the table and air inside it).
2. Candidate air = air inside the body. The trachea and main bronchi are grown
   from small, central in-slice air regions at the top of the scan through
   in-slice components no larger than ``MAX_AIRWAY_AREA_MM2``; they stop where
   a bronchus merges with a lung cross-section.
3. The largest remaining 3-D components are the lungs. One component spanning
   both sides of the body midline is split per slice at the sagittal valley of
   its column counts (lungs touching at the anterior junction); two components
   are assigned right/left by their centroid.
4. Each lung is closed (3 mm) and its in-slice holes (vessels) are filled.
5. On the source grid, voxels deep inside a working-grid lung are kept as
   they are; within one working voxel of its border, a voxel belongs to the
   lung when its own HU is below the threshold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from node.contract.geometry import axis_directions
from plugins.ct_lungs.morphology import (
    PLANAR_AXES,
    close,
    component_sizes,
    dilate,
    downsample_mean,
    erode,
    erode_blocks,
    fill_holes_planar,
    label_components,
    planar_component_areas,
    select_components,
    touching_border,
    upsample_nearest,
)

log = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2

#: Lung parenchyma is below this, soft tissue above (halfway between -850 and +40).
AIR_THRESHOLD_HU = -400.0
#: Tissue of the body is above this.
TISSUE_THRESHOLD_HU = -500.0
#: Target voxel size of the working grid.
WORKING_VOXEL_MM = 3.0
#: Largest in-slice cross-section of trachea or main bronchus.
MAX_AIRWAY_AREA_MM2 = 800.0
#: Trachea seeds lie this close to the top of the air inside the body...
TRACHEA_SEED_DEPTH_MM = 15.0
#: ...and this close to the body midline.
TRACHEA_SEED_MAX_OFFSET_MM = 30.0
#: Smallest air region accepted as a lung.
MIN_LUNG_CM3 = 50.0
#: A second component smaller than this fraction of the first is not a lung.
MIN_SECOND_LUNG_FRACTION = 0.1
#: A component with at least this fraction on each side of the midline holds both lungs.
MERGED_SIDE_FRACTION = 0.15
#: Half-width of the search window for the sagittal valley, around the midline...
VALLEY_WINDOW_MM = 40.0
#: ...and around the global valley, slice by slice.
VALLEY_SLICE_WINDOW_MM = 20.0


class LungsNotFoundError(Exception):
    """No region of the volume looks like a lung; the message says what was found."""


@dataclass(frozen=True)
class Reorientation:
    """How to bring a ``(slice, row, column)`` array to canonical ``(z, y, x)`` order.

    Attributes
    ----------
    permutation
        Canonical axis ``k`` is source array axis ``permutation[k]``.
    flips
        Canonical axes to reverse after permuting.
    """

    permutation: tuple[int, int, int]
    flips: tuple[int, ...]

    def to_canonical(self, array: torch.Tensor) -> torch.Tensor:
        out = array.permute(self.permutation)
        return out.flip(self.flips) if self.flips else out

    def from_canonical(self, array: torch.Tensor) -> torch.Tensor:
        out = array.flip(self.flips) if self.flips else array
        inverse = tuple(int(i) for i in np.argsort(self.permutation))
        return out.permute(inverse)

    def canonical_spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        p = self.permutation
        return (spacing[p[0]], spacing[p[1]], spacing[p[2]])


def reorientation_from_affine(affine: np.ndarray) -> tuple[Reorientation, float]:
    """Canonical reorientation of a volume and its worst axis obliquity in degrees.

    ``affine`` maps ``(column, row, slice, 1)`` to LPS; array axis ``a`` of a
    ``(slice, row, column)`` array therefore moves along affine column ``2 - a``.
    Raises ``ValueError`` if two array axes run along the same patient axis.
    """
    patient_axis_of, signs, worst_deg = axis_directions(affine)
    if sorted(patient_axis_of) != [0, 1, 2]:
        raise ValueError("two image axes run along the same patient axis")
    # Canonical axis k runs along patient axis 2 - k (z, y, x).
    permutation = tuple(patient_axis_of.index(2 - k) for k in range(3))
    flips = tuple(k for k in range(3) if signs[permutation[k]] < 0)
    return Reorientation((permutation[0], permutation[1], permutation[2]), flips), worst_deg


@dataclass(frozen=True)
class LungSegmentation:
    """Result of :func:`segment_lungs` in canonical order.

    Attributes
    ----------
    labels
        ``uint8`` tensor, 0 background, ``RIGHT_LUNG``, ``LEFT_LUNG``.
    airway_voxels
        Working-grid voxels removed as trachea and main bronchi.
    lungs_were_merged
        The lungs formed one component and were split at the sagittal valley.
    working_factors
        Block size of the working grid in source voxels.
    """

    labels: torch.Tensor
    airway_voxels: int
    lungs_were_merged: bool
    working_factors: tuple[int, int, int]


def _working_factors(spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    f = [max(1, round(WORKING_VOXEL_MM / s)) for s in spacing]
    return (f[0], f[1], f[2])


def _body(not_outside: torch.Tensor) -> torch.Tensor:
    """The largest part of what is not outside air (drops the table and air inside it).

    Components are found on a grid twice as coarse where a block counts only if
    it is entirely inside, so that thin gaps (body to table) stay open.
    """
    blocks = erode_blocks(not_outside, 2)
    labels = label_components(blocks)
    sizes = component_sizes(labels)
    sizes[0] = 0
    largest = labels == int(torch.argmax(sizes))
    return dilate(upsample_nearest(largest, (2, 2, 2), not_outside.shape), 2) & not_outside


def _bounding_box(mask: torch.Tensor, margin: int) -> tuple[slice, slice, slice]:
    boxes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = torch.nonzero(mask.any(dim=other)).flatten()
        low = max(0, int(present[0]) - margin)
        high = min(mask.shape[axis], int(present[-1]) + margin + 1)
        boxes.append(slice(low, high))
    return boxes[0], boxes[1], boxes[2]


def _nested(
    outer: tuple[slice, slice, slice], inner: tuple[slice, slice, slice]
) -> tuple[slice, slice, slice]:
    """The box ``inner`` (relative to ``outer``) in the coordinates of the whole grid."""
    z, y, x = (
        slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True)
    )
    return z, y, x


def _airways(
    candidate: torch.Tensor, spacing: tuple[float, float, float], midline_x: float
) -> torch.Tensor:
    """Trachea and main bronchi: small in-slice air regions grown from the top centre."""
    areas_mm2 = planar_component_areas(candidate) * (spacing[1] * spacing[2])
    small = candidate & (areas_mm2 <= MAX_AIRWAY_AREA_MM2)
    slices_with_air = torch.nonzero(candidate.any(dim=(1, 2))).flatten()
    top = int(slices_with_air[-1])
    depth = max(1, round(TRACHEA_SEED_DEPTH_MM / spacing[0]))
    x = torch.arange(candidate.shape[2], device=candidate.device, dtype=torch.float32)
    central = (x - midline_x).abs() * spacing[2] <= TRACHEA_SEED_MAX_OFFSET_MM
    seeds = small.clone()
    seeds[: max(0, top + 1 - depth)] = False
    seeds &= central[None, None, :]
    if not bool(seeds.any()):
        log.info("no trachea found at the top of the scan; airways not removed")
        return torch.zeros_like(candidate)
    return select_components(label_components(small), seeds)


def _split_at_valley(
    merged: torch.Tensor, spacing: tuple[float, float, float], midline_x: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split one component holding both lungs, slice by slice, at the thinnest sagittal cut.

    A cut lies between two columns; its cost is the lung voxel count of the two
    columns beside it, so a flat junction is cut where it is, not one column off.
    """
    columns = merged.shape[2]
    counts = merged.sum(dim=1).to(torch.float32)  # (z, x): lung voxels per column
    pair_counts = counts[:, :-1] + counts[:, 1:]  # cut b - 0.5 between columns b - 1 and b
    cut_x = torch.arange(1, columns, device=merged.device, dtype=torch.float32) - 0.5
    # Prefer the lowest count; among equal counts, the position closest to the reference.
    weight = float(columns + 1)
    profile = pair_counts.sum(dim=0) * weight + (cut_x - midline_x).abs()
    profile[(cut_x - midline_x).abs() > VALLEY_WINDOW_MM / spacing[2]] = math.inf
    cut = float(cut_x[torch.argmin(profile)])
    scores = pair_counts * weight + (cut_x - cut).abs()[None, :]
    scores[:, (cut_x - cut).abs() > VALLEY_SLICE_WINDOW_MM / spacing[2]] = math.inf
    cuts = cut_x[torch.argmin(scores, dim=1)]  # (z,)
    x = torch.arange(columns, device=merged.device, dtype=torch.float32)
    right = merged & (x[None, None, :] < cuts[:, None, None])
    return right, merged & ~right


def segment_lungs(hu: torch.Tensor, spacing: tuple[float, float, float]) -> LungSegmentation:
    """Segment the right and left lung of a canonical ``(z, y, x)`` CT volume.

    Parameters
    ----------
    hu
        Hounsfield units, canonical order (indices increase towards patient
        superior, posterior, left); on any device.
    spacing
        Voxel size in mm along ``(z, y, x)``.

    Returns
    -------
    LungSegmentation
        Labels on the same grid and device as ``hu``.

    Raises
    ------
    LungsNotFoundError
        If there is no air inside the body, or no air region large enough.
    """
    factors = _working_factors(spacing)
    work = downsample_mean(hu, factors)
    ws = (spacing[0] * factors[0], spacing[1] * factors[1], spacing[2] * factors[2])
    voxel_cm3 = ws[0] * ws[1] * ws[2] / 1000.0

    # Outside air and body, inside the box around everything denser than air.
    tissue = work > TISSUE_THRESHOLD_HU
    if not bool(tissue.any()):
        raise LungsNotFoundError(f"nothing denser than {TISSUE_THRESHOLD_HU:g} HU in the volume")
    tissue_box = _bounding_box(tissue, margin=1)
    air = work[tissue_box] < AIR_THRESHOLD_HU
    outside = touching_border(air, PLANAR_AXES)
    if not bool(outside.any()):
        raise LungsNotFoundError("no air around the body: not a CT of a patient in air")
    body = _body(~outside)
    candidate = air & body
    if not bool(candidate.any()):
        raise LungsNotFoundError("no air inside the body")
    body_columns = body.sum(dim=(0, 1)).to(torch.float32)
    x = torch.arange(body.shape[2], device=work.device, dtype=torch.float32)
    midline_x = float((body_columns * x).sum() / body_columns.sum())

    # From here on, work inside the box around the air in the body.
    box = _bounding_box(candidate, margin=2)
    candidate = candidate[box]
    midline_x -= box[2].start
    x = x[box[2]] - box[2].start
    box = _nested(tissue_box, box)

    airways = _airways(candidate, ws, midline_x)
    labels = label_components(candidate & ~airways)
    sizes = component_sizes(labels)
    sizes[0] = 0
    top_sizes, top_labels = torch.topk(sizes, k=2)
    largest_cm3 = float(top_sizes[0]) * voxel_cm3
    if largest_cm3 < MIN_LUNG_CM3:
        raise LungsNotFoundError(
            f"no air region of at least {MIN_LUNG_CM3:.0f} cm3 inside the body "
            f"(largest {largest_cm3:.1f} cm3)"
        )
    first = labels == int(top_labels[0])
    first_columns = first.sum(dim=(0, 1)).to(torch.float32)
    right_fraction = float(first_columns[x < midline_x].sum() / first_columns.sum())
    first_centroid = float((first_columns * x).sum() / first_columns.sum())
    merged = MERGED_SIDE_FRACTION <= right_fraction <= 1.0 - MERGED_SIDE_FRACTION
    if merged:
        right, left = _split_at_valley(first, ws, midline_x)
        log.debug("lungs merged; split at the sagittal valley")
    else:
        other = torch.zeros_like(first)
        if float(top_sizes[1]) >= MIN_SECOND_LUNG_FRACTION * float(top_sizes[0]):
            second = labels == int(top_labels[1])
            second_columns = second.sum(dim=(0, 1)).to(torch.float32)
            second_centroid = float((second_columns * x).sum() / second_columns.sum())
            if (second_centroid - midline_x) * (first_centroid - midline_x) < 0:
                other = second
            else:
                log.info("second air region on the same side as the first; ignored")
        right, left = (first, other) if first_centroid < midline_x else (other, first)

    # Light closing and in-slice hole filling (vessels) per lung.
    right_filled = fill_holes_planar(close(right))
    left_filled = fill_holes_planar(close(left))
    work_labels = torch.zeros(candidate.shape, dtype=torch.uint8, device=hu.device)
    work_labels[right_filled & ~left_filled] = RIGHT_LUNG
    work_labels[left_filled & ~right_filled] = LEFT_LUNG
    work_labels[right] = RIGHT_LUNG
    work_labels[left] = LEFT_LUNG

    labels_full = _refine_on_source_grid(hu, work_labels, box, factors)
    return LungSegmentation(
        labels=labels_full,
        airway_voxels=int(airways.sum()),
        lungs_were_merged=merged,
        working_factors=factors,
    )


def _refine_on_source_grid(
    hu: torch.Tensor,
    work_labels: torch.Tensor,
    box: tuple[slice, slice, slice],
    factors: tuple[int, int, int],
) -> torch.Tensor:
    """Keep working-grid lung cores; decide border voxels by their own HU."""
    core = torch.zeros_like(work_labels)
    shell = torch.zeros_like(work_labels)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        lung = work_labels == value
        core[erode(lung)] = value
        near = dilate(lung) & (shell == 0)
        shell[near] = value
    shell[work_labels != 0] = work_labels[work_labels != 0]
    shell[core != 0] = 0

    # Source-grid box covered by the working-grid box.
    source_box = tuple(
        slice(b.start * f, min(size, b.stop * f))
        for b, f, size in zip(box, factors, hu.shape, strict=True)
    )
    shape = [s.stop - s.start for s in source_box]
    core_source = upsample_nearest(core, factors, shape)
    shell_source = upsample_nearest(shell, factors, shape)
    air = hu[source_box] < AIR_THRESHOLD_HU
    labels = torch.zeros(hu.shape, dtype=torch.uint8, device=hu.device)
    labels[source_box] = torch.where(
        core_source != 0, core_source, torch.where(air, shell_source, 0)
    ).to(torch.uint8)
    return labels
