"""A labelled evaluation dataset on disk: its cases, reference SEGs, labels and boxes.

Layout (see ``README.md`` in this package)::

    dataset/
      cases/<case>/        one case = one series (or one 2D image): its DICOM files;
                           for segmentation also one DICOM SEG referencing them
      labels.csv           classification: image, finding, label (0/1)
      boxes.csv            detection: image, finding, x_min, y_min, x_max, y_max

A case is read when it is evaluated (:meth:`Dataset.read_case`), so memory holds one
case at a time. Everything that is wrong with the layout raises :class:`DatasetError`
naming the file (and row) and the problem.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from node.errors import AinodeError

#: Directory of the cases inside a dataset.
CASES_DIR = "cases"
#: Classification labels.
LABELS_CSV = "labels.csv"
#: Detection reference boxes.
BOXES_CSV = "boxes.csv"
LABEL_COLUMNS = ("image", "finding", "label")
BOX_COLUMNS = ("image", "finding", "x_min", "y_min", "x_max", "y_max")
#: SOP classes read as reference segmentations rather than as images.
SEG_SOP_CLASSES = frozenset(
    {
        UID("1.2.840.10008.5.1.4.1.1.66.4"),  # Segmentation Storage
        UID("1.2.840.10008.5.1.4.1.1.66.7"),  # Label Map Segmentation Storage
    }
)
#: Files never read as DICOM (notes beside the images).
IGNORED_SUFFIXES = frozenset({".txt", ".md", ".json", ".csv", ".yaml", ".yml"})


class DatasetError(AinodeError):
    """The dataset is malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ImageRef:
    """Where a label or box points: a case and, for one image of it, the image's UID."""

    case: str
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``."""

    line: int
    image: ImageRef
    finding: str
    label: int


@dataclass(frozen=True)
class BoxRow:
    """One row of ``boxes.csv`` (SCOORD image coordinates, as :class:`Detection`)."""

    line: int
    image: ImageRef
    finding: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class CaseIndex:
    """What is known about a case from its headers, before pixels are read."""

    name: str
    directory: Path
    image_paths: tuple[Path, ...]
    seg_paths: tuple[Path, ...]
    series_instance_uid: str
    sop_instance_uids: frozenset[str]
    file_uids: dict[str, str] = field(repr=False)  # relative path -> SOP Instance UID


@dataclass(frozen=True)
class CaseData:
    """A case read for evaluation: its index and reference SEGs (the images are read by
    the routine's loader, as in a job)."""

    index: CaseIndex
    segs: tuple[Dataset, ...]


def _read_header(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DatasetError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise DatasetError(f"{path}: cannot be read as DICOM: {exc}") from exc


def _case_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IGNORED_SUFFIXES
    )


def index_case(directory: Path, root: Path) -> CaseIndex:
    """Read the headers of a case directory; one image series and any number of SEGs."""
    files = _case_files(directory)
    if not files:
        raise DatasetError(f"{directory}: case directory holds no DICOM files")
    images: list[Path] = []
    segs: list[Path] = []
    seg_series: dict[Path, set[str]] = {}
    series: dict[str, Path] = {}
    uids: dict[str, str] = {}
    for path in files:
        header = _read_header(path)
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
            if keyword not in header:
                raise DatasetError(f"{path}: lacks {keyword}")
        if header.SOPClassUID in SEG_SOP_CLASSES:
            segs.append(path)
            seg_series[path] = {
                str(item.SeriesInstanceUID)
                for item in header.get("ReferencedSeriesSequence") or []
                if "SeriesInstanceUID" in item
            }
            continue
        images.append(path)
        series.setdefault(str(header.SeriesInstanceUID), path)
        uids[path.relative_to(root).as_posix()] = str(header.SOPInstanceUID)
    if not images:
        raise DatasetError(f"{directory}: case has a SEG but no images")
    if len(series) > 1:
        first, second = list(series.values())[:2]
        raise DatasetError(
            f"{directory}: a case is one series, but {first.name} and {second.name} belong "
            "to different series (put each series in its own case directory)"
        )
    series_uid = next(iter(series))
    for path, referenced in seg_series.items():
        if referenced and series_uid not in referenced:
            raise DatasetError(
                f"{path}: the SEG references series {', '.join(sorted(referenced))}, not this "
                f"case's series {series_uid}"
            )
    return CaseIndex(
        name=directory.name,
        directory=directory,
        image_paths=tuple(images),
        seg_paths=tuple(segs),
        series_instance_uid=series_uid,
        sop_instance_uids=frozenset(uids.values()),
        file_uids=uids,
    )


def _float(value: str, where: str, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}: {column} {value!r} is not a finite number")
    return number


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: header lacks column(s) {', '.join(missing)}; expected "
                f"{','.join(columns)} (found {','.join(header) or 'nothing'})"
            )
        reader.fieldnames = header
        count = 0
        for row in reader:
            count += 1
            if None in row:
                raise DatasetError(f"{path}:{reader.line_num}: more fields than the header")
            values = {k: (v or "").strip() for k, v in row.items()}
            empty = [c for c in columns if not values.get(c)]
            if empty:
                raise DatasetError(f"{path}:{reader.line_num}: empty {', '.join(empty)}")
            yield reader.line_num, values
        if count == 0:
            raise DatasetError(f"{path}: no rows after the header")


class EvaluationDataset:
    """A dataset directory, indexed: cases by name, labels and boxes resolved to cases.

    Parameters
    ----------
    root
        The dataset directory.

    Raises
    ------
    DatasetError
        When ``cases/`` is missing or empty, a case is not one series, a CSV is
        malformed or names an image that is not in ``cases/``, or the dataset has
        no references at all (no SEG, no ``labels.csv``, no ``boxes.csv``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        cases_dir = self.root / CASES_DIR
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset directory does not exist")
        if not cases_dir.is_dir():
            raise DatasetError(f"{cases_dir}: missing; a dataset keeps one directory per case here")
        self.cases: dict[str, CaseIndex] = {}
        for directory in sorted(p for p in cases_dir.iterdir() if p.is_dir()):
            if directory.name.startswith("."):
                continue
            self.cases[directory.name] = index_case(directory, self.root)
        if not self.cases:
            raise DatasetError(f"{cases_dir}: no case directories")
        self._by_series = {c.series_instance_uid: c.name for c in self.cases.values()}
        self._by_instance = {
            uid: c.name for c in self.cases.values() for uid in c.sop_instance_uids
        }
        self._by_file = {
            rel: (c.name, uid) for c in self.cases.values() for rel, uid in c.file_uids.items()
        }
        self.labels: list[LabelRow] = self._read_labels()
        self.boxes: list[BoxRow] = self._read_boxes()
        if not (self.labels or self.boxes or self.has_segmentations):
            raise DatasetError(
                f"{self.root}: no references: no SEG in any case, no {LABELS_CSV}, no {BOXES_CSV}"
            )

    @property
    def has_segmentations(self) -> bool:
        return any(c.seg_paths for c in self.cases.values())

    def resolve(self, identifier: str, where: str) -> ImageRef:
        """A case name, a file path relative to the dataset, a Series or SOP Instance UID."""
        key = identifier.strip().replace("\\", "/")
        if key in self.cases:
            return ImageRef(key)
        if key.startswith(f"{CASES_DIR}/") and key.removeprefix(f"{CASES_DIR}/") in self.cases:
            return ImageRef(key.removeprefix(f"{CASES_DIR}/"))
        for candidate in (key, f"{CASES_DIR}/{key}"):
            if candidate in self._by_file:
                case, uid = self._by_file[candidate]
                return ImageRef(case, uid)
        if key in self._by_series:
            return ImageRef(self._by_series[key])
        if key in self._by_instance:
            return ImageRef(self._by_instance[key], key)
        raise DatasetError(
            f"{where}: image {identifier!r} is not a case, a file under {CASES_DIR}/, a "
            "SeriesInstanceUID or a SOPInstanceUID of this dataset"
        )

    def _read_labels(self) -> list[LabelRow]:
        path = self.root / LABELS_CSV
        if not path.exists():
            return []
        rows: list[LabelRow] = []
        seen: dict[tuple[ImageRef, str], int] = {}
        for line, values in _csv_rows(path, LABEL_COLUMNS):
            where = f"{path}:{line}"
            if values["label"] not in ("0", "1"):
                raise DatasetError(f"{where}: label {values['label']!r} is not 0 or 1")
            image = self.resolve(values["image"], where)
            key = (image, values["finding"])
            if key in seen:
                raise DatasetError(
                    f"{where}: {values['finding']} of {values['image']} is labelled again "
                    f"(first on line {seen[key]})"
                )
            seen[key] = line
            rows.append(LabelRow(line, image, values["finding"], int(values["label"])))
        return rows

    def _read_boxes(self) -> list[BoxRow]:
        path = self.root / BOXES_CSV
        if not path.exists():
            return []
        rows: list[BoxRow] = []
        for line, values in _csv_rows(path, BOX_COLUMNS):
            where = f"{path}:{line}"
            image = self.resolve(values["image"], where)
            if image.sop_instance_uid is None and len(self.cases[image.case].image_paths) > 1:
                raise DatasetError(
                    f"{where}: case {image.case} has "
                    f"{len(self.cases[image.case].image_paths)} images; name the image a box "
                    "is on by its file path or SOPInstanceUID"
                )
            x0, y0, x1, y1 = (_float(values[c], where, c) for c in BOX_COLUMNS[2:])
            if not (x0 < x1 and y0 < y1):
                raise DatasetError(
                    f"{where}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty; "
                    "x_min < x_max and y_min < y_max are needed"
                )
            rows.append(BoxRow(line, image, values["finding"], (x0, y0, x1, y1)))
        return rows

    def read_case(self, name: str) -> CaseData:
        """Read a case's reference SEGs."""
        index = self.cases[name]
        segs = []
        for path in index.seg_paths:
            try:
                segs.append(pydicom.dcmread(path))
            except Exception as exc:
                raise DatasetError(f"{path}: cannot be read as DICOM: {exc}") from exc
        return CaseData(index, tuple(segs))

    def content_hash(self) -> str:
        """SHA-256 over every file's relative path and bytes (order independent)."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            relative = path.relative_to(self.root).as_posix()
            if relative.startswith("."):
                continue
            digest.update(relative.encode())
            digest.update(b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()
