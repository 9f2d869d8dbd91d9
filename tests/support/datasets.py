"""Comparing a fast-path result object with the reference construction it replaces."""

from __future__ import annotations

import copy
from collections.abc import Collection
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian


def dataset_differences(
    fast: Dataset, reference: Dataset, per_build: Collection[str] = (), path: str = ""
) -> list[str]:
    """Every element that differs in VR or value, nested ones by path; elements named in
    ``per_build`` (creation times and the like) are left out."""
    found = []
    for tag in sorted(set(fast.keys()) | set(reference.keys())):
        if tag not in fast or tag not in reference:
            found.append(f"{path}/{tag} only in {'reference' if tag not in fast else 'fast'}")
            continue
        mine, theirs = fast[tag], reference[tag]
        if mine.keyword in per_build:
            continue
        if mine.VR != theirs.VR:
            found.append(f"{path}/{mine.keyword}: VR {mine.VR} != {theirs.VR}")
        elif mine.VR == "SQ":
            if len(mine.value) != len(theirs.value):
                found.append(f"{path}/{mine.keyword}: {len(mine.value)} != {len(theirs.value)}")
                continue
            for index, (a, b) in enumerate(zip(mine.value, theirs.value, strict=True)):
                found += dataset_differences(a, b, per_build, f"{path}/{mine.keyword}[{index}]")
        elif mine.value != theirs.value:
            found.append(f"{path}/{mine.keyword}: {mine.value!r:.60} != {theirs.value!r:.60}")
    return found


def with_group_descriptors(library: Dataset) -> Dataset:
    """A copy of highdicom's TID 1600 Image Library with the descriptors that every entry
    of a group has equal (as written) moved onto the group's container, TID 1600 row 3:
    the form the node writes. A group of one entry is left as it is."""
    library = copy.deepcopy(library)
    for group in library.ContentSequence:
        entries = list(group.ContentSequence)
        if len(entries) < 2:
            continue
        keyed = [[(_item_bytes(item), item) for item in entry.ContentSequence] for entry in entries]
        common = set.intersection(*({key for key, _ in own} for own in keyed))
        shared = [item for key, item in keyed[0] if key in common]
        for entry, own in zip(entries, keyed, strict=True):
            rest = [item for key, item in own if key not in common]
            if rest:
                entry.ContentSequence = rest
            else:
                del entry.ContentSequence
        group.ContentSequence = shared + entries
    return library


def _item_bytes(item: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, item)
    return buffer.getvalue()


#: Values a result build stamps with the time it ran.
PER_BUILD = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def align_per_build(mine: Dataset, theirs: Dataset) -> None:
    """Give ``mine`` the values of ``theirs`` that differ between two builds of the same
    result (creation times, contribution time, highdicom's new Dimension Organization UID),
    so the two can be compared byte for byte."""
    for keyword in PER_BUILD:
        if keyword in theirs:
            setattr(mine, keyword, theirs[keyword].value)
    for a, b in zip(
        mine.ContributingEquipmentSequence, theirs.ContributingEquipmentSequence, strict=True
    ):
        if "ContributionDateTime" in b:
            a.ContributionDateTime = b.ContributionDateTime
    for sequence in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for a, b in zip(mine.get(sequence, []), theirs.get(sequence, []), strict=True):
            a.DimensionOrganizationUID = b.DimensionOrganizationUID


def save_little_endian(dataset: Dataset, path: Path, *, implicit: bool) -> Path:
    """Write ``dataset`` to ``path`` in Implicit or Explicit VR Little Endian."""
    dataset.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )
    dataset.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path
