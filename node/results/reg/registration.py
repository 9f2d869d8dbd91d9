"""Spatial Registration Storage (REG) for a prior series registered to the current one.

highdicom has no Spatial Registration class, so the object is built with pydicom,
module by module (PS3.3 A.39.1):

* Patient, General Study, Patient Study: copied from the current series;
* General Series + Spatial Registration Series (Modality ``REG``), General Equipment
  (the algorithm as manufacturer/model/version, plus a Contributing Equipment item as
  on every ainode result);
* Frame of Reference: the current series' — the registered coordinate system;
* Spatial Registration: two Registration Sequence items, the current Frame of
  Reference with the identity (DCM 125021 "Frame of Reference Identity") and the
  prior's Frame of Reference with the routine's RIGID matrix (DCM 125024 "Image
  Content-based Alignment"), each with the images it applies to;
* Common Instance Reference: the current series (same study) in Referenced Series
  Sequence, the prior study in Studies Containing Other Referenced Instances Sequence;
* SOP Common.

A matrix ``M`` maps the registered Frame of Reference's patient coordinates to the
Spatial Registration's own (the current one): a viewer fusing the prior onto the
current series applies ``M`` to the prior's coordinates.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from node.contract.plugin import Registration
from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.identity import SeriesIdentity
from node.results.provenance import copy_body_part, processing_equipment
from node.results.source import TYPE_2_PATIENT_STUDY

log = logging.getLogger(__name__)

#: Spatial Registration Storage.
SPATIAL_REGISTRATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.1"
#: CID 7100 RCS Registration Method.
FRAME_OF_REFERENCE_IDENTITY = ("125021", "DCM", "Frame of Reference Identity")
IMAGE_CONTENT_BASED_ALIGNMENT = ("125024", "DCM", "Image Content-based Alignment")
#: Patient and study attributes copied from the current series (PS3.3 C.7.1.1, C.7.2.1,
#: C.7.2.2), when it has them.
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
)


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _ds(value: float) -> str:
    """A matrix element as DS (at most 16 characters, full precision that fits)."""
    if value == 0.0:
        return "0"
    for digits in range(12, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"matrix element {value} does not fit a DS value")


def _instance_items(references: Iterable[tuple[str, str]], keyword: str) -> DicomSequence:
    items = []
    for sop_class_uid, sop_instance_uid in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        items.append(item)
    if not items:
        raise ValueError(f"{keyword} needs at least one instance")
    return DicomSequence(items)


def _series_item(series_instance_uid: str, references: Sequence[tuple[str, str]]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_instance_uid
    item.ReferencedInstanceSequence = _instance_items(references, "ReferencedInstanceSequence")
    return item


def _registration_item(
    frame_of_reference_uid: str,
    references: Sequence[tuple[str, str]],
    matrix: np.ndarray,
    method: tuple[str, str, str],
    comment: str,
) -> Dataset:
    transformation = Dataset()
    transformation.FrameOfReferenceTransformationMatrixType = "RIGID"
    transformation.FrameOfReferenceTransformationMatrix = [
        _ds(float(v)) for v in np.asarray(matrix, dtype=np.float64).ravel()
    ]
    registration = Dataset()
    registration.FrameOfReferenceTransformationComment = comment[:1024]
    registration.RegistrationTypeCodeSequence = DicomSequence([_code(method)])
    registration.MatrixSequence = DicomSequence([transformation])
    item = Dataset()
    item.FrameOfReferenceUID = frame_of_reference_uid
    item.ReferencedImageSequence = _instance_items(references, "ReferencedImageSequence")
    item.MatrixRegistrationSequence = DicomSequence([registration])
    return item


def build_registration(
    volume: Volume,
    registration: Registration,
    template: ResultTemplate,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """A Spatial Registration object registering the prior to ``volume``'s Frame of Reference.

    Parameters
    ----------
    volume
        The current series (the fixed one); its Frame of Reference is the object's.
    registration
        The routine's result: the prior's Frame of Reference, images and matrix.
    template
        The routine's result template (algorithm identity, content label).
    series, sop_instance_uid
        Identity of the new object (deterministic, from :mod:`node.results.uids`).
    content_datetime
        Content date and time (default: now).

    Raises
    ------
    ValueError
        The registration does not belong to ``volume`` (another Frame of Reference),
        the prior is in the same study, or the current series has no Frame of Reference.
    """
    current_frame = volume.frame_of_reference_uid
    if not current_frame:
        raise ValueError("the current series has no FrameOfReferenceUID to register to")
    if registration.target_frame_of_reference_uid != current_frame:
        raise ValueError(
            f"the registration targets Frame of Reference "
            f"{registration.target_frame_of_reference_uid}, the series is in {current_frame}"
        )
    if registration.source_study_instance_uid == volume.study_instance_uid:
        raise ValueError("the prior is in the current study; a prior comes from another study")
    source = volume.datasets[0]
    created = content_datetime or datetime.datetime.now()
    current_images = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in volume.datasets]
    prior_images = list(registration.source_instances)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SPATIAL_REGISTRATION_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = SPATIAL_REGISTRATION_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S")
    # Patient, General Study, Patient Study
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in TYPE_2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    # General Series, Spatial Registration Series
    ds.Modality = "REG"
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.series_description
    ds.SeriesDate = created.strftime("%Y%m%d")
    ds.SeriesTime = created.strftime("%H%M%S")
    copy_body_part(ds, source)
    # Frame of Reference: the registered (current) coordinate system.
    ds.FrameOfReferenceUID = current_frame
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    # General Equipment: the algorithm made this object.
    ds.Manufacturer = series.manufacturer
    ds.ManufacturerModelName = series.manufacturer_model_name
    ds.SoftwareVersions = series.software_versions
    ds.ContributingEquipmentSequence = DicomSequence([processing_equipment(template)])
    # Spatial Registration (Content Identification macro, content date/time, registrations)
    ds.InstanceNumber = 1
    ds.ContentLabel = template.output.content_label
    ds.ContentDescription = "Rigid registration of the prior series to the current series"
    ds.ContentCreatorName = ""
    ds.ContentDate = created.strftime("%Y%m%d")
    ds.ContentTime = created.strftime("%H%M%S")
    ds.RegistrationSequence = DicomSequence(
        [
            _registration_item(
                current_frame,
                current_images,
                np.eye(4),
                FRAME_OF_REFERENCE_IDENTITY,
                "Current series: identity",
            ),
            _registration_item(
                registration.source_frame_of_reference_uid,
                prior_images,
                registration.matrix,
                IMAGE_CONTENT_BASED_ALIGNMENT,
                f"Prior series to current: {registration.metric}={registration.metric_value:.4f}",
            ),
        ]
    )
    # Common Instance Reference
    ds.ReferencedSeriesSequence = DicomSequence(
        [_series_item(volume.series_instance_uid, current_images)]
    )
    prior_study = Dataset()
    prior_study.StudyInstanceUID = registration.source_study_instance_uid
    prior_study.ReferencedSeriesSequence = DicomSequence(
        [_series_item(registration.source_series_instance_uid, prior_images)]
    )
    ds.StudiesContainingOtherReferencedInstancesSequence = DicomSequence([prior_study])
    log.info(
        "reg built sop_instance_uid=%s prior_series_uid=%s current_images=%d prior_images=%d"
        " %s=%.4f",
        sop_instance_uid,
        registration.source_series_instance_uid,
        len(current_images),
        len(prior_images),
        registration.metric,
        registration.metric_value,
    )
    return ds


def registration_matrices(dataset: Dataset) -> dict[str, np.ndarray]:
    """``{Frame of Reference UID: 4x4 matrix}`` of a Spatial Registration object."""
    if str(dataset.SOPClassUID) != SPATIAL_REGISTRATION_STORAGE:
        raise ValueError(f"SOP class {dataset.SOPClassUID} is not Spatial Registration Storage")
    found: dict[str, np.ndarray] = {}
    for item in dataset.RegistrationSequence:
        matrix = np.eye(4)
        for transformation in item.MatrixRegistrationSequence[0].MatrixSequence:
            step = np.asarray(
                [float(v) for v in transformation.FrameOfReferenceTransformationMatrix]
            ).reshape(4, 4)
            matrix = step @ matrix
        found[str(item.FrameOfReferenceUID)] = matrix
    return found


__all__ = [
    "SPATIAL_REGISTRATION_STORAGE",
    "build_registration",
    "registration_matrices",
]
