"""The result-template format: strict pydantic models of the YAML (unknown keys rejected),
its constants (UCUM units, code-length limits, the CIDs segment codes come from) and its
JSON Schema. Loading and the terminology checks are in :mod:`node.contract.template`
and :mod:`node.contract.template_checks`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from highdicom.color import CIELabColor
from highdicom.sr import CodedConcept
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

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
SH_MAX = 16  # Code Value, Coding Scheme Designator
_LONG_CODE_MAX = 64  # Long Code Value (UC; we keep it within 64 for readability)
_LO_MAX = 64  # Code Meaning, labels, names, versions
_SERIES_DESCRIPTION_BASE_MAX = 24  # leaves room for " SEG (rev NN, supersedes earlier)"
_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_CS_PATTERN = re.compile(r"^[A-Z0-9_ ]{1,16}$")
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

# Context groups checked when a template loads.
CATEGORY_CID = 7150
TYPE_CID = 7151
LATERALITY_CID = 244


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
    if not KEY_PATTERN.match(value):
        raise ValueError("must be lower-case letters, digits and underscores")
    return value


#: A key the plugin's predictions and the template refer to (also a template's name).
Key = Annotated[str, AfterValidator(_check_key)]


def _text_of_at_most(max_len: int) -> AfterValidator:
    """Validator of a text field: not blank, at most ``max_len`` characters, no backslash."""
    return AfterValidator(lambda value: _check_text(value, max_len))


#: Text of a Short String (SH) element: a coding scheme designator.
ShortText = Annotated[str, _text_of_at_most(SH_MAX)]
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
