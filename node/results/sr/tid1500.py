"""Comprehensive 3D SR (TID 1500 Measurement Report) for a segmentation result.

The report has an Image Library of the source images, the algorithm as device
observer, the procedure reported, and per template segment:

* a TID 1411 volumetric group that references the SEG segment and repeats its Tracking
  UID, with the segment's measurements (the plugin's and the node-computed ones, coded
  per template, TID 4019 algorithm identification) and qualitative findings;
* for a non-empty segment, a TID 1410 planar group with the same Tracking UID whose
  SCOORD POLYLINE is the segment's outline on its slice of largest area, with that
  area: viewers that draw only image-coordinate ROIs (OHIF) show these.

A ``predecessor`` (the SR this one supersedes) goes into the Predecessor Documents
Sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from highdicom.sr.value_types import ContentSequence
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import DS

from node.contract.plugin import Prediction
from node.contract.template import ResultTemplate, SegmentSpec
from node.contract.volume import Volume
from node.errors import TemplateError
from node.results.analysis import Analysis
from node.results.contour import polygon_area
from node.results.header_values import HeaderValues
from node.results.identity import SeriesIdentity
from node.results.provenance import (
    device_observer,
    instance_arguments,
    set_general_equipment,
    sr_algorithm_identification,
)
from node.results.reference import SOPReference
from node.results.sr import encoded
from node.results.sr.radiomics import declare_private_scheme, sr_measurement_items

log = logging.getLogger(__name__)

#: Procedure reported for CT when neither the source nor the template names one.
CT_UNSPECIFIED_BODY_REGION = CodedConcept("25045-6", "LN", "CT unspecified body region")
#: Last-resort procedure reported for other modalities.
IMAGING_PROCEDURE = CodedConcept("363679005", "SCT", "Imaging procedure")
#: Concept of the area measured in each outline group.
AREA = CodedConcept("42798000", "SCT", "Area")


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


def _measurements(analysis: Analysis, segment: SegmentSpec) -> list[hd.sr.Measurement]:
    template = analysis.template
    return [
        hd.sr.Measurement(
            name=template.measurement(key).concept.concept,
            value=value,
            unit=template.measurement(key).unit_concept,
            derivation=template.measurement(key).derivation_concept,
            algorithm_id=sr_algorithm_identification(template),
        )
        for key, value in analysis.measurements[segment.label_value].items()
    ]


def _qualitative(analysis: Analysis, segment: SegmentSpec) -> list[hd.sr.QualitativeEvaluation]:
    return [
        hd.sr.QualitativeEvaluation(name=f.spec.concept.concept, value=f.value.concept)
        for f in analysis.findings[segment.label_value]
    ]


def _finding_sites(segment: SegmentSpec) -> list[hd.sr.FindingSite] | None:
    if segment.type_modifier is None:
        return None
    return [
        hd.sr.FindingSite(
            anatomic_location=segment.type.concept,
            laterality=segment.type_modifier.concept,
        )
    ]


def _segment_group(
    analysis: Analysis,
    segment: SegmentSpec,
    segment_item: Dataset,
    seg: Dataset,
    source_series_uid: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    template = analysis.template
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
        finding_sites=_finding_sites(segment),
        algorithm_id=sr_algorithm_identification(template),
        measurements=_measurements(analysis, segment),
        qualitative_evaluations=_qualitative(analysis, segment) or None,
    )


def _outline_group(
    analysis: Analysis, segment: SegmentSpec, tracking_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410 group: the segment's outline on its slice of largest area, and that area.

    Viewers that draw only image-coordinate ROIs (OHIF) show this. It shares the
    segment's Tracking UID: it is the same finding, seen in one plane.
    """
    label = segment.label_value
    slice_index = analysis.largest_slices.get(label)
    if slice_index is None:
        return None
    polygon = analysis.outlines(label, slice_index)[0]
    source = analysis.volume.datasets[slice_index]
    spacing = analysis.volume.spacing
    area_cm2 = polygon_area(polygon) * spacing[1] * spacing[2] / 100.0
    template = analysis.template
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid, identifier=f"{segment.tracking_id} outline"[:64]
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polygon.astype(np.float32),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
            ),
        ),
        finding_type=segment.type.concept,
        finding_category=segment.category.concept,
        finding_sites=_finding_sites(segment),
        algorithm_id=sr_algorithm_identification(template),
        measurements=[
            hd.sr.Measurement(
                name=AREA,
                value=area_cm2,
                unit=CodedConcept("cm2", "UCUM", "square centimeter"),
                algorithm_id=sr_algorithm_identification(template),
            )
        ],
    )


def build_sr(
    volume: Volume,
    prediction: Prediction,
    template: ResultTemplate,
    seg: Dataset | None,
    *,
    series: SeriesIdentity,
    sop_instance_uid: str,
    revision: int,
    predecessor: SOPReference | None = None,
    analysis: Analysis | None = None,
    extra_groups: Sequence[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = (),
    splice_groups: bool = True,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 measurement report that accompanies ``seg``.

    Parameters
    ----------
    volume
        The source volume (its headers become the Image Library and the evidence).
    prediction
        Its ``measurements`` (``{label: {key: value}}``) fill the groups with the
        values the node computes for ``compute:`` measurements; keys must be declared
        in the template. Non-finite values are left out with a warning.
    template
        The template ``seg`` was built with.
    seg
        The SEG (any type) of the same prediction; volumetric groups reference its
        segments and share their Tracking UIDs. None for a routine without a label
        map (a classifier or detector): the report has no segment groups.
    series, sop_instance_uid
        Identity of the new series (:class:`node.results.identity.SeriesIdentity`) and
        of the instance.
    revision
        Result revision; with ``predecessor`` it marks a report that supersedes one.
    predecessor
        The SR this one supersedes, recorded in PredecessorDocumentsSequence.
    analysis
        The prediction already checked against the template (built when omitted).
    extra_groups
        Further measurement groups after the segments' (classifications and
        detections, :mod:`node.results.sr.findings`).
    splice_groups
        Add the measurement groups after highdicom's SR constructor
        (:meth:`MeasurementReportSR.with_groups_spliced`, the same dataset); False
        passes them through it, the reference the tests compare with.

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
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    if analysis is None and seg is not None:
        analysis = Analysis(volume, prediction, template)
    segment_items = {} if seg is None else {int(i.SegmentNumber): i for i in seg.SegmentSequence}
    for number, segment in enumerate(template.segments if seg is not None else (), start=1):
        item = segment_items.get(number)
        if item is None or str(item.SegmentLabel) != segment.label:
            raise TemplateError(
                f"template {template.name}: SEG segment {number} is not {segment.label!r}"
            )
        assert analysis is not None and seg is not None
        groups.append(_segment_group(analysis, segment, item, seg, volume.series_instance_uid))
        outline = _outline_group(analysis, segment, str(item.TrackingUID))
        if outline is not None:
            groups.append(outline)
    groups.extend(extra_groups)

    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device_observer(template),
        )
    )
    # The Image Library is spliced in after construction (see image_library): building
    # it through highdicom's content-item classes, then deep-copying and searching it
    # in the SR constructor, took ~4 s for 100 images.
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=procedure_reported(volume, template),
        imaging_measurements=groups,
        referenced_images=None,
    )
    # Each instance once: a multi-frame image is listed once per frame in a volume.
    images = list({str(d.SOPInstanceUID): d for d in volume.datasets}.values())
    evidence = [*images, *([seg] if seg is not None else [])]
    arguments: dict[str, Any] = {
        "evidence": evidence,
        "is_complete": True,
        "is_final": False,
        "previous_versions": [predecessor.as_dataset()] if predecessor is not None else None,
        **instance_arguments(template, series, sop_instance_uid),
    }
    if splice_groups:
        sr = MeasurementReportSR.with_groups_spliced(report, **arguments)
    else:
        sr = MeasurementReportSR(content=report, **arguments)
    sr.add_image_library(image_library(images))
    radiomics = analysis.radiomics if analysis is not None else None
    if radiomics is not None and seg is not None:
        # Added after construction like the Image Library: ~100 features per segment
        # through highdicom's group and SR constructors cost seconds per segment.
        for number, segment in enumerate(template.segments, start=1):
            features = sr_measurement_items(radiomics, segment.label_value)
            if features:
                sr.add_volumetric_measurements(str(segment_items[number].TrackingUID), features)
        declare_private_scheme(sr, radiomics)
    set_general_equipment(sr, series)
    log.info(
        "sr built sop_instance_uid=%s series_uid=%s groups=%d revision=%d supersedes=%s",
        sop_instance_uid,
        series.series_instance_uid,
        len(groups),
        revision,
        predecessor.sop_instance_uid if predecessor is not None else "-",
    )
    return sr


class MeasurementReportSR(hd.sr.Comprehensive3DSR):
    """A Comprehensive 3D SR whose Image Library is added after construction.

    :attr:`content` (highdicom's typed view of the content tree) is rebuilt from the
    dataset on first use after :meth:`add_image_library`, so it always matches what
    is written.
    """

    @classmethod
    def with_groups_spliced(
        cls, report: hd.sr.MeasurementReport, *, record_evidence: bool = True, **arguments: Any
    ) -> MeasurementReportSR:
        """The SR of ``report``, made by the constructor without the measurement groups.

        highdicom's constructor deep-copies the content (for :attr:`content`) and
        searches it for the instances it references, which took seconds for 100
        segments. It keeps the content items it was given, so emptying the Imaging
        Measurements container while it runs and putting its groups back gives the
        dataset the plain constructor gives (a test compares them). The search only
        checks that every referenced instance is in the evidence: the groups reference
        the source images and the SEG, which the evidence always lists. The constructor
        gets only the first evidence instance (its patient and study); the evidence
        sequences of all are then made by :func:`_evidence_references`, the same items.
        """
        container = next(
            item
            for item in report[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS_CODE
        )
        groups = container.ContentSequence
        container.ContentSequence = ContentSequence()
        # highdicom makes an item per evidence instance through pydicom's attribute
        # setters; the constructor gets the first (its patient and study) and the
        # evidence sequences are then made directly, as collect_evidence makes them.
        evidence: Sequence[Dataset] = arguments.pop("evidence")
        try:
            sr = cls(content=report, evidence=list(evidence[:1]), **arguments)
        finally:
            container.ContentSequence = groups
        current, other = _evidence_references(evidence, str(sr.StudyInstanceUID))
        for keyword, items in (
            ("CurrentRequestedProcedureEvidenceSequence", current),
            ("PertinentOtherEvidenceSequence", other),
        ):
            if items and (keyword != "PertinentOtherEvidenceSequence" or record_evidence):
                setattr(sr, keyword, items)
            elif keyword in sr:
                delattr(sr, keyword)
        sr._content_is_stale = True
        return sr

    def add_image_library(self, library: Dataset) -> None:
        """Insert the Image Library container where TID 1500 has it: before the measurements."""
        items: list[Dataset] = list(self["ContentSequence"].value)
        position = next(
            index
            for index, item in enumerate(items)
            if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS_CODE
        )
        # A plain pydicom Sequence: highdicom's ContentSequence takes only its own
        # content-item classes.
        self.ContentSequence = DicomSequence([*items[:position], library, *items[position:]])
        self._content_is_stale = True

    def add_volumetric_measurements(
        self, tracking_uid: str, measurements: Sequence[Dataset]
    ) -> None:
        """Append TID 300 NUM items to the TID 1411 group of ``tracking_uid``.

        They go after the group's last measurement (before its qualitative evaluations).
        """
        group = _volumetric_group(self, tracking_uid)
        items: list[Dataset] = list(group.ContentSequence)
        numbers = [i for i, item in enumerate(items) if item.ValueType == "NUM"]
        if numbers:
            position = numbers[-1] + 1
        else:
            position = next(
                (
                    i
                    for i, item in enumerate(items)
                    if item.RelationshipType == "CONTAINS" and item.ValueType in ("CODE", "TEXT")
                ),
                len(items),
            )
        # Set as an element: highdicom's own ContentSequence takes only its item classes.
        group[_CONTENT_SEQUENCE] = DataElement(
            _CONTENT_SEQUENCE,
            "SQ",
            DicomSequence([*items[:position], *measurements, *items[position:]]),
        )
        self._content_is_stale = True

    @property
    def content(self) -> ContentSequence:
        if getattr(self, "_content_is_stale", False):
            root = Dataset()
            root.ConceptNameCodeSequence = self.ConceptNameCodeSequence
            root.ContentSequence = self.ContentSequence
            root.ValueType = self.ValueType
            root.ContinuityOfContent = self.ContinuityOfContent
            root.ContentTemplateSequence = self.ContentTemplateSequence
            self._content = hd.sr.MeasurementReport.from_sequence([root], copy=True)
            self._content_is_stale = False
        return self._content


def _evidence_references(
    evidence: Sequence[Dataset], study_instance_uid: str
) -> tuple[list[Dataset], list[Dataset]]:
    """Items of the Current Requested Procedure and Pertinent Other Evidence sequences,
    as highdicom's ``collect_evidence`` makes them: each instance once, grouped by
    study and series in the order first seen, this study's in the first."""
    groups: tuple[dict[tuple[str, str], list[Dataset]], ...] = ({}, {})
    seen: set[str] = set()
    values = HeaderValues()  # the study, series and class of every source: converted once
    for source in evidence:
        instance = _attribute(source, _SOP_INSTANCE, "SOPInstanceUID", values)
        if instance in seen:
            continue
        seen.add(instance)
        item = _new_item()
        _put(
            item, _REFERENCED_SOP_CLASS, "UI", _attribute(source, _SOP_CLASS, "SOPClassUID", values)
        )
        _put(item, _REFERENCED_SOP_INSTANCE, "UI", instance)
        study = _attribute(source, _STUDY_INSTANCE, "StudyInstanceUID", values)
        key = (study, _attribute(source, _SERIES_INSTANCE, "SeriesInstanceUID", values))
        groups[study != study_instance_uid].setdefault(key, []).append(item)
    references: tuple[list[Dataset], list[Dataset]] = ([], [])
    for group, found in zip(groups, references, strict=True):
        studies: dict[str, list[Dataset]] = {}
        for (study, series), items in group.items():
            series_item = _new_item()
            _put(series_item, _SERIES_INSTANCE, "UI", series)
            _put(series_item, _REFERENCED_SOP_SEQUENCE, "SQ", DicomSequence(items))
            studies.setdefault(study, []).append(series_item)
        for study, series_items in studies.items():
            study_item = _new_item()
            _put(study_item, _STUDY_INSTANCE, "UI", study)
            _put(study_item, _REFERENCED_SERIES_SEQUENCE, "SQ", DicomSequence(series_items))
            found.append(study_item)
    return references


#: Code value of TID 1500's Imaging Measurements container (the Image Library precedes it).
IMAGING_MEASUREMENTS_CODE = "126010"
_TRACKING_UID_CODE = "112040"
_CONTENT_SEQUENCE = 0x0040A730
_REFERENCED_SEGMENT_CODE = "121191"


def _volumetric_group(sr: Dataset, tracking_uid: str) -> Dataset:
    """The TID 1411 container (it references a segment) with this Tracking UID."""
    measurements = next(
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS_CODE
    )
    for group in measurements.ContentSequence:
        codes_in = {
            str(item.ConceptNameCodeSequence[0].CodeValue): item
            for item in group.get("ContentSequence", [])
        }
        uid = codes_in.get(_TRACKING_UID_CODE)
        if (
            _REFERENCED_SEGMENT_CODE in codes_in
            and uid is not None
            and str(uid.UID) == tracking_uid
        ):
            return group
    raise KeyError(f"no volumetric group with Tracking UID {tracking_uid}")


_CROSS_SECTIONAL = ("CT", "MR", "PT")
_PIXELS = ("{pixels}", "UCUM", "Pixels")
_MM = ("mm", "UCUM", "mm")
_UNITLESS = ("{-1:1}", "UCUM", "{-1:1}")


_CODE_VALUE = BaseTag(0x00080100)
_CODING_SCHEME = BaseTag(0x00080102)
_CODE_MEANING = BaseTag(0x00080104)
_REFERENCED_SOP_CLASS = BaseTag(0x00081150)
_REFERENCED_SOP_INSTANCE = BaseTag(0x00081155)
_REFERENCED_SOP_SEQUENCE = BaseTag(0x00081199)
_REFERENCED_SERIES_SEQUENCE = BaseTag(0x00081115)
_STUDY_INSTANCE = BaseTag(0x0020000D)
_SERIES_INSTANCE = BaseTag(0x0020000E)
_UNITS_CODE = BaseTag(0x004008EA)
_RELATIONSHIP_TYPE = BaseTag(0x0040A010)
_VALUE_TYPE = BaseTag(0x0040A040)
_CONCEPT_NAME = BaseTag(0x0040A043)
_CONTINUITY = BaseTag(0x0040A050)
_UID = BaseTag(0x0040A124)
_FLOATING_POINT_VALUE = BaseTag(0x0040A161)
_CONCEPT_CODE = BaseTag(0x0040A168)
_MEASURED_VALUE = BaseTag(0x0040A300)
_NUMERIC_VALUE = BaseTag(0x0040A30A)
_CONTENT_SEQUENCE = BaseTag(0x0040A730)


#: The state of an empty Dataset: copied into each library item instead of running
#: Dataset.__init__ (a dozen overridden attribute sets per item, ~10,000 items).
_EMPTY_STATE = Dataset().__dict__
_STATE_COPIABLE = all(
    isinstance(value, str | bool | int | dict | type(None)) for value in _EMPTY_STATE.values()
)


def _new_item() -> Dataset:
    """An empty Dataset, as ``Dataset()`` makes it (its dicts fresh)."""
    if not _STATE_COPIABLE:  # another pydicom: the plain way
        return Dataset()
    item = Dataset.__new__(Dataset)
    state = item.__dict__
    for key, value in _EMPTY_STATE.items():
        state[key] = dict(value) if isinstance(value, dict) else value
    return item


def _put(dataset: Dataset, tag: int, vr: str, value: object) -> None:
    """``dataset.add_new(tag, vr, value)`` for a value already of the type pydicom would
    make of it (str, UID, DS, float, Sequence of new items): no conversion, no
    validation, no private-tag or pixel checks (none of which applies here). About a
    third of the cost per element, and the Image Library has ~30,000 of them."""
    key = tag if isinstance(tag, BaseTag) else BaseTag(tag)
    dataset._dict[key] = DataElement(
        key, vr, value, already_converted=True, validation_mode=config.IGNORE
    )


class _LibraryEncoder:
    """Encodes Image Library items directly as datasets, the way highdicom's classes do.

    Code items are made once per encoder and shared between entries of one library
    (they are never modified): that halves the number of elements to create.
    """

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str, str], Dataset] = {}

    def code(self, value: str, scheme: str, meaning: str) -> Dataset:
        key = (value, scheme, meaning)
        item = self._codes.get(key)
        if item is None:
            item = _new_item()
            _put(item, _CODE_VALUE, "SH", value)
            _put(item, _CODING_SCHEME, "SH", scheme)
            _put(item, _CODE_MEANING, "LO", meaning)
            self._codes[key] = item
        return item

    def item(self, relationship: str, value_type: str, name: tuple[str, str, str]) -> Dataset:
        item = _new_item()
        _put(item, _RELATIONSHIP_TYPE, "CS", relationship)
        _put(item, _VALUE_TYPE, "CS", value_type)
        _put(item, _CONCEPT_NAME, "SQ", DicomSequence([self.code(*name)]))
        return item

    def num(self, name: tuple[str, str, str], value: object, unit: tuple[str, str, str]) -> Dataset:
        # Same encoding as highdicom's NumContentItem: DS auto-formatted, FD for floats.
        if not isinstance(value, int | float):
            raise TypeError(f"numeric descriptor {name[2]} is {value!r}")
        item = self.item("HAS ACQ CONTEXT", "NUM", name)
        measured = _new_item()
        _put(measured, _UNITS_CODE, "SQ", DicomSequence([self.code(*unit)]))
        _put(measured, _NUMERIC_VALUE, "DS", DS(value, auto_format=True))
        if isinstance(value, float):
            _put(measured, _FLOATING_POINT_VALUE, "FD", value)
        _put(item, _MEASURED_VALUE, "SQ", DicomSequence([measured]))
        return item

    def uidref(self, name: tuple[str, str, str], value: str) -> Dataset:
        item = self.item("HAS ACQ CONTEXT", "UIDREF", name)
        _put(item, _UID, "UI", UID(value))
        return item

    def container(
        self, name: tuple[str, str, str], children: list[Dataset] | DicomSequence
    ) -> Dataset:
        item = self.item("CONTAINS", "CONTAINER", name)
        _put(item, _CONTINUITY, "CS", "CONTINUOUS")
        if not isinstance(children, DicomSequence):
            children = DicomSequence(children)
        _put(item, _CONTENT_SEQUENCE, "SQ", children)
        return item

    def descriptor(self, descriptor: _Descriptor) -> Dataset:
        """A TID 1602 descriptor item, as highdicom's ImageLibrary makes it."""
        kind, name, value, unit = descriptor
        if kind == "num":
            assert unit is not None
            return self.num(name, value, unit)
        if kind == "uidref":
            return self.uidref(name, value)
        item = self.item("HAS ACQ CONTEXT", "CODE", name)
        _put(item, _CONCEPT_CODE, "SQ", DicomSequence([self.code(*value)]))
        return item

    def entry(self, image: Dataset, own: Sequence[_Descriptor]) -> Dataset:
        """TID 1601 entry of ``image`` with the descriptors its group does not hold."""
        entry = self.item("CONTAINS", "IMAGE", ("260753009", "SCT", "Source"))
        reference = _new_item()
        _put(reference, _REFERENCED_SOP_CLASS, "UI", UID(image[_SOP_CLASS].value))
        _put(reference, _REFERENCED_SOP_INSTANCE, "UI", UID(image[_SOP_INSTANCE].value))
        _put(entry, _REFERENCED_SOP_SEQUENCE, "SQ", DicomSequence([reference]))
        if own:
            items = [self.descriptor(descriptor) for descriptor in own]
            _put(entry, _CONTENT_SEQUENCE, "SQ", DicomSequence(items))
        return entry


class _LibraryBytes:
    """Encodes Image Library entries as :class:`_LibraryEncoder` makes them, to bytes.

    Code items, the modality and frame-of-reference descriptors and each NUM descriptor
    by its value are encoded once per library: from slice to slice only the position
    along the stack and the instance UID usually change.
    """

    def __init__(self) -> None:
        self._codes: dict[tuple[str, str, str], bytes] = {}
        self._items: dict[tuple[Any, ...], bytes] = {}
        self._keyed: dict[tuple[Any, ...], bytes] = {}
        self._source_head = self.head("CONTAINS", "IMAGE", ("260753009", "SCT", "Source"))

    def code(self, name: tuple[str, str, str]) -> bytes:
        item = self._codes.get(name)
        if item is None:
            item = self._codes[name] = (
                encoded.text(_CODE_VALUE, b"SH", name[0])
                + encoded.text(_CODING_SCHEME, b"SH", name[1])
                + encoded.text(_CODE_MEANING, b"LO", name[2])
            )
        return item

    def head(self, relationship: str, value_type: str, name: tuple[str, str, str]) -> bytes:
        return (
            encoded.text(_RELATIONSHIP_TYPE, b"CS", relationship)
            + encoded.text(_VALUE_TYPE, b"CS", value_type)
            + encoded.sequence(_CONCEPT_NAME, [self.code(name)])
        )

    def num(self, name: tuple[str, str, str], value: object, unit: tuple[str, str, str]) -> bytes:
        key = (
            name,
            unit,
            type(value),
            value,
            getattr(value, "original_string", None),
            getattr(value, "auto_format", None),
        )
        item = self._items.get(key)
        if item is None:
            if not isinstance(value, int | float):
                raise TypeError(f"numeric descriptor {name[2]} is {value!r}")
            measured = encoded.sequence(_UNITS_CODE, [self.code(unit)])
            if isinstance(value, float):
                measured += encoded.floating(_FLOATING_POINT_VALUE, value)
            measured += encoded.decimal_string(_NUMERIC_VALUE, DS(value, auto_format=True))
            item = self.head("HAS ACQ CONTEXT", "NUM", name) + encoded.sequence(
                _MEASURED_VALUE, [measured]
            )
            if value == value:  # NaN is never found again
                self._items[key] = item
        return item

    def once(self, key: tuple[Any, ...], make: Callable[[], bytes]) -> bytes:
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = make()
        return item

    def descriptor(self, descriptor: _Descriptor) -> bytes:
        """The bytes of :meth:`_LibraryEncoder.descriptor`'s item."""
        kind, name, value, unit = descriptor
        if kind == "num":
            assert unit is not None
            return self.num(name, value, unit)
        if kind == "uidref":
            return self.once(
                ("uidref", name, value),
                lambda: (
                    self.head("HAS ACQ CONTEXT", "UIDREF", name) + encoded.text(_UID, b"UI", value)
                ),
            )
        return self.once(
            ("code", name, value),
            lambda: (
                self.head("HAS ACQ CONTEXT", "CODE", name)
                + encoded.sequence(_CONCEPT_CODE, [self.code(value)])
            ),
        )

    def keyed(self, descriptor: _Descriptor, key: tuple[Any, ...]) -> bytes:
        """:meth:`descriptor`, found by ``key`` (its :attr:`_Descriptor.key`) once made."""
        item = self._keyed.get(key)
        if item is None:
            item = self.descriptor(descriptor)
            if descriptor.value == descriptor.value:  # NaN is never found again
                self._keyed[key] = item
        return item

    def entry(self, sop_class_uid: str, sop_instance_uid: str, own: Sequence[bytes]) -> bytes:
        """The bytes of :meth:`_LibraryEncoder.entry`'s item, its descriptors encoded."""
        reference = encoded.text(_REFERENCED_SOP_CLASS, b"UI", sop_class_uid)
        reference += encoded.text(_REFERENCED_SOP_INSTANCE, b"UI", sop_instance_uid)
        entry = encoded.sequence(_REFERENCED_SOP_SEQUENCE, [reference]) + self._source_head
        if own:
            entry += encoded.sequence(_CONTENT_SEQUENCE, own)
        return entry


class _Descriptor(NamedTuple):
    """One TID 1602 descriptor of an image: ``kind`` is ``code``, ``uidref`` or ``num``
    (``value`` a coded concept, a UID string, a number with ``unit``)."""

    kind: str
    name: tuple[str, str, str]
    value: Any
    unit: tuple[str, str, str] | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for two descriptors exactly when their items' bytes are equal.

        A float value is in it as a plain float: the same equality as a DSfloat's
        (which hashes and compares in Python), and NaN never equal, even to itself.
        """
        value = self.value
        return (
            self.kind,
            self.name,
            self.unit,
            type(value),
            float(value) if isinstance(value, float) else value,
            getattr(value, "original_string", None),
            getattr(value, "auto_format", None),
        )


def _descriptors(image: Dataset, values: HeaderValues | None = None) -> list[_Descriptor]:
    """The TID 1602/1604 descriptors highdicom's ImageLibrary gives ``image``, in its order
    (``values`` reads the header, :class:`~node.results.header_values.HeaderValues`).

    Raises ``AttributeError`` naming what a cross-sectional image lacks, as highdicom does.
    """
    try:
        return _read_descriptors(image, HeaderValues() if values is None else values)
    except KeyError as error:  # as highdicom's (pydicom's attribute access)
        raise AttributeError(f"source image lacks {error}") from None


def _read_descriptors(image: Dataset, values: HeaderValues) -> list[_Descriptor]:
    elements = image._dict
    described = [
        _Descriptor("code", _MODALITY_NAME, _coded_modality(str(values(image, _SOP_CLASS))))
    ]
    if _FRAME_OF_REFERENCE in elements:
        described.append(
            _Descriptor("uidref", _FRAME_OF_REFERENCE_NAME, str(values(image, _FRAME_OF_REFERENCE)))
        )
    spacing = values(image, _PIXEL_SPACING)
    position = values(image, _POSITION)
    orientation = values(image, _ORIENTATION)
    described += [
        _Descriptor("num", ("110910", "DCM", "Pixel Data Rows"), values(image, _ROWS), _PIXELS),
        _Descriptor(
            "num", ("110911", "DCM", "Pixel Data Columns"), values(image, _COLUMNS), _PIXELS
        ),
        _Descriptor("num", ("111026", "DCM", "Horizontal Pixel Spacing"), spacing[1], _MM),
        _Descriptor("num", ("111066", "DCM", "Vertical Pixel Spacing"), spacing[0], _MM),
        _Descriptor(
            "num", ("112225", "DCM", "Slice Thickness"), values(image, _SLICE_THICKNESS), _MM
        ),
        _Descriptor("num", ("110901", "DCM", "Image Position (Patient) X"), position[0], _MM),
        _Descriptor("num", ("110902", "DCM", "Image Position (Patient) Y"), position[1], _MM),
        _Descriptor("num", ("110903", "DCM", "Image Position (Patient) Z"), position[2], _MM),
    ]
    for index, name in enumerate(_ORIENTATION_NAMES):
        described.append(_Descriptor("num", name, orientation[index], _UNITLESS))
    if _SPACING_BETWEEN_SLICES in elements:
        described.append(
            _Descriptor(
                "num",
                ("112226", "DCM", "Spacing between slices"),
                values(image, _SPACING_BETWEEN_SLICES),
                _MM,
            )
        )
    return described


def shared_descriptors(
    described: Sequence[Sequence[_Descriptor]],
) -> tuple[list[_Descriptor], list[list[_Descriptor]]]:
    """The descriptors every image of a group has with the same value (for the group's
    container, TID 1600 row 3), and each image's others (for its entry, TID 1601).

    A group of one image keeps all of its descriptors on its entry, as highdicom does.
    """
    shared, owns = _shared_keyed([[(d.key, d) for d in own] for own in described])
    return [d for _, d in shared], [[d for _, d in own] for own in owns]


_Keyed = list[tuple[tuple[Any, ...], _Descriptor]]


def _shared_keyed(described: Sequence[_Keyed]) -> tuple[_Keyed, list[_Keyed]]:
    """:func:`shared_descriptors` of descriptors with their keys (each computed once)."""
    if len(described) < 2:
        return [], [list(own) for own in described]
    common = set.intersection(*({key for key, _ in own} for own in described))
    shared = [keyed for keyed in described[0] if keyed[0] in common]
    return shared, [[keyed for keyed in own if keyed[0] not in common] for own in described]


_SOP_CLASS = BaseTag(0x00080016)
_SOP_INSTANCE = BaseTag(0x00080018)
_SLICE_THICKNESS = BaseTag(0x00180050)
_SPACING_BETWEEN_SLICES = BaseTag(0x00180088)
_POSITION = BaseTag(0x00200032)
_ORIENTATION = BaseTag(0x00200037)
_FRAME_OF_REFERENCE = BaseTag(0x00200052)
_ROWS = BaseTag(0x00280010)
_COLUMNS = BaseTag(0x00280011)
_PIXEL_SPACING = BaseTag(0x00280030)
_AXES = ("Row X", "Row Y", "Row Z", "Column X", "Column Y", "Column Z")
_MODALITY = BaseTag(0x00080060)
_MODALITY_NAME = ("121139", "DCM", "Modality")
_FRAME_OF_REFERENCE_NAME = ("112227", "DCM", "Frame of Reference UID")
_ORIENTATION_NAMES = tuple(
    (str(110904 + index), "DCM", f"Image Orientation (Patient) {axis}")
    for index, axis in enumerate(_AXES)
)


def _code(code: Code) -> tuple[str, str, str]:
    return (code.value, code.scheme_designator, code.meaning)


#: CID 29 Acquisition Modality of the CT, MR and PET image storage SOP classes, as
#: highdicom's Image Library codes them (through its private ``_get_coded_modality``,
#: which the node no longer imports); images of other SOP classes go through
#: :class:`highdicom.sr.ImageLibrary` itself. tests/test_result_parts.py compares each.
_CODED_MODALITY: dict[str, tuple[str, str, str]] = {
    **dict.fromkeys(
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"),
        _code(codes.cid29.ComputedTomography),
    ),
    **dict.fromkeys(
        (
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.840.10008.5.1.4.1.1.4.1",
            "1.2.840.10008.5.1.4.1.1.4.3",
            "1.2.840.10008.5.1.4.1.1.4.4",
        ),
        _code(codes.cid29.MagneticResonance),
    ),
    **dict.fromkeys(
        (
            "1.2.840.10008.5.1.4.1.1.128",
            "1.2.840.10008.5.1.4.1.1.128.1",
            "1.2.840.10008.5.1.4.1.1.130",
        ),
        _code(codes.cid29.PositronEmissionTomography),
    ),
}


def _coded_modality(sop_class_uid: str) -> tuple[str, str, str]:
    return _CODED_MODALITY[sop_class_uid]


def _group_items(
    shared: list[_Descriptor], members: list[Dataset], owns: list[list[_Descriptor]]
) -> list[Dataset]:
    """A group's content as data sets: its shared descriptors, then its entries (code
    items shared between these only)."""
    encoder = _LibraryEncoder()
    return [encoder.descriptor(descriptor) for descriptor in shared] + [
        encoder.entry(image, own) for image, own in zip(members, owns, strict=True)
    ]


def image_library(images: Sequence[Dataset]) -> Dataset:
    """TID 1600 Image Library container of ``images``.

    Cross-sectional images (CT, MR, PT) are grouped by modality and frame of reference
    as highdicom groups them. The TID 1602 descriptors every image of a group has with
    the same value (modality, frame of reference, rows, columns, pixel spacing, slice
    thickness, orientation…) are written once, on the group's container (TID 1600 row 3
    says they then apply to each of its entries); each entry keeps the rest (its
    position). highdicom's ImageLibrary repeats them on every entry: a 300-slice library
    had 62,000 elements, and a PACS such as Orthanc spends most of an SR's store time
    on each element (benchmarks/README.md, "Export against storescu"). Each entry with
    its group's descriptors says exactly what highdicom's entry says
    (tests/test_sr_fast.py).

    The content is encoded directly to bytes: each group's items are an
    :class:`~node.results.sr.encoded.EncodedSequence` that the node's writer copies
    and that makes them as data sets when read. Other images go through highdicom.
    """
    if not images:
        raise ValueError("an Image Library needs at least one image")
    values = HeaderValues()  # most of each header holds what every other one holds
    sop_classes = []
    for image in images:
        if str(values.get(image, _MODALITY, "")) not in _CROSS_SECTIONAL:
            return hd.sr.ImageLibrary(list(images))[0]
        sop_class = str(_sop_class(image, values))
        if sop_class not in _CODED_MODALITY:
            return hd.sr.ImageLibrary(list(images))[0]
        sop_classes.append(sop_class)
    encoder = _LibraryEncoder()
    groups: dict[tuple[str, ...], list[tuple[Dataset, str]]] = {}
    for image, sop_class in zip(images, sop_classes, strict=True):
        modality = _coded_modality(sop_class)
        key = (
            (modality[0], str(values(image, _FRAME_OF_REFERENCE)))
            if _FRAME_OF_REFERENCE in image._dict
            else (modality[0],)
        )
        groups.setdefault(key, []).append((image, sop_class))
    direct = _LibraryBytes()
    children = []
    for grouped in groups.values():
        members = [image for image, _ in grouped]
        shared, owns = _shared_keyed(
            [[(d.key, d) for d in _descriptors(image, values)] for image in members]
        )
        content = [direct.keyed(descriptor, key) for key, descriptor in shared]
        for (image, sop_class), own in zip(grouped, owns, strict=True):
            instance = str(values(image, _SOP_INSTANCE))
            content.append(
                direct.entry(sop_class, instance, [direct.keyed(d, key) for key, d in own])
            )
        items = encoded.EncodedSequence(
            encoded.items(content),
            partial(
                _group_items,
                [d for _, d in shared],
                members,
                [[d for _, d in own] for own in owns],
            ),
        )
        children.append(encoder.container(("126200", "DCM", "Image Library Group"), items))
    return encoder.container(("111028", "DCM", "Image Library"), children)


def _sop_class(image: Dataset, values: HeaderValues) -> Any:
    """``image.SOPClassUID`` (its AttributeError when it lacks one)."""
    return _attribute(image, _SOP_CLASS, "SOPClassUID", values)


def _attribute(dataset: Dataset, tag: int, keyword: str, values: HeaderValues) -> Any:
    """``getattr(dataset, keyword)`` (its AttributeError when absent) through ``values``."""
    value = values.get(dataset, tag, _NO_VALUE)
    return getattr(dataset, keyword) if value is _NO_VALUE else value


_NO_VALUE = object()
