"""Radiomics features of segmentation results, computed with pyradiomics.

A template asks for radiomics per segment (``segments[].radiomics: [firstorder, shape,
glcm, ...]``, see ``dicom_sr_templates/README.md``). :func:`compute_radiomics` runs
pyradiomics once per such segment on the **source grid** (no resampling): the volume
becomes a SimpleITK image with the spacing, direction and origin of its affine, the
label map a mask on the same grid. The parameter set is fixed here
(:func:`parameter_set`) except the bin width, which the template may set; it is recorded
with the results together with its SHA-256 (:attr:`RadiomicsResult.parameters_sha256`),
which the SR carries in each feature's algorithm parameters, as the template's hash.

The result is a table, one row per segment and feature, with the feature's code and
UCUM unit (:mod:`node.results.radiomics_codes`). It goes into the SR (one TID 1500
measurement per feature in the segment's volumetric group,
:func:`node.results.sr.radiomics.sr_measurements`) and next to the job's DICOM results
as ``radiomics.json`` and ``radiomics.csv`` (:func:`write_radiomics`), which the HTTP API serves.

pyradiomics is an optional extra (``pip install --no-build-isolation '.[radiomics]'``;
``make run`` and ``make test`` install it); it is imported only when features are computed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from node.errors import AinodeError
from node.results.radiomics_codes import (
    feature_code,
    ucum_unit,
)

if TYPE_CHECKING:  # highdicom is imported by the SR functions (not by the API's reading)
    from node.contract.template import ResultTemplate
    from node.contract.volume import Volume

log = logging.getLogger(__name__)

#: File names of the feature table in a job's result directory.
JSON_FILE = "radiomics.json"
CSV_FILE = "radiomics.csv"
#: Columns of the CSV, one row per segment and feature.
CSV_COLUMNS = (
    "label_value",
    "segment",
    "tracking_id",
    "feature_class",
    "feature",
    "value",
    "unit",
    "code_value",
    "coding_scheme",
    "code_meaning",
)
#: Version of the parameter set below; bump it when a setting changes.
PARAMETER_SET_VERSION = 1


class RadiomicsUnavailable(AinodeError):
    """A template asks for radiomics but pyradiomics is not installed."""


def parameter_set(bin_width: float) -> dict[str, Any]:
    """The pyradiomics settings every extraction uses (``None``: the step is off).

    binWidth
        Fixed bin width of the grey-level discretisation (IBSI "fixed bin size") in
        image units (HU on CT); from the template, default 25. First-order entropy
        and uniformity and every texture feature are computed on the binned image.
    resampledPixelSpacing
        None: no resampling, features on the source grid (anisotropic voxels stay
        anisotropic; texture features depend on the grid).
    normalize, removeOutliers, resegmentRange
        Off: the real-world values (HU) are used as they are.
    minimumROIDimensions
        2: a segment within one slice still gets first-order and texture features;
        pyradiomics refuses smaller ones (the segment is then listed as skipped).
    correctMask
        False: image and mask share the grid by construction.
    force2D
        False: 3D texture matrices (13 directions, features averaged over them).
    distances, symmetricalGLCM, gldm_a
        Neighbour distance 1 (Chebyshev); symmetric GLCM; GLDM coarseness 0, so
        pyradiomics' GLDM is IBSI's NGLDM.
    voxelArrayShift
        0: first-order energy is IBSI's (sum of squared HU).
    """
    return {
        "binWidth": float(bin_width),
        "resampledPixelSpacing": None,
        "normalize": False,
        "removeOutliers": None,
        "resegmentRange": None,
        "minimumROIDimensions": 2,
        "minimumROISize": None,
        "preCrop": True,
        "correctMask": False,
        "force2D": False,
        "distances": [1],
        "symmetricalGLCM": True,
        "gldm_a": 0,
        "voxelArrayShift": 0,
        "additionalInfo": False,
    }


def _pyradiomics() -> Any:
    try:
        import radiomics
        from radiomics import featureextractor  # noqa: F401 - the extractor module
    except ImportError as exc:
        raise RadiomicsUnavailable(
            "the template asks for radiomics but pyradiomics is not installed; install it "
            "with: pip install versioneer && pip install --no-build-isolation '.[radiomics]' "
            f"({exc})"
        ) from None
    # pyradiomics adds its own stderr handler and logs every step at DEBUG: leave its
    # warnings to the node's logging and skip the rest.
    radiomics_logger = logging.getLogger("radiomics")
    radiomics_logger.setLevel(logging.WARNING)
    handler = getattr(radiomics, "handler", None)
    if handler is not None:
        radiomics_logger.removeHandler(handler)
    glcm_logger = logging.getLogger("radiomics.glcm")
    if _SumAverageNote not in {type(f) for f in glcm_logger.filters}:
        glcm_logger.addFilter(_SumAverageNote())
    return radiomics


class _SumAverageNote(logging.Filter):
    """Drops pyradiomics' warning, on every GLCM, that Sum Average is 2 x Joint Average."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Sum Average" not in record.getMessage()


def pyradiomics_version() -> str:
    """The installed pyradiomics version (``3.0.1``)."""
    return str(_pyradiomics().__version__).removeprefix("v")


@dataclass(frozen=True)
class FeatureValue:
    """One feature of one segment (a row of the table)."""

    label_value: int
    segment: str
    tracking_id: str
    feature_class: str
    feature: str
    value: float | None  #: None when pyradiomics gave a non-finite value
    unit: str
    unit_meaning: str
    code_value: str
    coding_scheme: str
    code_meaning: str


@dataclass(frozen=True)
class SkippedSegment:
    """A segment that asked for radiomics and got none, with the reason."""

    label_value: int
    segment: str
    reason: str


@dataclass(frozen=True)
class RadiomicsResult:
    """Every feature of every segment that asked for radiomics, with how they were made.

    Attributes
    ----------
    features
        Rows in template segment order, then pyradiomics' feature order.
    skipped
        Segments that asked and got no features (empty, too small).
    parameters
        The complete parameter set (library and version, settings, classes per label).
    parameters_sha256
        SHA-256 of ``parameters`` as canonical JSON.
    seconds
        Extraction time per label value.
    """

    template: str
    template_sha256: str
    modality: str
    features: tuple[FeatureValue, ...]
    skipped: tuple[SkippedSegment, ...]
    parameters: dict[str, Any]
    parameters_sha256: str
    seconds: dict[int, float] = field(default_factory=dict)

    def for_segment(self, label_value: int) -> list[FeatureValue]:
        return [row for row in self.features if row.label_value == label_value]

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored as ``radiomics.json`` (and served by the API)."""
        return {
            "template": self.template,
            "template_sha256": self.template_sha256,
            "modality": self.modality,
            "parameters": self.parameters,
            "parameters_sha256": self.parameters_sha256,
            "seconds": {str(label): round(value, 3) for label, value in self.seconds.items()},
            "skipped": [asdict(item) for item in self.skipped],
            "features": [asdict(row) for row in self.features],
        }

    def to_csv(self) -> str:
        return table_csv(self.to_json())


def table_csv(document: Mapping[str, Any]) -> str:
    """The rows of a ``radiomics.json`` document as CSV (:data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in document["features"]:
        writer.writerow({**row, "value": "" if row["value"] is None else repr(row["value"])})
    return buffer.getvalue()


def parameters_hash(parameters: Mapping[str, Any]) -> str:
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def sitk_image(volume: Volume) -> Any:
    """The volume as a SimpleITK image with the geometry of its affine (LPS, mm)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    _set_geometry(image, volume.affine)
    return image


def _set_geometry(image: Any, affine: np.ndarray) -> None:
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (axes / spacing).ravel()])
    image.SetOrigin([float(v) for v in np.asarray(affine, dtype=np.float64)[:3, 3]])


def compute_radiomics(
    volume: Volume, segment_numbers: np.ndarray, template: ResultTemplate
) -> RadiomicsResult:
    """pyradiomics features of every segment whose template entry lists classes.

    Parameters
    ----------
    volume
        The source volume (real-world values, HU on CT).
    segment_numbers
        Label map re-coded to SEG segment numbers (template order), shaped like the
        volume (:attr:`node.results.analysis.Analysis.segment_numbers`).
    template
        The template; ``segments[].radiomics`` says which classes, ``radiomics.bin_width``
        the discretisation.

    Raises
    ------
    RadiomicsUnavailable
        pyradiomics is not installed.
    """
    _pyradiomics()
    import SimpleITK as sitk
    from radiomics import featureextractor

    wanted = template.radiomics_classes
    settings = parameter_set(template.radiomics_settings.bin_width)
    version = pyradiomics_version()
    parameters = {
        "parameter_set_version": PARAMETER_SET_VERSION,
        "library": "pyradiomics",
        "library_version": version,
        "image_types": ["Original"],
        "grid": "source",
        "settings": settings,
        "classes": {str(label): list(classes) for label, classes in wanted.items()},
    }
    image = sitk_image(volume)
    if segment_numbers.shape != volume.shape:
        raise ValueError(
            f"label map shape {segment_numbers.shape} differs from volume shape {volume.shape}"
        )
    mask = sitk.GetImageFromArray(np.ascontiguousarray(segment_numbers, dtype=np.uint16))
    mask.CopyInformation(image)
    passed = {key: value for key, value in settings.items() if value is not None}
    features: list[FeatureValue] = []
    skipped: list[SkippedSegment] = []
    seconds: dict[int, float] = {}
    for label_value, classes in wanted.items():
        segment = template.segment(label_value)
        number = template.segment_number(label_value)
        voxels = int(np.count_nonzero(segment_numbers == number))
        if voxels == 0:
            skipped.append(SkippedSegment(label_value, segment.label, "empty segment"))
            continue
        extractor = featureextractor.RadiomicsFeatureExtractor(**passed)
        extractor.disableAllFeatures()
        extractor.enableFeaturesByName(**{name: [] for name in classes})
        started = time.perf_counter()
        try:
            output = extractor.execute(image, mask, label=number)
        except (ValueError, RuntimeError) as exc:
            reason = f"pyradiomics refused it: {exc}"
            skipped.append(SkippedSegment(label_value, segment.label, reason))
            log.warning(
                "radiomics skipped template=%s label=%d voxels=%d reason=%s",
                template.name,
                label_value,
                voxels,
                reason,
            )
            continue
        seconds[label_value] = time.perf_counter() - started
        rows = _rows(output, volume.modality, label_value, segment.label, segment.tracking_id)
        features += rows
        log.info(
            "radiomics computed template=%s label=%d voxels=%d features=%d seconds=%.2f",
            template.name,
            label_value,
            voxels,
            len(rows),
            seconds[label_value],
        )
    return RadiomicsResult(
        template=template.name,
        template_sha256=template.sha256,
        modality=volume.modality,
        features=tuple(features),
        skipped=tuple(skipped),
        parameters=parameters,
        parameters_sha256=parameters_hash(parameters),
        seconds=seconds,
    )


def _rows(
    output: Mapping[str, Any], modality: str, label_value: int, segment: str, tracking_id: str
) -> list[FeatureValue]:
    rows = []
    for name, raw in output.items():
        image_type, _, rest = name.partition("_")
        feature_class, _, feature = rest.partition("_")
        if image_type != "original" or not feature:
            continue  # diagnostics, or a filter we never enable
        code = feature_code(feature_class, feature)
        unit, unit_meaning = ucum_unit(code.unit, modality)
        value = float(np.asarray(raw))
        rows.append(
            FeatureValue(
                label_value=label_value,
                segment=segment,
                tracking_id=tracking_id,
                feature_class=feature_class,
                feature=feature,
                value=value if math.isfinite(value) else None,
                unit=unit,
                unit_meaning=unit_meaning,
                code_value=code.value,
                coding_scheme=code.scheme,
                code_meaning=code.meaning,
            )
        )
    return rows


# -- files -----------------------------------------------------------------------------


def write_radiomics(directory: Path, result: RadiomicsResult) -> list[Path]:
    """Write ``radiomics.json`` and ``radiomics.csv`` into a job's result directory."""
    document = result.to_json()
    written = []
    for name, text in (
        (JSON_FILE, json.dumps(document, indent=1, allow_nan=False) + "\n"),
        (CSV_FILE, table_csv(document)),
    ):
        path = directory / name
        temporary = path.with_suffix(path.suffix + ".tmp")
        with temporary.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        written.append(path)
    return written


def read_radiomics(directory: Path) -> dict[str, Any] | None:
    """The ``radiomics.json`` document of a result directory (None when there is none)."""
    path = directory / JSON_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    document: dict[str, Any] = json.loads(text)
    return document
