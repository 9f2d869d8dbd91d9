"""Plumbing of the ``ct_lungs`` routine: input checks, devices, orientation, measurements."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from node.errors import InputRejected
from node.runtime.measure import label_statistics
from node.runtime.plugin import InferencePlugin, Prediction, RunContext
from node.runtime.volume import Volume
from plugins.ct_lungs.segmentation import (
    LEFT_LUNG,
    RIGHT_LUNG,
    LungsNotFoundError,
    reorientation_from_affine,
    segment_lungs,
)

log = logging.getLogger(__name__)

MIN_SLICES = 20
SLICE_SPACING_RANGE_MM = (0.3, 10.0)
PIXEL_SPACING_RANGE_MM = (0.2, 3.0)
MIN_MATRIX = 64
#: Largest angle between an image axis and the patient axis it runs along.
MAX_OBLIQUITY_DEG = 15.0


class CtLungsPlugin(InferencePlugin):
    """Right and left lung segmentation of a chest CT by Hounsfield thresholds.

    Accepts axial series stored in any in-plane direction (rows/columns may run
    either way, slices up or down): the volume is reoriented to patient axes
    through its affine, so right and left come from patient coordinates.
    """

    name = "ct_lungs"
    version = "1.0.0"
    template = "ct_lungs"
    modalities = ("CT",)

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        """Nothing to load (no weights); remember the worker's device."""
        self.device = device

    def check(self, volume: Volume) -> None:
        """Reject non-CT, short, coarse or non-axial series (see the module constants)."""
        if volume.modality not in self.modalities:
            raise InputRejected(f"modality {volume.modality or 'unknown'} is not CT")
        slices, rows, columns = volume.shape
        if slices < MIN_SLICES:
            raise InputRejected(f"{slices} slices; at least {MIN_SLICES} are needed")
        if min(rows, columns) < MIN_MATRIX:
            raise InputRejected(
                f"image matrix {rows}x{columns} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
            )
        low, high = SLICE_SPACING_RANGE_MM
        if not low <= volume.spacing[0] <= high:
            raise InputRejected(
                f"slice spacing {volume.spacing[0]:.2f} mm is outside {low:g}-{high:g} mm"
            )
        low, high = PIXEL_SPACING_RANGE_MM
        for spacing in volume.spacing[1:]:
            if not low <= spacing <= high:
                raise InputRejected(
                    f"pixel spacing {spacing:.2f} mm is outside {low:g}-{high:g} mm"
                )
        try:
            reorientation, obliquity_deg = reorientation_from_affine(volume.affine)
        except ValueError as exc:
            raise InputRejected(f"unsupported image orientation: {exc}") from exc
        if reorientation.permutation[0] != 0:
            raise InputRejected(
                "not an axial series: slices are not stacked along the patient axis"
            )
        if obliquity_deg > MAX_OBLIQUITY_DEG:
            raise InputRejected(
                f"image axes are {obliquity_deg:.1f} degrees oblique; at most "
                f"{MAX_OBLIQUITY_DEG:g} are supported"
            )

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        """Segment both lungs; labels 1 (right) and 2 (left) with volume and mean HU."""
        self.check(volume)
        started = time.perf_counter()
        reorientation, _ = reorientation_from_affine(volume.affine)
        hu = torch.from_numpy(volume.array).to(context.device)
        with torch.inference_mode():
            try:
                result = segment_lungs(
                    reorientation.to_canonical(hu), reorientation.canonical_spacing(volume.spacing)
                )
            except LungsNotFoundError as exc:
                raise InputRejected(f"no lungs found: {exc}") from exc
            label_map = reorientation.from_canonical(result.labels).cpu().numpy()
        label_map = np.ascontiguousarray(label_map, dtype=np.uint8)

        statistics = label_statistics(volume, label_map, (RIGHT_LUNG, LEFT_LUNG))
        measurements = {
            label: {"volume_cm3": stats["volume_cm3"], "mean_hu": stats["mean"]}
            for label, stats in statistics.items()
            if stats["voxel_count"] > 0
        }
        if not measurements:
            raise InputRejected("no lungs found: segmentation is empty")
        log.info(
            "lungs segmented job=%d series=%s device=%s seconds=%.2f right_cm3=%.1f "
            "left_cm3=%.1f airway_voxels=%d merged=%s",
            context.job_id,
            volume.series_instance_uid,
            context.device,
            time.perf_counter() - started,
            statistics[RIGHT_LUNG]["volume_cm3"],
            statistics[LEFT_LUNG]["volume_cm3"],
            result.airway_voxels,
            result.lungs_were_merged,
        )
        return Prediction(label_map=label_map, measurements=measurements)
