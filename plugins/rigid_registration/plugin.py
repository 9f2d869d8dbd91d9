"""Plumbing of the ``rigid_registration`` routine: prior checks, threads, the result."""

from __future__ import annotations

import logging
import os

import torch

from node.contract.plugin import (
    Accepts,
    InferencePlugin,
    Prediction,
    Registration,
    RunContext,
    ValidatedInput,
)
from node.contract.volume import Volume
from node.errors import InputRejected
from plugins.rigid_registration.rigid import RegistrationFailed, register_rigid

log = logging.getLogger(__name__)

#: Below this correlation of the registered images (over the current body) the result
#: is refused rather than sent: a wrong registration is worse than none.
MIN_CORRELATION = 0.5
#: Share of the current body the registered prior must cover.
MIN_OVERLAP = 0.3
#: Name of the quality measure written into the REG's transformation comment.
METRIC = "correlation"

# What the method was validated on (evaluate.py, tests/test_registration.py): current
# make_chest_ct series and make_prior_ct priors, measured with the gate's measure()
# (plugins/README.md).
# The gate measures the current series; the prior is checked by :attr:`accepts` only.
#: Current 3 mm and prior 2.5 mm slices.
VALIDATED_SLICE_THICKNESS_MM = (1.0, 5.0)
#: Current 1.5-2.4 mm and prior 1.3-2.0 mm pixels.
VALIDATED_PIXEL_SPACING_MM = (1.0, 3.0)
#: Phantom noise 18 HU (measured 18.2 HU): half to twice that.
VALIDATED_NOISE_HU = (9.0, 36.0)


class RigidRegistrationPlugin(InferencePlugin):
    """Rigid (6 degrees of freedom) registration of the patient's prior CT to the current one.

    The node finds the prior (:mod:`node.orchestration.priors`) because ``needs_prior`` is set;
    the routine aligns it with SimpleITK (Mattes mutual information, multi-resolution,
    :mod:`plugins.rigid_registration.rigid`) and returns a
    :class:`~node.contract.plugin.Registration`, written as a Spatial Registration
    object (result kind ``reg``). Runs on the CPU whatever the worker's device.
    """

    name = "rigid_registration"
    version = "1.0.0"
    template = "rigid_registration"
    needs_prior = True
    accepts = Accepts(
        modalities=("CT",),
        min_slices=10,
        slice_spacing_mm=(0.3, 10.0),
        pixel_spacing_mm=(0.2, 5.0),
        min_matrix=64,
        planes=("axial", "coronal", "sagittal"),
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
        #: ITK threads: the node's CPU share (``AINODE_REGISTRATION_THREADS``, default all).
        configured = os.environ.get("AINODE_REGISTRATION_THREADS")
        self.threads = int(configured) if configured else None

    def load(self, device: torch.device) -> None:
        """Nothing to load: the method has no weights."""

    def run(self, volume: Volume, context: RunContext) -> Prediction:
        """Register ``context.prior`` to ``volume``; refuse a poor or missing alignment."""
        prior = context.prior
        if prior is None:
            raise InputRejected("rigid_registration needs a prior series; none was given")
        problems = self.accepts.problems(prior)
        if problems:
            raise InputRejected("prior series: " + "; ".join(problems))
        if not volume.frame_of_reference_uid or not prior.frame_of_reference_uid:
            raise InputRejected("the current or the prior series has no FrameOfReferenceUID")
        try:
            result = register_rigid(
                volume, prior, threads=self.threads, raise_if_expired=context.raise_if_expired
            )
        except RegistrationFailed as exc:
            raise InputRejected(f"registration failed: {exc}") from exc
        if result.correlation < MIN_CORRELATION or result.overlap < MIN_OVERLAP:
            raise InputRejected(
                f"registration refused: correlation {result.correlation:.2f} (at least "
                f"{MIN_CORRELATION:g}) and body overlap {result.overlap:.2f} (at least "
                f"{MIN_OVERLAP:g}) after alignment; the prior may show another region"
            )
        log.info(
            "prior registered job=%d prior_series=%s seconds=%.1f correlation=%.3f",
            context.job_id,
            prior.series_instance_uid,
            result.seconds,
            result.correlation,
        )
        return Prediction(
            registration=Registration(
                matrix=result.matrix,
                source_frame_of_reference_uid=prior.frame_of_reference_uid,
                target_frame_of_reference_uid=volume.frame_of_reference_uid,
                source_study_instance_uid=prior.study_instance_uid,
                source_series_instance_uid=prior.series_instance_uid,
                source_instances=tuple(
                    (str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in prior.datasets
                ),
                metric=METRIC,
                metric_value=result.correlation,
            )
        )
