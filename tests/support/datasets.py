"""Comparing a fast-path result object with the reference construction it replaces."""

from __future__ import annotations

from collections.abc import Collection

from pydicom.dataset import Dataset


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
