"""Input-quality warnings in the TID 1500 SR: the "Qualitative Evaluations" of the report.

When the input-quality gate lets a job run with warnings
(:mod:`node.engine.quality`), each warning becomes a TEXT item
``(113010, DCM, "Quality Issue")`` in the root's TID 1500 Qualitative Evaluations
container ``(C0034375, UMLS, "Qualitative Evaluations")``, after the Imaging
Measurements. A reader of the report in the PACS sees that the routine ran on an
input unlike the one it was validated on, and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node.contract.kinds import ResultKind, tag_kind

QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
QUALITY_ISSUE = CodedConcept("113010", "DCM", "Quality Issue")
#: Prefix of every note, so a reader knows where it comes from.
NOTE_PREFIX = "Input-quality gate: "


def quality_items(warnings: Sequence[str]) -> list[Dataset]:
    """One ``CONTAINS TEXT`` item per warning (LT values are at most 10240 characters)."""
    return [
        Dataset(
            hd.sr.TextContentItem(
                name=QUALITY_ISSUE,
                value=(NOTE_PREFIX + text)[:10240],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        for text in warnings
    ]


def add_quality_warnings(sr: Dataset, warnings: Sequence[str]) -> None:
    """Append the warnings to the SR's root Qualitative Evaluations container (made if absent)."""
    if not warnings:
        return
    items: list[Dataset] = list(sr.ContentSequence)
    container = next(
        (
            item
            for item in items
            if item.ValueType == "CONTAINER"
            and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
        ),
        None,
    )
    if container is None:
        container = Dataset(
            hd.sr.ContainerContentItem(
                name=QUALITATIVE_EVALUATIONS,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        container.ContentSequence = DicomSequence([])
        items.append(container)
    notes = quality_items(warnings)
    container.ContentSequence = DicomSequence([*container.ContentSequence, *notes])
    sr.ContentSequence = DicomSequence(items)
    if hasattr(sr, "_content_is_stale"):
        sr._content_is_stale = True


def add_quality_warnings_to_srs(
    tagged: Iterable[tuple[str, Dataset]], warnings: Sequence[str]
) -> None:
    """Add the warnings to every SR among a result set's ``(tag, dataset)`` pairs."""
    for tag, dataset in tagged:
        if tag_kind(tag) is ResultKind.SR:
            add_quality_warnings(dataset, warnings)


def quality_warnings_of(sr: Dataset) -> list[str]:
    """The warnings an SR carries (without :data:`NOTE_PREFIX`)."""
    found: list[str] = []
    for item in sr.get("ContentSequence", []):
        if (
            item.ValueType == "CONTAINER"
            and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
        ):
            for child in item.get("ContentSequence", []):
                if (
                    child.ValueType == "TEXT"
                    and child.ConceptNameCodeSequence[0].CodeValue == QUALITY_ISSUE.value
                ):
                    found.append(str(child.TextValue).removeprefix(NOTE_PREFIX))
    return found


__all__ = [
    "add_quality_warnings",
    "add_quality_warnings_to_srs",
    "quality_items",
    "quality_warnings_of",
]
