"""Binary morphology and connected components on torch tensors (CPU or CUDA).

Everything works on 3-D tensors shaped ``(slices, rows, columns)``. "Planar"
operations act inside each slice only (axes 1 and 2).

Connected components use run-length label propagation: along one axis, every
run of foreground voxels takes the largest label found in it (a cumulative sum
gives run ids, ``scatter_reduce`` the maximum), axes are swept in turn and
labels are then shortened by pointer jumping. A label is the linear index + 1
of a voxel of its component, so the result is deterministic and identical on
every device; a component needs a few sweeps, not one per voxel of its diameter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: Axes of a ``(slices, rows, columns)`` tensor.
VOLUME_AXES = (0, 1, 2)
#: In-plane axes (rows, columns).
PLANAR_AXES = (1, 2)


def _run_ids(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """Number the runs of ``mask`` along ``axis`` (1, 2, ...; 0 on background)."""
    previous = torch.zeros_like(mask)
    previous.narrow(axis, 1, mask.shape[axis] - 1).copy_(mask.narrow(axis, 0, mask.shape[axis] - 1))
    starts = mask & ~previous
    # Run counter inside each line plus the number of runs in all earlier lines.
    counter = torch.cumsum(starts, dim=axis, dtype=torch.int64)
    runs_per_line = counter.select(axis, mask.shape[axis] - 1)
    line_offset = torch.cumsum(runs_per_line.flatten(), 0).reshape(runs_per_line.shape)
    line_offset = line_offset - runs_per_line
    return (counter + line_offset.unsqueeze(axis)) * mask


def label_components(
    mask: torch.Tensor, axes: Sequence[int] = VOLUME_AXES, max_sweeps: int = 1000
) -> torch.Tensor:
    """Label the connected components of ``mask`` (face connectivity along ``axes``).

    Parameters
    ----------
    mask
        Boolean tensor.
    axes
        Axes along which neighbours connect: ``VOLUME_AXES`` for 3-D components
        (6-connectivity), ``PLANAR_AXES`` for components inside each slice
        (4-connectivity).
    max_sweeps
        Safety bound on the number of sweeps.

    Returns
    -------
    torch.Tensor
        ``int64`` labels, 0 on background; not consecutive (use :func:`component_sizes`).
    """
    foreground = torch.nonzero(mask.flatten()).flatten()
    count = foreground.numel()
    # Work on foreground voxels only: a label is the position (in ``foreground``)
    # of a voxel of the same component; runs along each axis share the maximum.
    runs = [_run_ids(mask, axis).flatten()[foreground] for axis in axes]
    run_max = [
        torch.zeros(int(r.max()) + 1 if count else 1, dtype=torch.int64, device=mask.device)
        for r in runs
    ]
    labels = torch.arange(count, device=mask.device, dtype=torch.int64)
    for sweep in range(max_sweeps):
        previous = labels
        for run_ids, best in zip(runs, run_max, strict=True):
            best.zero_().scatter_reduce_(0, run_ids, labels, reduce="amax", include_self=True)
            labels = best[run_ids]
        # Pointer jumping: a label's own label is at least as large and in the same
        # component; taking it shortcuts long propagation chains.
        labels = labels[labels]
        if torch.equal(labels, previous):
            log.debug("components labelled sweeps=%d voxels=%d", sweep + 1, count)
            out = torch.zeros(mask.numel(), dtype=torch.int64, device=mask.device)
            out[foreground] = foreground[labels] + 1
            return out.reshape(mask.shape)
    raise RuntimeError(f"connected components did not converge in {max_sweeps} sweeps")


def component_sizes(labels: torch.Tensor) -> torch.Tensor:
    """Voxel count of every label value (index = label; index 0 is background)."""
    return torch.bincount(labels.flatten(), minlength=labels.numel() + 1)


def planar_component_areas(mask: torch.Tensor) -> torch.Tensor:
    """For every voxel of ``mask``, the voxel count of its in-slice component (0 elsewhere)."""
    labels = label_components(mask, PLANAR_AXES)
    return torch.where(mask, component_sizes(labels)[labels], 0)


def select_components(labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Components of a labelling that contain at least one ``seeds`` voxel."""
    chosen = torch.zeros(labels.numel() + 1, dtype=torch.bool, device=labels.device)
    chosen[labels[seeds]] = True
    chosen[0] = False
    return chosen[labels]


def touching_border(mask: torch.Tensor, axes: Sequence[int] = PLANAR_AXES) -> torch.Tensor:
    """Voxels of ``mask`` that are 3-D connected to the first or last index along ``axes``."""
    seeds = torch.zeros_like(mask)
    for axis in axes:
        seeds.index_fill_(axis, torch.tensor([0, mask.shape[axis] - 1], device=mask.device), True)
    return select_components(label_components(mask), seeds & mask)


def fill_holes_planar(mask: torch.Tensor) -> torch.Tensor:
    """Fill, in each slice, background regions not connected to the slice border."""
    background = ~mask
    seeds = torch.zeros_like(mask)
    seeds[:, 0, :] = seeds[:, -1, :] = seeds[:, :, 0] = seeds[:, :, -1] = True
    outside = select_components(label_components(background, PLANAR_AXES), seeds & background)
    return ~outside


def dilate(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Dilate with a ``(2r+1)^3`` cube (separable, by shifted ORs)."""
    out = mask.clone()
    for axis in range(3):
        size = mask.shape[axis]
        for _ in range(radius):
            step = out.clone()
            if size > 1:
                step.narrow(axis, 1, size - 1).logical_or_(out.narrow(axis, 0, size - 1))
                step.narrow(axis, 0, size - 1).logical_or_(out.narrow(axis, 1, size - 1))
            out = step
    return out


def erode(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Erode with a ``(2r+1)^3`` cube; voxels outside the tensor count as foreground."""
    return ~dilate(~mask, radius)


def close(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Morphological closing (dilation then erosion) with a cube."""
    return erode(dilate(mask, radius), radius)


def downsample_mean(values: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Block-average by integer ``factors``; edges are padded by replication."""
    if factors == (1, 1, 1):
        return values
    pad = [(-size) % factor for size, factor in zip(values.shape, factors, strict=True)]
    x = values[None, None].to(torch.float32)
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return F.avg_pool3d(x, kernel_size=factors, stride=factors)[0, 0]


def erode_blocks(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Downsample by ``factor``: a block is foreground only if all its voxels are."""
    pad = [(-size) % factor for size in mask.shape]
    x = (~mask)[None, None].to(torch.float32)
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return F.max_pool3d(x, kernel_size=factor, stride=factor)[0, 0] == 0


def upsample_nearest(
    values: torch.Tensor, factors: tuple[int, int, int], shape: Sequence[int]
) -> torch.Tensor:
    """Inverse of :func:`downsample_mean`'s grid: repeat each voxel and crop to ``shape``."""
    out = values
    for axis, factor in enumerate(factors):
        if factor > 1:
            out = out.repeat_interleave(factor, dim=axis)
    return out[: shape[0], : shape[1], : shape[2]]
