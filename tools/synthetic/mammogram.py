"""Synthetic mammograms as DICOM: Digital Mammography X-Ray, For Presentation.

Wraps :func:`tools.synthetic.mammogram_pixels.make_mammogram_pixels` (pixels and
truth) in :func:`tools.synthetic.projection.mg_image` (the DICOM writer), with
ImageLaterality, ViewPosition and Patient Orientation from the truth.
:func:`make_screening_series` gives the four standard views (RCC, LCC, RMLO,
LMLO) of one patient as one series. UIDs are derived from the seed. Synthetic
data only: the patient is ``PHANTOM^MAMMO``.
"""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset

from tools.synthetic.mammogram_pixels import MammogramTruth, make_mammogram_pixels
from tools.synthetic.projection import SeriesIdentity, mg_image

#: The four screening views in the usual hanging order.
SCREENING_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def mammogram_identity(seed: int) -> SeriesIdentity:
    """The synthetic patient, study and series of mammograms with ``seed``."""
    entropy = ["ainode-mammogram", str(seed)]
    return SeriesIdentity(
        patient_name="PHANTOM^MAMMO",
        patient_id=f"PHANTOMMG{seed:05d}",
        patient_sex="F",
        accession_number=f"SYNMG{seed:05d}",
        study_description="Synthetic screening mammography",
        series_description="Mammography (synthetic)",
        study_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "study"]),
        series_instance_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "series"]),
        frame_of_reference_uid=pydicom.uid.generate_uid(entropy_srcs=[*entropy, "frame"]),
    )


def make_mammogram(
    seed: int,
    rows: int = 480,
    columns: int = 384,
    pixel_spacing_mm: float = 0.5,
    *,
    laterality: str | None = None,
    view: str | None = None,
    masses: int | None = None,
    identity: SeriesIdentity | None = None,
    instance_number: int = 1,
) -> tuple[Dataset, MammogramTruth]:
    """One synthetic For Presentation mammogram as an MG instance, and its truth.

    Parameters are those of :func:`~tools.synthetic.mammogram_pixels.make_mammogram_pixels`;
    ``identity`` defaults to :func:`mammogram_identity` of ``seed``.
    """
    pixels, truth = make_mammogram_pixels(
        seed, rows, columns, pixel_spacing_mm, laterality=laterality, view=view, masses=masses
    )
    identity = identity or mammogram_identity(seed)
    sop_uid = pydicom.uid.generate_uid(
        entropy_srcs=[
            "ainode-mammogram",
            str(seed),
            f"{rows}x{columns}",
            truth.laterality,
            truth.view,
            identity.series_instance_uid,
        ]
    )
    ds = mg_image(
        pixels,
        laterality="R" if truth.laterality == "R" else "L",
        view=truth.view,
        imager_pixel_spacing_mm=pixel_spacing_mm,
        identity=identity,
        instance_number=instance_number,
        sop_instance_uid=sop_uid,
    )
    if list(ds.PatientOrientation) != list(truth.patient_orientation):
        raise RuntimeError("the MG writer and the generator disagree on Patient Orientation")
    return ds, truth


def make_screening_series(
    seed: int, *, masses: tuple[int, int, int, int] | None = None
) -> list[tuple[Dataset, MammogramTruth]]:
    """RCC, LCC, RMLO and LMLO of one synthetic patient in one series.

    ``masses`` gives the number of masses per view (None: random per view).
    """
    identity = mammogram_identity(seed)
    return [
        make_mammogram(
            seed * 4 + index,
            laterality=laterality,
            view=view,
            masses=None if masses is None else masses[index],
            identity=identity,
            instance_number=index + 1,
        )
        for index, (laterality, view) in enumerate(SCREENING_VIEWS)
    ]


__all__ = ["SCREENING_VIEWS", "make_mammogram", "make_screening_series", "mammogram_identity"]
