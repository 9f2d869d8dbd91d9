"""Result templates: how a routine's label map and measurements become coded DICOM content.

A template is a versioned YAML file in ``dicom_sr_templates/`` (see its README). It is
parsed into strict pydantic models (unknown keys rejected), then checked against the
DICOM code dictionaries shipped with pydicom: segment categories must come from
CID 7150, segment types from CID 7151, type modifiers from CID 244 (laterality), and
a SNOMED CT or DCM code whose value pydicom knows must carry the meaning DICOM gives
it. Units are UCUM codes from :data:`UCUM_UNITS`. Any problem raises
:class:`~node.errors.TemplateError` naming the file, the path inside it
(``segments[1].type.value``) and the reason.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from highdicom.color import CIELabColor
from highdicom.sr import CodedConcept
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydicom.sr.codedict import Collection

import node
from node.errors import TemplateError

log = logging.getLogger(__name__)

#: Environment variable that overrides the default template directory.
TEMPLATE_DIR_ENV = "AINODE_TEMPLATE_DIR"
#: The current template format; versions 1 (no ``compute``, no ``findings``) and 2 (no
#: ``classifications``, no ``detections``, at least one segment) are still read.
FORMAT_VERSION = 3
#: Every format version this code reads.
FORMAT_VERSIONS = (1, 2, 3)

#: UCUM units a template may use, with the code meaning written into DICOM.
UCUM_UNITS: dict[str, str] = {
    "cm3": "cubic centimeter",
    "mm3": "cubic millimeter",
    "mL": "milliliter",
    "cm2": "square centimeter",
    "mm2": "square millimeter",
    "cm": "centimeter",
    "mm": "millimeter",
    "[hnsf'U]": "Hounsfield unit",
    "%": "percent",
    "1": "no units",
    "g": "gram",
    "g/cm3": "gram per cubic centimeter",
    "s": "second",
    "{ratio}": "ratio",
}

#: Measurements the node computes from the label map and the volume (``compute:``).
ComputeKind = Literal[
    "volume", "mean", "min", "max", "std", "largest_axial_diameter", "surface_area"
]
#: Units each geometric computation may be reported in (statistics take any other unit).
GEOMETRIC_UNITS: dict[str, frozenset[str]] = {
    "volume": frozenset({"cm3", "mm3", "mL"}),
    "largest_axial_diameter": frozenset({"mm", "cm"}),
    "surface_area": frozenset({"mm2", "cm2"}),
}
#: Derivation (SNOMED CT) of each statistic, filled in when a template gives none.
STATISTIC_DERIVATIONS: dict[str, tuple[str, str]] = {
    "mean": ("373098007", "Mean"),
    "min": ("255605001", "Minimum"),
    "max": ("56851009", "Maximum"),
    "std": ("386136009", "Standard Deviation"),
}

# DICOM value representation limits used below.
_SH_MAX = 16  # Code Value, Coding Scheme Designator
_LONG_CODE_MAX = 64  # Long Code Value (UC; we keep it within 64 for readability)
_LO_MAX = 64  # Code Meaning, labels, names, versions
_SERIES_DESCRIPTION_BASE_MAX = 24  # leaves room for " SEG (rev NN, supersedes earlier)"
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_CS_PATTERN = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

# Context groups checked when a template loads.
_CATEGORY_CID = 7150
_TYPE_CID = 7151
_LATERALITY_CID = 244


class _Strict(BaseModel):
    """Base of every template model: unknown keys and type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_text(value: str, max_len: int) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > max_len:
        raise ValueError(f"is {len(value)} characters, at most {max_len} allowed")
    if "\\" in value:
        raise ValueError("must not contain a backslash")
    return value


def _check_key(value: str) -> str:
    if not _KEY_PATTERN.match(value):
        raise ValueError("must be lower-case letters, digits and underscores")
    return value


#: A key the plugin's predictions and the template refer to (also a template's name).
Key = Annotated[str, AfterValidator(_check_key)]


def _text_of_at_most(max_len: int) -> AfterValidator:
    """Validator of a text field: not blank, at most ``max_len`` characters, no backslash."""
    return AfterValidator(lambda value: _check_text(value, max_len))


#: Text of a Short String (SH) element: a coding scheme designator.
ShortText = Annotated[str, _text_of_at_most(_SH_MAX)]
#: Text of a Long String (LO) element: code meanings, labels, names, versions.
LongText = Annotated[str, _text_of_at_most(_LO_MAX)]


class CodeSpec(_Strict):
    """A coded concept (code value, coding scheme designator, code meaning)."""

    value: str
    scheme: ShortText
    meaning: LongText
    scheme_version: str | None = None

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: str) -> str:
        _check_text(value, _LONG_CODE_MAX)
        if value != value.strip():
            raise ValueError("must not have leading or trailing spaces")
        return value

    @property
    def concept(self) -> CodedConcept:
        """The code as a highdicom concept (long values go to Long Code Value)."""
        return CodedConcept(self.value, self.scheme, self.meaning, self.scheme_version)


class AlgorithmSpec(_Strict):
    """Identity of the routine that produced the results."""

    name: LongText
    version: LongText
    family: CodeSpec
    manufacturer: LongText
    device_uid: str
    source: LongText | None = None

    @field_validator("device_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        if len(value) > 64 or not _UID_PATTERN.match(value):
            raise ValueError("is not a valid DICOM UID (digits and dots, at most 64 characters)")
        return value


class OutputSpec(_Strict):
    """How output series are labelled."""

    series_description: Annotated[str, _text_of_at_most(_SERIES_DESCRIPTION_BASE_MAX)]
    content_label: str

    @field_validator("content_label")
    @classmethod
    def _content_label(cls, value: str) -> str:
        if not _CS_PATTERN.match(value):
            raise ValueError("must be 1-16 characters of A-Z, 0-9, space or underscore")
        return value


_ColourComponent = Annotated[int, Field(ge=0, le=255)]
#: An RGB colour, 0-255 per component.
Colour = Annotated[list[_ColourComponent], Field(min_length=3, max_length=3)]


def _cielab(colour: Sequence[int]) -> CIELabColor:
    """An RGB colour converted to the CIELab value DICOM stores."""
    red, green, blue = colour
    return CIELabColor.from_rgb(red, green, blue)


def _ucum(unit: str) -> CodedConcept:
    """The coded concept of a UCUM unit of :data:`UCUM_UNITS`."""
    return CodedConcept(unit, "UCUM", UCUM_UNITS[unit])


#: pyradiomics feature classes a segment may ask for (``radiomics:``), computed on the
#: source grid by :mod:`node.results.radiomics`.
RadiomicsClass = Literal["firstorder", "shape", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
#: Default fixed bin width of the grey-level discretisation (image units: HU on CT).
DEFAULT_RADIOMICS_BIN_WIDTH = 25.0


class RadiomicsSettingsSpec(_Strict):
    """Template-wide radiomics settings (the rest of the parameter set is fixed in code)."""

    #: Fixed bin width (IBSI "fixed bin size") in the image's units, e.g. HU on CT.
    bin_width: Annotated[float, Field(gt=0)] = DEFAULT_RADIOMICS_BIN_WIDTH


class SegmentSpec(_Strict):
    """One label value of the label map and how it is coded."""

    label_value: Annotated[int, Field(ge=1, le=65535)]
    label: LongText
    tracking_id: LongText
    category: CodeSpec
    type: CodeSpec
    type_modifier: CodeSpec | None = None
    anatomic_region: CodeSpec | None = None
    colour: Colour
    #: pyradiomics feature classes to compute for this segment (none: no radiomics).
    radiomics: Annotated[list[RadiomicsClass], Field(min_length=1)] | None = None

    @property
    def display_colour(self) -> CIELabColor:
        """The RGB colour converted to the CIELab value DICOM stores."""
        return _cielab(self.colour)


class MeasurementSpec(_Strict):
    """A per-segment measurement: prediction key → coded concept and unit."""

    key: Key
    concept: CodeSpec
    unit: str
    derivation: CodeSpec | None = None
    #: Computed by the node from label map + volume when the plugin gives no value.
    compute: ComputeKind | None = None

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        if value not in UCUM_UNITS:
            known = ", ".join(sorted(UCUM_UNITS))
            raise ValueError(f"unit {value!r} is not a known UCUM unit ({known})")
        return value

    @property
    def unit_concept(self) -> CodedConcept:
        return _ucum(self.unit)

    @property
    def derivation_concept(self) -> CodedConcept | None:
        """The declared derivation, else the statistic's own code for computed statistics."""
        if self.derivation is not None:
            return self.derivation.concept
        if self.compute in STATISTIC_DERIVATIONS:
            value, meaning = STATISTIC_DERIVATIONS[self.compute]
            return CodedConcept(value, "SCT", meaning)
        return None


Operator = Literal[">", ">=", "<", "<="]


class RuleSpec(_Strict):
    """A qualitative finding derived from one measurement of the same segment."""

    measurement: str
    operator: Operator
    threshold: float | int
    then: CodeSpec
    otherwise: CodeSpec | None = Field(None, alias="else")

    def evaluate(self, value: float) -> CodeSpec | None:
        """The coded value for a measured ``value`` (``None``: no finding)."""
        holds = {
            ">": value > self.threshold,
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
        }[self.operator]
        return self.then if holds else self.otherwise


class FindingSpec(_Strict):
    """A per-segment qualitative finding: a coded question and its coded answer.

    The answer comes from ``rule`` (evaluated on a measurement) or, without a rule,
    from the plugin's ``Prediction.findings[label][key]``, one of ``values``' keys.
    """

    key: Key
    concept: CodeSpec
    rule: RuleSpec | None = None
    values: dict[str, CodeSpec] | None = None
    #: Label values the finding applies to; default every segment.
    segments: list[int] | None = None


#: Units a probability or a score may be reported in: ``1`` (0 to 1) or ``%`` (0 to 100).
ScoreUnit = Literal["1", "%"]
_Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _CodedFinding(_Strict):
    """What classifications and detections share: a key, a coded concept, a label."""

    key: Key
    concept: CodeSpec
    label: LongText | None = None

    @property
    def display_label(self) -> str:
        """``label``, else the concept's meaning."""
        return self.label or self.concept.meaning


class ClassificationSpec(_CodedFinding):
    """A finding a classifier reports for the series or for each image (format 3).

    The plugin gives ``Classification(finding=key, probability, frame)``; the SR gets a
    qualitative evaluation (``concept`` = ``present`` when ``probability >= threshold``,
    else ``absent``) and the probability as a measurement in ``unit``.
    """

    present: CodeSpec
    absent: CodeSpec
    threshold: _Fraction
    unit: ScoreUnit = "1"
    per_image: bool = False
    finding_site: CodeSpec | None = None

    @property
    def unit_concept(self) -> CodedConcept:
        return _ucum(self.unit)


class DetectionSpec(_CodedFinding):
    """A finding a detector localises with a box or a point and a score (format 3).

    Detections scoring below ``report_threshold`` are left out of every result object.
    """

    category: CodeSpec | None = None
    finding_site: CodeSpec | None = None
    colour: Colour
    report_threshold: _Fraction = 0.0
    unit: ScoreUnit = "1"
    #: Also give the SR region in patient coordinates (SCOORD3D) where the image has a
    #: frame of reference; otherwise (and by default) SCOORD on the image.
    scoord3d: bool = False

    @property
    def display_colour(self) -> CIELabColor:
        return _cielab(self.colour)

    @property
    def unit_concept(self) -> CodedConcept:
        return _ucum(self.unit)


class TemplateDocument(_Strict):
    """The YAML document exactly as written (format versions 1 to 3)."""

    format_version: Literal[1, 2, 3]
    name: Key
    description: str | None = None
    algorithm: AlgorithmSpec
    output: OutputSpec
    procedure_reported: CodeSpec | None = None
    #: Empty for templates that segment nothing: format 3 classifiers, detectors and
    #: image-to-image routines, or a registration (which measures nothing either).
    segments: list[SegmentSpec] = Field(default_factory=list)
    measurements: list[MeasurementSpec] = Field(default_factory=list)
    findings: list[FindingSpec] = Field(default_factory=list)
    classifications: list[ClassificationSpec] = Field(default_factory=list)
    detections: list[DetectionSpec] = Field(default_factory=list)
    #: Settings of the radiomics of segments that ask for it (``segments[].radiomics``).
    radiomics: RadiomicsSettingsSpec | None = None


_Keyed = TypeVar("_Keyed", MeasurementSpec, ClassificationSpec, DetectionSpec)


def _by_key(specs: Iterable[_Keyed], key: str) -> _Keyed:
    """The spec with ``key``; ``KeyError`` when there is none."""
    for spec in specs:
        if spec.key == key:
            return spec
    raise KeyError(key)


@dataclass(frozen=True)
class ResultTemplate:
    """A validated template plus where it came from and the hash of its bytes.

    Attributes
    ----------
    document
        The parsed YAML.
    path
        The file it was read from.
    sha256
        SHA-256 (hex) of the file's bytes; recorded in every output.
    """

    document: TemplateDocument
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def algorithm(self) -> AlgorithmSpec:
        return self.document.algorithm

    @property
    def output(self) -> OutputSpec:
        return self.document.output

    @property
    def segments(self) -> tuple[SegmentSpec, ...]:
        return tuple(self.document.segments)

    @property
    def measurements(self) -> tuple[MeasurementSpec, ...]:
        return tuple(self.document.measurements)

    @property
    def procedure_reported(self) -> CodeSpec | None:
        return self.document.procedure_reported

    def segment_number(self, label_value: int) -> int:
        """DICOM segment number (1-based, template order) of a label value."""
        for number, segment in enumerate(self.document.segments, start=1):
            if segment.label_value == label_value:
                return number
        raise KeyError(label_value)

    def measurement(self, key: str) -> MeasurementSpec:
        return _by_key(self.document.measurements, key)

    @property
    def findings(self) -> tuple[FindingSpec, ...]:
        return tuple(self.document.findings)

    def segment(self, label_value: int) -> SegmentSpec:
        for spec in self.document.segments:
            if spec.label_value == label_value:
                return spec
        raise KeyError(label_value)

    @property
    def radiomics_classes(self) -> dict[int, tuple[str, ...]]:
        """``{label value: feature classes}`` of the segments that ask for radiomics."""
        return {s.label_value: tuple(s.radiomics) for s in self.document.segments if s.radiomics}

    @property
    def radiomics_settings(self) -> RadiomicsSettingsSpec:
        """The template's radiomics settings, defaults where it gives none."""
        return self.document.radiomics or RadiomicsSettingsSpec()

    @property
    def classifications(self) -> tuple[ClassificationSpec, ...]:
        return tuple(self.document.classifications)

    @property
    def detections(self) -> tuple[DetectionSpec, ...]:
        return tuple(self.document.detections)

    def classification(self, key: str) -> ClassificationSpec:
        return _by_key(self.document.classifications, key)

    def detection(self, key: str) -> DetectionSpec:
        return _by_key(self.document.detections, key)


#: The package that ships the templates (``dicom_sr_templates/`` at the repository root).
SHIPPED_TEMPLATES_PACKAGE = "dicom_sr_templates"


def default_template_dir() -> Path:
    """The directory of the templates shipped with ainode (in the wheel, or the checkout's).

    Found with :mod:`importlib.resources`, so a ``pip install`` finds the installed copy;
    a checkout whose editable install predates the package falls back to the folder
    beside ``node/``.
    """
    try:
        shipped = importlib.resources.files(SHIPPED_TEMPLATES_PACKAGE)
    except ModuleNotFoundError:
        return Path(node.__file__).resolve().parents[1] / SHIPPED_TEMPLATES_PACKAGE
    if not isinstance(shipped, Path):  # a zip import: never made by pip install
        raise TemplateError(f"the shipped templates are not files on disk: {shipped}")
    return shipped


def site_template_dir(directory: Path | str | None = None) -> Path | None:
    """The site's template directory: ``directory`` (``templates_dir``), else
    ``$AINODE_TEMPLATE_DIR``, else none."""
    if directory is not None:
        return Path(directory)
    override = os.environ.get(TEMPLATE_DIR_ENV)
    return Path(override) if override else None


def load_template_by_name(name: str, directory: Path | str | None = None) -> ResultTemplate:
    """Load the template ``<name>.yaml``: the site's copy first, else the shipped one.

    Parameters
    ----------
    name
        File stem of the template (``ct_lungs``).
    directory
        The site's template directory (the ``templates_dir`` setting); when ``None``,
        ``$AINODE_TEMPLATE_DIR`` if set. A template the site directory does not hold
        comes from :func:`default_template_dir`.

    Raises
    ------
    TemplateError
        When the name is not a plain stem, the site directory does not exist, neither
        place holds the template, or the file found is not a valid template (a broken
        site template is an error, never silently replaced by the shipped one).
    """
    if not _KEY_PATTERN.match(name):
        raise TemplateError(f"template name {name!r} is not a plain file stem")
    file_name = f"{name}.yaml"
    site = site_template_dir(directory)
    if site is not None:
        if not site.is_dir():
            raise TemplateError(f"{site}: site template directory does not exist")
        if (site / file_name).exists():
            return load_template(site / file_name)
    shipped = default_template_dir()
    if (shipped / file_name).exists() or site is None:
        return load_template(shipped / file_name)
    raise TemplateError(
        f"no template {name!r}: neither {site / file_name} nor {shipped / file_name} exists"
    )


def load_template(path: Path | str) -> ResultTemplate:
    """Read, parse and validate one template file.

    Raises
    ------
    TemplateError
        When the file cannot be read, is not YAML, or fails validation; the
        message is ``<file>: <path inside it>: <reason>``.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read template: {exc.strerror or exc}") from exc
    try:
        raw: Any = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TemplateError(f"{path}: (root): expected a mapping of keys")
    if raw.get("format_version") not in FORMAT_VERSIONS:
        expected = ", ".join(str(v) for v in FORMAT_VERSIONS[:-1]) + f" or {FORMAT_VERSIONS[-1]}"
        raise TemplateError(
            f"{path}: format_version: expected {expected}, found {raw.get('format_version')!r}"
        )
    try:
        document = TemplateDocument.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(_describe(error) for error in exc.errors())
        raise TemplateError(f"{path}: {reasons}") from exc
    problems = _semantic_problems(document)
    if problems:
        reasons = "; ".join(f"{where}: {reason}" for where, reason in problems)
        raise TemplateError(f"{path}: {reasons}")
    if document.name != path.stem:
        log.warning("template name differs from file stem name=%s file=%s", document.name, path)
    sha256 = hashlib.sha256(content).hexdigest()
    log.debug("template loaded name=%s sha256=%s", document.name, sha256)
    return ResultTemplate(document=document, path=path, sha256=sha256)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(root)"


def _describe(error: Any) -> str:
    location = _format_loc(tuple(error["loc"]))
    kind = error["type"]
    if kind == "extra_forbidden":
        reason = "unknown key"
    elif kind == "missing":
        reason = "required key is missing"
    else:
        reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {reason}"


def _semantic_problems(document: TemplateDocument) -> list[tuple[str, str]]:
    """Cross-field and terminology checks pydantic cannot express field by field."""
    problems: list[tuple[str, str]] = []
    _check_concept(document.algorithm.family, "algorithm.family", problems)
    if document.procedure_reported is not None:
        _check_concept(document.procedure_reported, "procedure_reported", problems)

    segments = document.segments
    if not segments and (document.measurements or document.findings):
        # A template without segments (a registration's, a denoiser's) measures nothing.
        problems.append(("segments", "at least 1 item is needed for measurements and findings"))
    problems += _duplicates([s.label_value for s in segments], "segments", "label_value")
    problems += _duplicates([s.label for s in segments], "segments", "label")
    problems += _duplicates([s.tracking_id for s in segments], "segments", "tracking_id")
    for index, segment in enumerate(segments):
        where = f"segments[{index}]"
        _check_concept(segment.category, f"{where}.category", problems, cid=_CATEGORY_CID)
        _check_concept(segment.type, f"{where}.type", problems, cid=_TYPE_CID)
        if segment.type_modifier is not None:
            _check_concept(
                segment.type_modifier, f"{where}.type_modifier", problems, cid=_LATERALITY_CID
            )
        if segment.anatomic_region is not None:
            _check_concept(segment.anatomic_region, f"{where}.anatomic_region", problems)
        if segment.radiomics is not None:
            problems += _radiomics_problems(segment.radiomics, where, document.format_version)
    if document.radiomics is not None and not any(s.radiomics for s in segments):
        problems.append(("radiomics", "settings given but no segment lists 'radiomics' classes"))

    measurements = document.measurements
    problems += _duplicates([m.key for m in measurements], "measurements", "key")
    for index, measurement in enumerate(measurements):
        where = f"measurements[{index}]"
        _check_concept(measurement.concept, f"{where}.concept", problems)
        if measurement.derivation is not None:
            _check_concept(measurement.derivation, f"{where}.derivation", problems)
        problems += _compute_problems(measurement, where, document.format_version)

    keys = {m.key for m in measurements}
    labels = {s.label_value for s in segments}
    problems += _duplicates([f.key for f in document.findings], "findings", "key")
    for index, finding in enumerate(document.findings):
        where = f"findings[{index}]"
        if document.format_version < 2:
            problems.append((where, "findings need format_version 2"))
        _check_concept(finding.concept, f"{where}.concept", problems)
        if (finding.rule is None) == (finding.values is None):
            problems.append((where, "give exactly one of 'rule' and 'values'"))
        if finding.rule is not None:
            rule = finding.rule
            if rule.measurement not in keys:
                problems.append(
                    (f"{where}.rule.measurement", f"{rule.measurement!r} is not a measurement key")
                )
            _check_concept(rule.then, f"{where}.rule.then", problems)
            if rule.otherwise is not None:
                _check_concept(rule.otherwise, f"{where}.rule.else", problems)
        for code_key, code in (finding.values or {}).items():
            if not _KEY_PATTERN.match(code_key):
                problems.append(
                    (f"{where}.values.{code_key}", "keys are lower-case letters, digits, _")
                )
            _check_concept(code, f"{where}.values.{code_key}", problems)
        for position, label in enumerate(finding.segments or []):
            if label not in labels:
                problems.append(
                    (f"{where}.segments[{position}]", f"label value {label} is not a segment")
                )
    problems += _classification_detection_problems(document)
    return problems


def _classification_detection_problems(document: TemplateDocument) -> list[tuple[str, str]]:
    """Checks of ``classifications`` and ``detections`` (format 3)."""
    problems: list[tuple[str, str]] = []
    for section in ("classifications", "detections"):
        if getattr(document, section) and document.format_version < 3:
            problems.append((section, f"{section} need format_version 3"))
    classifications = document.classifications
    detections = document.detections
    seen: dict[str, str] = {}
    places = [(f"classifications[{i}]", c.key) for i, c in enumerate(classifications)]
    places += [(f"detections[{i}]", d.key) for i, d in enumerate(detections)]
    for where, key in places:
        if key in seen:
            problems.append(
                (
                    f"{where}.key",
                    f"duplicate {key!r} (also {seen[key]}; keys are unique across "
                    "classifications and detections)",
                )
            )
        else:
            seen[key] = where
    for index, spec in enumerate(classifications):
        where = f"classifications[{index}]"
        _check_concept(spec.concept, f"{where}.concept", problems)
        _check_concept(spec.present, f"{where}.present", problems)
        _check_concept(spec.absent, f"{where}.absent", problems)
        if (spec.present.scheme, spec.present.value) == (spec.absent.scheme, spec.absent.value):
            problems.append((f"{where}.absent", "must be a different code than 'present'"))
        if spec.finding_site is not None:
            _check_concept(spec.finding_site, f"{where}.finding_site", problems)
    for index, detection in enumerate(detections):
        where = f"detections[{index}]"
        _check_concept(detection.concept, f"{where}.concept", problems)
        if detection.category is not None:
            _check_concept(detection.category, f"{where}.category", problems, cid=_CATEGORY_CID)
        if detection.finding_site is not None:
            _check_concept(detection.finding_site, f"{where}.finding_site", problems)
    return problems


def _compute_problems(
    measurement: MeasurementSpec, where: str, format_version: int
) -> list[tuple[str, str]]:
    if measurement.compute is None:
        return []
    if format_version < 2:
        return [(f"{where}.compute", "'compute' needs format_version 2")]
    allowed = GEOMETRIC_UNITS.get(measurement.compute)
    if allowed is not None and measurement.unit not in allowed:
        return [
            (
                f"{where}.unit",
                f"compute {measurement.compute!r} is reported in "
                f"{', '.join(sorted(allowed))}, not {measurement.unit!r}",
            )
        ]
    geometric = set().union(*GEOMETRIC_UNITS.values())
    if allowed is None and measurement.unit in geometric:
        return [
            (
                f"{where}.unit",
                f"compute {measurement.compute!r} is a statistic of the image values; "
                f"{measurement.unit!r} is a length, area or volume",
            )
        ]
    expected = STATISTIC_DERIVATIONS.get(measurement.compute)
    if expected is not None and measurement.derivation is not None:
        given = (measurement.derivation.scheme, measurement.derivation.value)
        if given != ("SCT", expected[0]):
            return [
                (
                    f"{where}.derivation",
                    f"compute {measurement.compute!r} has derivation SCT {expected[0]} "
                    f"{expected[1]}, not {given[0]} {given[1]}",
                )
            ]
    return []


def _radiomics_problems(
    classes: Sequence[str], where: str, format_version: int
) -> list[tuple[str, str]]:
    if format_version < 2:
        return [(f"{where}.radiomics", "'radiomics' needs format_version 2")]
    return [
        (f"{where}.radiomics[{index}]", f"duplicate class {name!r}")
        for index, name in enumerate(classes)
        if name in classes[:index]
    ]


def _duplicates(values: list[object], where: str, field_name: str) -> list[tuple[str, str]]:
    first_index: dict[object, int] = {}
    problems: list[tuple[str, str]] = []
    for index, value in enumerate(values):
        if value in first_index:
            problems.append(
                (
                    f"{where}[{index}].{field_name}",
                    f"duplicate {value!r} (also {where}[{first_index[value]}])",
                )
            )
        else:
            first_index[value] = index
    return problems


def _check_concept(
    code: CodeSpec, where: str, problems: list[tuple[str, str]], cid: int | None = None
) -> None:
    """Check code length per scheme, meaning against pydicom's dictionary, CID membership."""
    if len(code.value) > _SH_MAX and code.scheme in ("SCT", "DCM"):
        problems.append((f"{where}.value", f"{code.scheme} code values are at most 16 characters"))
    meanings = _known_meanings().get((code.scheme, code.value))
    if meanings is not None and _normalise(code.meaning) not in {_normalise(m) for m in meanings}:
        expected = " or ".join(repr(m) for m in sorted(meanings))
        problems.append(
            (
                f"{where}.meaning",
                f"{code.scheme} {code.value} means {expected}, not {code.meaning!r}",
            )
        )
    if cid is not None and (code.scheme, code.value) not in _cid_members(cid):
        problems.append(
            (f"{where}.value", f"({code.scheme}, {code.value}) is not in DICOM CID {cid}")
        )


def _normalise(meaning: str) -> str:
    return " ".join(meaning.split()).casefold()


@functools.cache
def _known_meanings() -> dict[tuple[str, str], frozenset[str]]:
    """Meanings pydicom's dictionaries give each (scheme, value) of SCT and DCM.

    LOINC is left out: DICOM uses several names for some LOINC codes (a procedure
    and its report title share 24627-2).
    """
    table: dict[tuple[str, str], set[str]] = {}
    for scheme in ("SCT", "DCM"):
        for concept in Collection(scheme).concepts.values():
            table.setdefault((scheme, concept.value), set()).add(concept.meaning)
    return {key: frozenset(values) for key, values in table.items()}


@functools.cache
def _cid_members(cid: int) -> frozenset[tuple[str, str]]:
    collection = Collection(f"CID{cid}")
    return frozenset((c.scheme_designator, c.value) for c in collection.concepts.values())


#: File name of the JSON Schema shipped beside the templates.
SCHEMA_FILE = "template.schema.json"


def template_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the template format, generated from the models.

    The shipped copy (``dicom_sr_templates/template.schema.json``) is compared with
    this by the tests; regenerate it with ``python -m node.contract.template``. The
    schema covers the shape; terminology and cross-field checks happen on load.
    """
    schema = TemplateDocument.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ainode.invalid/dicom_sr_templates/template.schema.json",
        "title": "ainode result template",
        **schema,
    }


def _main() -> None:  # pragma: no cover - a developer tool
    import json

    path = default_template_dir() / SCHEMA_FILE
    path.write_text(json.dumps(template_json_schema(), indent=2, sort_keys=True) + "\n")
    print(path)


if __name__ == "__main__":  # pragma: no cover
    _main()
