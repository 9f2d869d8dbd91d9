"""Static checks of what viewers need from result objects, beyond IOD conformance.

dciodvfy checks that an object is valid DICOM; it does not know what OHIF, 3D Slicer or
a PACS viewer needs to *show* it. :func:`lint_results` checks those requirements
against the source series (measured on real viewers, see ``/work/shared/DESIGN.md``):

SEG
    ``ReferencedSeriesSequence`` naming the source series and its instances; every
    frame references one source image (DerivationImageSequence/SourceImageSequence) and
    sits at that image's position; Rows/Columns, orientation, pixel spacing and frame of
    reference equal the source's; segments carry RecommendedDisplayCIELabValue and a
    Tracking UID.
SR
    an Image Library; a Tracking UID in every measurement group; SCOORDs reference
    source images and stay inside them; referenced SEG segments exist.
GSPS
    references source images only; every graphic inside its image (the same for a
    Color Softcopy Presentation State).
SC
    ``BurnedInAnnotation YES``, a series description that says it is not for
    diagnostic use, a reference to its source image, the source's size.
KO
    every listed object is one of the given objects.

Every object must be in the source's study. Returns human-readable problems (empty:
clean). Used by the tests; callable on any result directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_CLASSES = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)
GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
#: Color Softcopy Presentation State: the ``gsps`` kind for colour sources (OP).
COLOR_PS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.2"
KOS_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
TRACKING_UID_CODE = "112040"
IMAGE_LIBRARY_CODE = "111028"
MEASUREMENT_GROUP_CODE = "125007"
IMAGING_MEASUREMENTS_CODE = "126010"

#: Tolerance on positions (mm) and direction cosines.
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Problem:
    """One unmet viewer requirement."""

    sop_instance_uid: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.sop_instance_uid}: {self.message}"


def _floats(values: Iterable[object]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


class _Linter:
    def __init__(self, sources: Sequence[Dataset], objects: Sequence[Dataset]) -> None:
        self.sources = {str(ds.SOPInstanceUID): ds for ds in sources}
        self.objects = {str(ds.SOPInstanceUID): ds for ds in objects}
        first = sources[0]
        self.study_uid = str(first.StudyInstanceUID)
        self.series_uid = str(first.SeriesInstanceUID)
        self.problems: list[Problem] = []

    def add(self, dataset: Dataset, kind: str, message: str) -> None:
        self.problems.append(Problem(str(dataset.SOPInstanceUID), kind, message))

    def run(self) -> list[Problem]:
        for dataset in self.objects.values():
            sop_class = str(dataset.SOPClassUID)
            kind = str(dataset.get("Modality", "?"))
            if str(dataset.StudyInstanceUID) != self.study_uid:
                self.add(dataset, kind, "not in the source study")
            if str(dataset.SeriesInstanceUID) == self.series_uid:
                self.add(dataset, kind, "in the source series instead of a series of its own")
            if sop_class in SEGMENTATION_CLASSES:
                self.seg(dataset)
            elif kind == "SR":
                self.sr(dataset)
            elif sop_class in (GSPS_STORAGE, COLOR_PS_STORAGE):
                self.gsps(dataset)
            elif sop_class == SC_STORAGE:
                self.sc(dataset)
            elif sop_class == KOS_STORAGE:
                self.ko(dataset)
            else:
                self.add(dataset, kind, f"unexpected SOP class {sop_class}")
        return self.problems

    # -- SEG --------------------------------------------------------------------

    def seg(self, seg: Dataset) -> None:
        referenced = seg.get("ReferencedSeriesSequence")
        if not referenced:
            self.add(seg, "SEG", "no ReferencedSeriesSequence (OHIF cannot place it)")
        else:
            series = {str(item.SeriesInstanceUID) for item in referenced}
            if self.series_uid not in series:
                self.add(seg, "SEG", "ReferencedSeriesSequence does not name the source series")
            listed = {
                str(instance.ReferencedSOPInstanceUID)
                for item in referenced
                for instance in item.get("ReferencedInstanceSequence", [])
            }
            if not listed <= set(self.sources):
                self.add(seg, "SEG", "ReferencedSeriesSequence lists unknown instances")
        source = next(iter(self.sources.values()))
        if (int(seg.Rows), int(seg.Columns)) != (int(source.Rows), int(source.Columns)):
            self.add(seg, "SEG", "Rows/Columns differ from the source images")
        if str(seg.get("FrameOfReferenceUID", "")) != str(source.get("FrameOfReferenceUID", "")):
            self.add(seg, "SEG", "FrameOfReferenceUID differs from the source")
        shared = seg.SharedFunctionalGroupsSequence[0]
        orientation = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
        if not np.allclose(orientation, _floats(source.ImageOrientationPatient), atol=TOLERANCE):
            self.add(seg, "SEG", "ImageOrientationPatient differs from the source")
        spacing = _floats(shared.PixelMeasuresSequence[0].PixelSpacing)
        if not np.allclose(spacing, _floats(source.PixelSpacing), atol=TOLERANCE):
            self.add(seg, "SEG", "PixelSpacing differs from the source")
        frames = seg.PerFrameFunctionalGroupsSequence
        if len(frames) != int(seg.NumberOfFrames):
            self.add(seg, "SEG", "PerFrameFunctionalGroupsSequence does not match NumberOfFrames")
        for number, frame in enumerate(frames, start=1):
            try:
                reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
                uid = str(reference.ReferencedSOPInstanceUID)
            except (AttributeError, IndexError):
                self.add(seg, "SEG", f"frame {number} references no source image")
                continue
            image = self.sources.get(uid)
            if image is None:
                self.add(seg, "SEG", f"frame {number} references an image not in the source")
                continue
            position = _floats(frame.PlanePositionSequence[0].ImagePositionPatient)
            if not np.allclose(position, _floats(image.ImagePositionPatient), atol=TOLERANCE):
                self.add(seg, "SEG", f"frame {number} is not at its source image's position")
        for segment in seg.SegmentSequence:
            if int(segment.SegmentNumber) == 0:
                continue  # a LABELMAP SEG's background
            label = f"segment {segment.SegmentNumber}"
            if "RecommendedDisplayCIELabValue" not in segment:
                self.add(seg, "SEG", f"{label} has no RecommendedDisplayCIELabValue")
            if not segment.get("TrackingUID"):
                self.add(seg, "SEG", f"{label} has no Tracking UID")

    # -- SR ---------------------------------------------------------------------

    def sr(self, sr: Dataset) -> None:
        content = list(sr.get("ContentSequence", []))
        if not any(_code(item) == IMAGE_LIBRARY_CODE for item in content):
            self.add(sr, "SR", "no Image Library (OHIF does not load the report)")
        groups = [
            group
            for item in content
            if _code(item) == IMAGING_MEASUREMENTS_CODE
            for group in item.get("ContentSequence", [])
            if _code(group) == MEASUREMENT_GROUP_CODE
        ]
        if not groups:
            self.add(sr, "SR", "no measurement groups")
        drawable = 0
        for index, group in enumerate(groups, start=1):
            children = list(group.get("ContentSequence", []))
            if not any(
                child.ValueType == "UIDREF" and _code(child) == TRACKING_UID_CODE
                for child in children
            ):
                self.add(sr, "SR", f"measurement group {index} has no Tracking UID")
            for child in children:
                if child.ValueType == "SCOORD":
                    drawable += 1
                    self._scoord(sr, child, index)
                if child.ValueType == "IMAGE":
                    self._segment_reference(sr, child, index)
        if groups and not drawable:
            self.add(sr, "SR", "no group has image coordinates (OHIF draws nothing)")

    def _scoord(self, sr: Dataset, scoord: Dataset, group: int) -> None:
        for image_item in scoord.get("ContentSequence", []):
            uid = str(image_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            image = self.sources.get(uid)
            if image is None:
                self.add(sr, "SR", f"group {group} SCOORD references an image not in the source")
                continue
            self._inside(sr, "SR", scoord.GraphicData, image, f"group {group} SCOORD")

    def _segment_reference(self, sr: Dataset, item: Dataset, group: int) -> None:
        reference = item.ReferencedSOPSequence[0]
        if str(reference.ReferencedSOPClassUID) not in SEGMENTATION_CLASSES:
            return
        seg = self.objects.get(str(reference.ReferencedSOPInstanceUID))
        if seg is None:
            return  # the SEG may be stored elsewhere; nothing more to check here
        numbers = {int(s.SegmentNumber) for s in seg.SegmentSequence}
        wanted = reference.get("ReferencedSegmentNumber")
        wanted_list = [int(v) for v in (wanted if isinstance(wanted, list) else [wanted])]
        if wanted is None or not set(wanted_list) <= numbers:
            self.add(sr, "SR", f"group {group} references a segment the SEG does not have")

    def _inside(
        self, dataset: Dataset, kind: str, data: Sequence[float], image: Dataset, what: str
    ) -> None:
        points = _floats(data).reshape(-1, 2)
        columns, rows = float(image.Columns), float(image.Rows)
        if (points < 0).any() or (points[:, 0] > columns).any() or (points[:, 1] > rows).any():
            self.add(dataset, kind, f"{what} leaves the image")

    # -- GSPS, SC, KO -----------------------------------------------------------

    def gsps(self, gsps: Dataset) -> None:
        referenced = {
            str(image.ReferencedSOPInstanceUID)
            for series in gsps.get("ReferencedSeriesSequence", [])
            for image in series.ReferencedImageSequence
        }
        if not referenced:
            self.add(gsps, "PR", "references no images")
        if not referenced <= set(self.sources):
            self.add(gsps, "PR", "references images that are not in the source")
        for annotation in gsps.get("GraphicAnnotationSequence", []):
            for image_ref in annotation.ReferencedImageSequence:
                image = self.sources.get(str(image_ref.ReferencedSOPInstanceUID))
                if image is None:
                    self.add(gsps, "PR", "annotation on an image not in the source")
                    continue
                for graphic in annotation.get("GraphicObjectSequence", []):
                    self._inside(gsps, "PR", graphic.GraphicData, image, "graphic")

    def sc(self, sc: Dataset) -> None:
        if sc.get("BurnedInAnnotation") != "YES":
            self.add(sc, "SC", "BurnedInAnnotation is not YES")
        if "NOT FOR DIAGNOSTIC USE" not in str(sc.get("SeriesDescription", "")).upper():
            self.add(sc, "SC", "series description does not say 'not for diagnostic use'")
        references = sc.get("SourceImageSequence", [])
        source = (
            self.sources.get(str(references[0].ReferencedSOPInstanceUID)) if references else None
        )
        if source is None:
            self.add(sc, "SC", "does not reference its source image")
        elif (int(sc.Rows), int(sc.Columns)) != (int(source.Rows), int(source.Columns)):
            self.add(sc, "SC", "size differs from its source image")

    def ko(self, ko: Dataset) -> None:
        listed = {
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for item in ko.get("ContentSequence", [])
            if item.ValueType in ("IMAGE", "COMPOSITE")
        }
        if not listed:
            self.add(ko, "KO", "lists no objects")
        unknown = listed - set(self.objects)
        if unknown:
            self.add(ko, "KO", f"lists {len(unknown)} objects that are not among the results")


def lint_results(sources: Sequence[Dataset], objects: Sequence[Dataset]) -> list[Problem]:
    """Check result ``objects`` against the ``sources`` they were made from.

    Parameters
    ----------
    sources
        The source series' datasets (headers are enough).
    objects
        Result datasets (any mix of SEG, SR, GSPS, SC, KO).

    Returns
    -------
    list of Problem
        Empty when every viewer requirement is met.
    """
    if not sources:
        raise ValueError("lint_results needs the source series")
    problems = _Linter(sources, objects).run()
    for problem in problems:
        log.warning("viewer lint problem %s", problem)
    return problems
