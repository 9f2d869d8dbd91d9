"""Radiomics features in the TID 1500 SR: one TID 300 measurement per feature.

The features are computed by :mod:`node.results.radiomics`; here they become NUM
content items of the segment's volumetric group, coded per
:mod:`node.results.radiomics_codes` (the node's private scheme declared when used).
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.valuerep import DS

from node.results.radiomics import RadiomicsResult
from node.results.radiomics_codes import (
    PRIVATE_SCHEME,
    PRIVATE_SCHEME_NAME,
    PRIVATE_SCHEME_ORGANIZATION,
)


def algorithm_identification(result: RadiomicsResult) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of every feature: pyradiomics, its version, the parameter set's hash."""
    settings = result.parameters["settings"]
    return hd.sr.AlgorithmIdentification(
        name="pyradiomics",
        version=str(result.parameters["library_version"]),
        parameters=[
            f"radiomics_parameters_sha256={result.parameters_sha256}",
            f"bin_width={settings['binWidth']:g}",
            "resampling=none",
            f"template={result.template}",
            f"template_sha256={result.template_sha256}",
        ],
    )


def sr_measurements(result: RadiomicsResult, label_value: int) -> list[hd.sr.Measurement]:
    """One TID 300 measurement per finite feature of a segment, through highdicom.

    The reference for :func:`sr_measurement_items`, which encodes the same items
    directly (a test compares them).
    """
    algorithm = algorithm_identification(result)
    return [
        hd.sr.Measurement(
            name=CodedConcept(row.code_value, row.coding_scheme, row.code_meaning),
            value=row.value,
            unit=CodedConcept(row.unit, "UCUM", row.unit_meaning),
            algorithm_id=algorithm,
        )
        for row in result.for_segment(label_value)
        if row.value is not None
    ]


def sr_measurement_items(result: RadiomicsResult, label_value: int) -> list[Dataset]:
    """The NUM content items of :func:`sr_measurements`, encoded directly.

    highdicom's classes take about 7 ms per feature (a hundred per segment); these are
    the same datasets. Code items and the TID 4019 items are shared between features
    of one call (never modified).
    """
    algorithm = algorithm_identification(result)
    shared_algorithm = list(algorithm)
    codes: dict[tuple[str, str, str], Dataset] = {}

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        key = (value, scheme, meaning)
        if key not in codes:
            item = Dataset()
            item.add_new(0x00080100, "SH", value)
            item.add_new(0x00080102, "SH", scheme)
            item.add_new(0x00080104, "LO", meaning)
            codes[key] = item
        return codes[key]

    items = []
    for row in result.for_segment(label_value):
        if row.value is None:
            continue
        measured = Dataset()
        measured.add_new(0x004008EA, "SQ", [code(row.unit, "UCUM", row.unit_meaning)])
        measured.add_new(0x0040A30A, "DS", DS(row.value, auto_format=True))
        measured.add_new(0x0040A161, "FD", float(row.value))
        item = Dataset()
        item.add_new(0x0040A010, "CS", "CONTAINS")
        item.add_new(0x0040A040, "CS", "NUM")
        item.add_new(0x0040A043, "SQ", [code(row.code_value, row.coding_scheme, row.code_meaning)])
        item.add_new(0x0040A300, "SQ", [measured])
        item.add_new(0x0040A730, "SQ", shared_algorithm)
        items.append(item)
    return items


def declare_private_scheme(dataset: Dataset, result: RadiomicsResult) -> None:
    """Describe :data:`PRIVATE_SCHEME` in the Coding Scheme Identification Sequence if used."""
    if not any(row.coding_scheme == PRIVATE_SCHEME for row in result.features):
        return
    items = list(dataset.get("CodingSchemeIdentificationSequence", []))
    if any(item.get("CodingSchemeDesignator") == PRIVATE_SCHEME for item in items):
        return
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    dataset.CodingSchemeIdentificationSequence = [*items, item]
