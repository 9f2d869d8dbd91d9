"""Comprehensive 3D SR (TID 1500 Measurement Report) for a segmentation result.

The report has an Image Library of the source images, the algorithm as device
observer, the procedure reported, and one TID 1411 volumetric group per template
segment that references the SEG segment and repeats its Tracking UID. Each group holds
the prediction's measurements for that label, coded per template, with TID 4019
algorithm identification. A ``predecessor`` (the SR this one supersedes) goes into
the Predecessor Documents Sequence.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.errors import TemplateError
from node.results.provenance import (
    device_observer,
    processing_equipment,
    sr_algorithm_identification,
)
from node.results.template import ResultTemplate, SegmentSpec
from node.runtime.plugin import Prediction
from node.runtime.volume import Volume

log = logging.getLogger(__name__)

#: Procedure reported for CT when neither the source nor the template names one.
CT_UNSPECIFIED_BODY_REGION = CodedConcept("25045-6", "LN", "CT unspecified body region")
#: Last-resort procedure reported for other modalities.
IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")


@dataclass(frozen=True)
class SOPReference:
    """Enough of an earlier SR to reference it (e.g. as a predecessor)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> SOPReference:
        return cls(
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
        )

    def as_dataset(self) -> Dataset:
        """A minimal dataset carrying the four UIDs, the form highdicom takes."""
        dataset = Dataset()
        dataset.StudyInstanceUID = self.study_instance_uid
        dataset.SeriesInstanceUID = self.series_instance_uid
        dataset.SOPClassUID = self.sop_class_uid
        dataset.SOPInstanceUID = self.sop_instance_uid
        return dataset


def procedure_reported(volume: Volume, template: ResultTemplate) -> CodedConcept:
    """The source's Procedure Code, else the template's, else one by modality."""
    source = volume.datasets[0]
    procedure_codes = source.get("ProcedureCodeSequence")
    if procedure_codes:
        item = procedure_codes[0]
        if "CodeValue" in item and "CodingSchemeDesignator" in item and "CodeMeaning" in item:
            return CodedConcept(
                str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)
            )
    if template.procedure_reported is not None:
        return template.procedure_reported.concept
    return CT_UNSPECIFIED_BODY_REGION if volume.modality == "CT" else IMAGING_PROCEDURE


def _measurements(
    prediction: Prediction, template: ResultTemplate, segment: SegmentSpec
) -> list[hd.sr.Measurement]:
    values = prediction.measurements.get(segment.label_value, {})
    unknown = sorted(set(values) - {spec.key for spec in template.measurements})
    if unknown:
        raise TemplateError(
            f"template {template.name}: measurements {unknown} for label "
            f"{segment.label_value} are not declared in the template"
        )
    items = []
    for spec in template.measurements:  # template order keeps the SR stable
        if spec.key not in values:
            continue
        value = float(values[spec.key])
        if not math.isfinite(value):
            log.warning(
                "measurement skipped, not finite template=%s label=%d key=%s",
                template.name,
                segment.label_value,
                spec.key,
            )
            continue
        items.append(
            hd.sr.Measurement(
                name=spec.concept.concept,
                value=value,
                unit=spec.unit_concept,
                derivation=spec.derivation.concept if spec.derivation is not None else None,
                algorithm_id=sr_algorithm_identification(template),
            )
        )
    return items


def _segment_group(
    prediction: Prediction,
    template: ResultTemplate,
    segment: SegmentSpec,
    segment_item: Dataset,
    seg: hd.seg.Segmentation,
    source_series_uid: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    finding_sites = None
    if segment.type_modifier is not None:
        finding_sites = [
            hd.sr.FindingSite(
                anatomic_location=segment.type.concept,
                laterality=segment.type_modifier.concept,
            )
        ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=str(segment_item.TrackingUID), identifier=segment.tracking_id
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=int(segment_item.SegmentNumber),
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        finding_type=segment.type.concept,
        finding_category=segment.category.concept,
        finding_sites=finding_sites,
        algorithm_id=sr_algorithm_identification(template),
        measurements=_measurements(prediction, template, segment),
    )


def build_sr(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    seg: hd.seg.Segmentation,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    revision: int,
    predecessor: SOPReference | None = None,
    series_description: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 measurement report that accompanies ``seg``.

    Parameters
    ----------
    volume
        The source volume (its headers become the Image Library and the evidence).
    prediction
        Its ``measurements`` (``{label: {key: value}}``) fill the groups; keys must be
        declared in the template. Non-finite values are left out with a warning.
    template
        The template ``seg`` was built with.
    seg
        The SEG of the same prediction; groups reference its segments and share
        their Tracking UIDs.
    series_instance_uid, sop_instance_uid, series_number, series_description
        Identity of the new series and instance.
    revision
        Result revision; with ``predecessor`` it marks a report that supersedes one.
    predecessor
        The SR this one supersedes, recorded in PredecessorDocumentsSequence.

    Raises
    ------
    TemplateError
        A measurement key or a SEG segment does not match the template.
    ValueError
        ``predecessor`` is this very instance (the same input was built twice).
    """
    if predecessor is not None and predecessor.sop_instance_uid == sop_instance_uid:
        raise ValueError(
            f"SR {sop_instance_uid} cannot supersede itself: the predecessor was built "
            "from the same input, so re-send it instead of a new revision"
        )
    stray_labels = sorted(set(prediction.measurements) - {s.label_value for s in template.segments})
    if stray_labels:
        raise TemplateError(
            f"template {template.name}: measurements for labels {stray_labels} that the "
            "template does not declare"
        )
    segment_items = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    groups = []
    for number, segment in enumerate(template.segments, start=1):
        item = segment_items.get(number)
        if item is None or str(item.SegmentLabel) != segment.label:
            raise TemplateError(
                f"template {template.name}: SEG segment {number} is not {segment.label!r}"
            )
        groups.append(
            _segment_group(prediction, template, segment, item, seg, volume.series_instance_uid)
        )

    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device_observer(template),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported(volume, template),
        imaging_measurements=groups,
        referenced_images=list(volume.datasets),
    )
    algorithm = template.algorithm
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*volume.datasets, seg],
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        is_final=False,
        previous_versions=[predecessor.as_dataset()] if predecessor is not None else None,
        series_description=series_description,
        contributing_equipment=[processing_equipment(template)],
    )
    sr.ManufacturerModelName = algorithm.name
    sr.SoftwareVersions = algorithm.version
    sr.DeviceUID = algorithm.device_uid
    log.info(
        "sr built sop_instance_uid=%s series_uid=%s groups=%d revision=%d supersedes=%s",
        sop_instance_uid,
        series_instance_uid,
        len(groups),
        revision,
        predecessor.sop_instance_uid if predecessor is not None else "-",
    )
    return sr
