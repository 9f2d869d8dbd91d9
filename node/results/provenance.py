"""Who made a result: algorithm identification and contributing equipment.

Follows IHE AI Results (AIR): every output carries a Contributing Equipment item for
the processing algorithm with purpose of reference (DCM 109102 "Processing
Equipment": equipment that processed composite instances to create new ones), the
manufacturer, Manufacturer's Model Name = algorithm name, Software Versions =
algorithm version and Device UID. The SEG carries the Algorithm Identification
Sequence, the SR the TID 4019 Algorithm Identification and a TID 1004 device observer.
The template's name and SHA-256 are recorded as algorithm parameters everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from node.contract.template import ResultTemplate
from node.results.identity import SeriesIdentity

#: Purpose of reference of the algorithm's Contributing Equipment item.
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment


def algorithm_parameters(template: ResultTemplate) -> dict[str, str]:
    """Parameters recorded with the algorithm identity: which template, which bytes."""
    return {"template": template.name, "template_sha256": template.sha256}


def seg_algorithm_identification(template: ResultTemplate) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence for SEG segments."""
    algorithm = template.algorithm
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=algorithm.family.concept,
        version=algorithm.version,
        source=algorithm.source,
        parameters=algorithm_parameters(template),
    )


def sr_algorithm_identification(template: ResultTemplate) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification for SR measurement groups and measurements."""
    return hd.sr.AlgorithmIdentification(
        name=template.algorithm.name,
        version=template.algorithm.version,
        parameters=[f"{key}={value}" for key, value in algorithm_parameters(template).items()],
    )


def device_observer(template: ResultTemplate) -> hd.sr.DeviceObserverIdentifyingAttributes:
    """TID 1004 device observer: the algorithm is the observer of every SR finding."""
    algorithm = template.algorithm
    return hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )


def processing_equipment(template: ResultTemplate) -> hd.ContributingEquipment:
    """Contributing Equipment item for the processing algorithm (IHE AIR)."""
    algorithm = template.algorithm
    item = hd.ContributingEquipment(
        manufacturer=algorithm.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.device_uid,
        contribution_description=(
            f"AI routine {algorithm.name} {algorithm.version}; result template "
            f"{template.name} sha256={template.sha256}"
        ),
    )
    # highdicom's constructor has no Device UID parameter; the attribute belongs to
    # the Contributing Equipment Sequence item (PS3.3 C.12.1) and AIR requires it.
    item.DeviceUID = algorithm.device_uid
    return item


class InstanceArguments(TypedDict):
    """highdicom constructor keywords of a result that is the only instance of its series."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str | None
    manufacturer: str
    contributing_equipment: list[hd.ContributingEquipment]


def instance_arguments(
    template: ResultTemplate, series: SeriesIdentity, sop_instance_uid: str
) -> InstanceArguments:
    """Identity of a single-instance result series, its manufacturer and processing equipment."""
    return InstanceArguments(
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        series_description=series.series_description,
        manufacturer=series.manufacturer,
        contributing_equipment=[processing_equipment(template)],
    )


class EquipmentArguments(TypedDict):
    """highdicom constructor keywords of General Equipment beyond the manufacturer."""

    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def equipment_arguments(series: SeriesIdentity) -> EquipmentArguments:
    """The algorithm as the General Equipment, for constructors that take it (SEG, GSPS, maps)."""
    return EquipmentArguments(
        manufacturer_model_name=series.manufacturer_model_name,
        software_versions=series.software_versions,
        device_serial_number=series.device_uid,
    )


def set_general_equipment(dataset: Dataset, series: SeriesIdentity) -> None:
    """The algorithm's name, version and Device UID as the General Equipment of ``dataset``.

    For instances whose highdicom constructor takes only the manufacturer (SR, KO,
    Secondary Capture).
    """
    dataset.ManufacturerModelName = series.manufacturer_model_name
    dataset.SoftwareVersions = series.software_versions
    dataset.DeviceUID = series.device_uid


def copy_body_part(dataset: Dataset, source: Dataset) -> None:
    """BodyPartExamined from the source; without one, Laterality (General Series, 2C).

    Validators cannot tell that Laterality is not needed when no body part is given
    (dciodvfy reports it missing as an error), so it is copied, or left empty: its
    value is then truly unknown.
    """
    body_part = source.get("BodyPartExamined")
    if body_part:
        dataset.BodyPartExamined = body_part
    elif "Laterality" not in dataset:
        dataset.Laterality = source.get("Laterality", "")


def copy_laterality(dataset: Dataset, images: Sequence[Dataset]) -> None:
    """General Series Laterality ``L`` or ``R`` of an object over one side's images.

    Set when every image has the same ImageLaterality (or Laterality) ``L`` or ``R``
    (a mammogram, an eye: a paired body part, where it is Type 2C); empty when the images
    show both sides; otherwise left as :func:`node.results.provenance.copy_body_part` made
    it (absent for an unpaired part).
    """
    if dataset.get("Laterality"):
        return
    sides = {str(image.get("ImageLaterality") or image.get("Laterality") or "") for image in images}
    if len(sides) == 1 and sides <= {"L", "R"}:
        dataset.Laterality = sides.pop()
    elif sides & {"L", "R"} and "Laterality" not in dataset:
        # Both sides in one object (a four-view mammogram): no single value fits, and the
        # Type 2C attribute is still required for a paired part, so it is present and empty.
        dataset.Laterality = ""
