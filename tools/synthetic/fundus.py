"""Synthetic fundus photographs as DICOM: Ophthalmic Photography 8 Bit, RGB.

Wraps :func:`tools.synthetic.fundus_pixels.make_fundus_pixels` (the pixels and their
truth) in :func:`tools.synthetic.projection.op_image` (the DICOM writer). One eye
per call; pass the same :class:`~tools.synthetic.projection.SeriesIdentity` to put
both eyes in one series. UIDs are derived from the seed, so the same call gives
the same instances. Synthetic data only: the patient is ``PHANTOM^FUNDUS``.
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset

from tools.synthetic.fundus_pixels import FundusTruth, Severity, make_fundus_pixels
from tools.synthetic.projection import SeriesIdentity, op_image

#: Pixel spacing at the retina of the default 512-pixel, 45° photograph (mm).
RETINA_WIDTH_MM = 12.0


def fundus_identity(seed: int) -> SeriesIdentity:
    """The synthetic patient, study and series of fundus photographs with ``seed``."""
    entropy = ["ainode-fundus", str(seed)]
    return SeriesIdentity(
        patient_name="PHANTOM^FUNDUS",
        patient_id=f"PHANTOMOP{seed:05d}",
        accession_number=f"SYNOP{seed:05d}",
        study_description="Synthetic fundus photography",
        series_description="Colour fundus 45 deg (synthetic)",
        study_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"]),
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"]),
        frame_of_reference_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "frame"]),
    )


def make_fundus(
    seed: int,
    size: int = 512,
    *,
    lesions_present: bool | None = None,
    severity: Severity | None = None,
    laterality: str | None = None,
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
) -> tuple[Dataset, FundusTruth]:
    """One synthetic colour fundus photograph as an OP instance, and its truth.

    Parameters are those of :func:`~tools.synthetic.fundus_pixels.make_fundus_pixels`;
    ``identity`` defaults to :func:`fundus_identity` of ``seed``.
    """
    pixels, truth = make_fundus_pixels(
        seed, size, lesions_present=lesions_present, severity=severity, laterality=laterality
    )
    identity = identity or fundus_identity(seed)
    sop_uid = pydicom.uid.generate_uid(
        entropy_srcs=[
            "ainode-fundus",
            str(seed),
            str(size),
            truth.laterality,
            identity.series_instance_uid,
        ]
    )
    ds = op_image(
        pixels,
        laterality="R" if truth.laterality == "R" else "L",
        identity=identity,
        instance_number=instance_number,
        pixel_spacing_mm=RETINA_WIDTH_MM / size,
        sop_instance_uid=sop_uid,
    )
    return ds, truth


__all__ = ["RETINA_WIDTH_MM", "fundus_identity", "make_fundus"]
