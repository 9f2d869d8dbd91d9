"""Exact reorientation between a volume's storage order and a model's axis codes.

A :class:`~node.contract.volume.Volume` array is ``(slice, row, column)`` and
its affine maps ``(column, row, slice)`` to DICOM patient coordinates (LPS).
Models expect arrays whose axes run along fixed patient directions, named
with axis codes as in nibabel/MONAI (``"RAS"``: axis 0 points to the
patient's right, axis 1 anterior, axis 2 superior). Getting there is only a
permutation and flips (no interpolation), so going back is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the contract imports without torch; routines bring it
    import torch

#: Axis code → (patient axis in LPS order, sign of the LPS component it points along).
_CODES: dict[str, tuple[int, float]] = {
    "L": (0, 1.0),
    "R": (0, -1.0),
    "P": (1, 1.0),
    "A": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


def check_axcodes(axcodes: str) -> str:
    """Validate an axis-code string such as ``RAS`` or ``LPS``; returns it upper-cased."""
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in _CODES for c in codes):
        raise ValueError(f"axis codes {axcodes!r} must be three of L/R, P/A, S/I")
    if sorted(_CODES[c][0] for c in codes) != [0, 1, 2]:
        raise ValueError(f"axis codes {axcodes!r} name a patient axis twice")
    return codes


@dataclass(frozen=True)
class Reorientation:
    """Permutation and flips from storage order to a model's axis order.

    Attributes
    ----------
    permutation
        ``permutation[k]`` is the storage axis (0 slice, 1 row, 2 column) that
        becomes model axis ``k``.
    flips
        Model axes reversed after the permutation.
    obliquity_deg
        Largest angle between a storage axis and the patient axis it was matched to.
    """

    permutation: tuple[int, int, int]
    flips: tuple[int, ...]
    obliquity_deg: float

    def to_model(self, array: torch.Tensor) -> torch.Tensor:
        """Storage-order ``(..., s, r, c)`` tensor → model order (a view)."""
        lead = array.ndim - 3
        moved = array.permute(*range(lead), *(lead + p for p in self.permutation))
        return moved.flip([lead + f for f in self.flips]) if self.flips else moved

    def to_storage(self, array: torch.Tensor) -> torch.Tensor:
        """Model-order ``(..., a, b, c)`` tensor → storage order (inverse of :meth:`to_model`)."""
        lead = array.ndim - 3
        if self.flips:
            array = array.flip([lead + f for f in self.flips])
        inverse = [self.permutation.index(k) for k in range(3)]
        return array.permute(*range(lead), *(lead + p for p in inverse))

    def model_spacing(self, storage_spacing: tuple[float, float, float]) -> tuple[float, ...]:
        """Voxel spacing in model axis order."""
        return tuple(float(storage_spacing[p]) for p in self.permutation)


def axis_directions(affine: np.ndarray) -> tuple[list[int], list[float], float]:
    """The patient axis each array axis runs closest to, its sign, and the worst obliquity.

    ``affine`` maps ``(column, row, slice, 1)`` to LPS; array axis ``a`` of a
    ``(slice, row, column)`` array moves along affine column ``2 - a``. Returns the
    dominant patient axis (0, 1, 2 = x, y, z) and the sign (+1/-1) per array axis,
    and the largest angle in degrees between an array axis and its patient axis.
    """
    patient_axis: list[int] = []
    sign: list[float] = []
    worst = 0.0
    for storage_axis in range(3):
        direction = np.asarray(affine[:3, 2 - storage_axis], dtype=float)
        dominant = int(np.argmax(np.abs(direction)))
        cosine = abs(direction[dominant]) / float(np.linalg.norm(direction))
        worst = max(worst, math.degrees(math.acos(min(1.0, cosine))))
        patient_axis.append(dominant)
        sign.append(float(np.sign(direction[dominant])))
    return patient_axis, sign, worst


def reorientation(affine: np.ndarray, axcodes: str = "RAS") -> Reorientation:
    """How to permute and flip a storage-order array into ``axcodes`` order.

    Raises
    ------
    ValueError
        If two storage axes run closest to the same patient axis (degenerate
        geometry) or the axis codes are invalid.
    """
    codes = check_axcodes(axcodes)
    patient_axis, sign, worst = axis_directions(affine)
    if sorted(patient_axis) != [0, 1, 2]:
        raise ValueError("two image axes run along the same patient axis")
    permutation: list[int] = []
    flips: list[int] = []
    for k, code in enumerate(codes):
        axis, wanted = _CODES[code]
        source = patient_axis.index(axis)
        permutation.append(source)
        if sign[source] != wanted:
            flips.append(k)
    return Reorientation((permutation[0], permutation[1], permutation[2]), tuple(flips), worst)


def acquisition_plane(affine: np.ndarray) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the patient axis the slices are stacked along."""
    normal = np.asarray(affine[:3, 2], dtype=float)
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
