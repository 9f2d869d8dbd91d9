"""TID 1500 content for classifications and detections (added to the measurement report).

* A classification becomes a TID 1501 Measurement and Qualitative Evaluation group:
  Tracking ID and UID, the finding (DCM 121071 "Finding" = the template's concept), the
  finding site, TID 4019 algorithm identification whose parameters name the template,
  its SHA-256 and the operating threshold, a qualitative evaluation (concept = the
  finding, value = the template's code for present or absent: present when
  ``probability >= threshold``), and the probability as a measurement (DCM 122157
  "Probability", UCUM ``1`` for 0-1 or ``%`` for 0-100, as the template says). A
  per-image classification references its image (TID 1501 "Source" image); a
  series-level one references none (the whole series in the Image Library).
* A detection becomes a TID 1410 Planar ROI group: Tracking ID (``"<key> <n>"``) and
  UID, the region on the referenced image (SCOORD POLYLINE: the closed box, or POINT;
  SCOORD3D in the image's frame of reference when the template asks for it and the
  image has one), finding type, category and site, algorithm identification (with the
  reporting threshold) and the score as a measurement (DCM 111012 "Certainty of
  Finding", unit as above).
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset

from node.contract.template import ResultTemplate
from node.contract.volume import Volume
from node.results.findings import ClassificationResult, DetectionResult, ImageFindings
from node.results.provenance import algorithm_parameters

log = logging.getLogger(__name__)

#: Concept of a classification's probability.
PROBABILITY = CodedConcept("122157", "DCM", "Probability")
#: Concept of a detection's score.
CERTAINTY_OF_FINDING = CodedConcept("111012", "DCM", "Certainty of Finding")

FindingGroup = (
    hd.sr.MeasurementsAndQualitativeEvaluations
    | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
)


def frame_reference(volume: Volume, frame: int) -> tuple[Dataset, list[int] | None]:
    """The image a frame index refers to and, for a multi-frame image, its frame number."""
    number = volume.frame_number(frame)
    return volume.datasets[frame], None if number is None else [number]


def _algorithm(template: ResultTemplate, **extra: float) -> hd.sr.AlgorithmIdentification:
    parameters = {**algorithm_parameters(template), **{k: f"{v:g}" for k, v in extra.items()}}
    return hd.sr.AlgorithmIdentification(
        name=template.algorithm.name,
        version=template.algorithm.version,
        parameters=[f"{key}={value}" for key, value in parameters.items()],
    )


def _sites(site: object) -> list[hd.sr.FindingSite] | None:
    if site is None:
        return None
    return [hd.sr.FindingSite(anatomic_location=site.concept)]  # type: ignore[attr-defined]


def classification_group(
    result: ClassificationResult, volume: Volume, template: ResultTemplate
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of one classification."""
    spec = result.spec
    algorithm = _algorithm(template, threshold=spec.threshold)
    sources = None
    if result.frame is not None:
        image, frames = frame_reference(volume, result.frame)
        sources = [
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(image.SOPClassUID),
                referenced_sop_instance_uid=str(image.SOPInstanceUID),
                referenced_frame_numbers=frames,
            )
        ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result.tracking_uid, identifier=result.tracking_id
        ),
        finding_type=spec.concept.concept,
        finding_sites=_sites(spec.finding_site),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY,
                value=result.reported_probability,
                unit=spec.unit_concept,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=spec.concept.concept, value=result.value.concept)
        ],
        source_images=sources,
    )


def _patient_points(image: Dataset, points: np.ndarray) -> np.ndarray | None:
    """Image coordinates ``(column, row)`` to patient coordinates (mm), or None without geometry.

    SCOORD ``(0.5, 0.5)`` is the centre of the first pixel, where ImagePositionPatient is.
    """
    if not all(k in image for k in ("ImagePositionPatient", "ImageOrientationPatient")):
        return None
    if "PixelSpacing" not in image or "FrameOfReferenceUID" not in image:
        return None
    origin = np.asarray([float(v) for v in image.ImagePositionPatient])
    orientation = [float(v) for v in image.ImageOrientationPatient]
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    along_row = np.asarray(orientation[:3]) * column_spacing
    along_column = np.asarray(orientation[3:]) * row_spacing
    shifted = points - 0.5
    return origin + shifted[:, :1] * along_row + shifted[:, 1:2] * along_column


def detection_group(
    result: DetectionResult, volume: Volume, template: ResultTemplate
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group of one detection."""
    spec = result.spec
    algorithm = _algorithm(template, report_threshold=spec.report_threshold)
    image, frames = frame_reference(volume, result.frame)
    points = result.outline
    region: hd.sr.ImageRegion | hd.sr.ImageRegion3D | None = None
    if spec.scoord3d:
        patient = _patient_points(image, points)
        if patient is None:
            log.info(
                "scoord3d asked but the image has no frame of reference, using SCOORD key=%s",
                spec.key,
            )
        else:
            region = hd.sr.ImageRegion3D(
                graphic_type=(
                    hd.sr.GraphicTypeValues3D.POLYLINE
                    if result.box is not None
                    else hd.sr.GraphicTypeValues3D.POINT
                ),
                graphic_data=patient,
                frame_of_reference_uid=str(image.FrameOfReferenceUID),
            )
    if region is None:
        region = hd.sr.ImageRegion(
            graphic_type=(
                hd.sr.GraphicTypeValues.POLYLINE
                if result.box is not None
                else hd.sr.GraphicTypeValues.POINT
            ),
            graphic_data=points.astype(np.float32),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(image.SOPClassUID),
                referenced_sop_instance_uid=str(image.SOPInstanceUID),
                referenced_frame_numbers=frames,
            ),
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result.tracking_uid, identifier=result.tracking_id
        ),
        referenced_region=region,
        finding_type=spec.concept.concept,
        finding_category=spec.category.concept if spec.category is not None else None,
        finding_sites=_sites(spec.finding_site),
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=CERTAINTY_OF_FINDING,
                value=result.reported_score,
                unit=spec.unit_concept,
                algorithm_id=algorithm,
            )
        ],
    )


def finding_groups(findings: ImageFindings) -> list[FindingGroup]:
    """The SR groups of every classification, then every reported detection."""
    volume, template = findings.volume, findings.template
    groups: list[FindingGroup] = [
        classification_group(result, volume, template) for result in findings.classifications
    ]
    groups += [detection_group(result, volume, template) for result in findings.detections]
    return groups
