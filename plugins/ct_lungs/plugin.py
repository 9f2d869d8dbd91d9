"""Plumbing of the ``ct_lungs`` routine: input checks, devices, orientation, measurements."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from node.contract.plugin import (
    Accepts,
    InferencePlugin,
    Prediction,
    RunContext,
    ValidatedInput,
    check_input,
)
from node.contract.volume import Volume
from node.engine.measure import label_statistics
from node.errors import InputRejected
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

# What the routine was validated on: the chest phantoms of tools/synthetic/chest_ct.py
# (README "Measured on the phantom", the evaluation example, tests/test_ct_lungs.py),
# measured with the gate's own measure() (plugins/README.md, README "Validated input").
#: Validated on 1-5 mm slices (1 and 3 mm in the README, 5 mm in the evaluation example).
VALIDATED_SLICE_THICKNESS_MM = (0.75, 6.0)
#: Validated on 0.75-3 mm pixels; 3 mm is also the largest :attr:`accepts` takes.
VALIDATED_PIXEL_SPACING_MM = (0.5, 3.0)
#: Phantom noise 15-18 HU, measured 18.2 HU at 18: half to twice that.
VALIDATED_NOISE_HU = (9.0, 36.0)


class CtLungsPlugin(InferencePlugin):
    """Right and left lung segmentation of a chest CT by Hounsfield thresholds.

    Accepts (declared in :attr:`accepts`, checked by the node): CT, at least
    20 slices, slice spacing 0.3-10 mm, pixel spacing 0.2-3 mm, matrix at
    least 64x64, axial slices at most 15 degrees oblique.

    Accepts axial series stored in any in-plane direction (rows/columns may run
    either way, slices up or down): the volume is reoriented to patient axes
    through its affine, so right and left come from patient coordinates.
    """

    name = "ct_lungs"
    version = "1.0.0"
    template = "ct_lungs"
    accepts = Accepts(
        modalities=("CT",),
        min_slices=MIN_SLICES,
        slice_spacing_mm=SLICE_SPACING_RANGE_MM,
        pixel_spacing_mm=PIXEL_SPACING_RANGE_MM,
        min_matrix=MIN_MATRIX,
        planes=("axial",),
        max_obliquity_deg=MAX_OBLIQUITY_DEG,
    )
    validated_on = ValidatedInput(
        modalities=("CT",),
        sop_classes=("1.2.840.10008.5.1.4.1.1.2",),  # CT Image Storage, as the phantoms
        slice_thickness_mm=VALIDATED_SLICE_THICKNESS_MM,
        pixel_spacing_mm=VALIDATED_PIXEL_SPACING_MM,
        contrast="absent",  # the phantoms are unenhanced and carry no ContrastBolusAgent
        photometric_interpretations=("MONOCHROME2",),
        min_bits_stored=12,  # the phantoms are stored in 12 bits
        noise=VALIDATED_NOISE_HU,
    )

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def load(self, device: torch.device) -> None:
        """Nothing to load (no weights); remember the worker's device."""
        self.device = device

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        """Segment both lungs; labels 1 (right) and 2 (left) with volume and mean HU."""
        check_input(self, volume)
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
